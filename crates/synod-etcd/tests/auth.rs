//! Auth over real gRPC, in the cases etcd's recorded answers
//! (`golden/auth.json`) do not reach: what happens to a token or an open watch
//! when the auth store changes under it.

mod common;

use pb::auth_client::AuthClient;
use pb::kv_client::KvClient;
use synod_etcd::pb::authpb;
use synod_etcd::pb::etcdserverpb as pb;
use synod_etcd::Limits;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

fn with<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

/// A member with auth on: `root`, and `alice` who may read `/app/`.
/// Returns the channel and both tokens.
async fn enabled() -> (Channel, String, String) {
    enabled_on(common::serve(Limits::default()).await).await
}

async fn enabled_on(addr: String) -> (Channel, String, String) {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut auth = AuthClient::new(ch.clone());
    for (name, password) in [("root", "rootpw"), ("alice", "apw")] {
        let add = pb::AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        };
        auth.user_add(add).await.unwrap();
    }
    auth.role_add(pb::AuthRoleAddRequest { name: "ro".into() })
        .await
        .unwrap();
    let perm = authpb::Permission {
        perm_type: authpb::permission::Type::Read as i32,
        key: b"/app/".to_vec(),
        range_end: b"/app0".to_vec(),
    };
    let grant = pb::AuthRoleGrantPermissionRequest {
        name: "ro".into(),
        perm: Some(perm),
    };
    auth.role_grant_permission(grant).await.unwrap();
    for (user, role) in [("root", "root"), ("alice", "ro")] {
        let grant = pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        auth.user_grant_role(grant).await.unwrap();
    }
    auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    let root = login(&ch, "root", "rootpw").await.unwrap();
    let alice = login(&ch, "alice", "apw").await.unwrap();
    (ch, root, alice)
}

async fn login(ch: &Channel, name: &str, password: &str) -> Result<String, tonic::Status> {
    let req = pb::AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let r = AuthClient::new(ch.clone()).authenticate(req).await?;
    Ok(r.into_inner().token)
}

async fn put(ch: &Channel, token: &str, key: &str) {
    let req = pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    KvClient::new(ch.clone())
        .put(with(token, req))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_open_watch_stops_when_its_user_loses_the_permission() {
    use pb::watch_request::RequestUnion;
    let (ch, root, alice) = enabled().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = pb::WatchCreateRequest {
        key: b"/app/".to_vec(),
        range_end: b"/app0".to_vec(),
        ..Default::default()
    };
    tx.send(pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let mut watch = pb::watch_client::WatchClient::new(ch.clone())
        .watch(with(&alice, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created && !created.canceled, "{created:?}");

    put(&ch, &root, "/app/a").await;
    let seen = watch.message().await.unwrap().unwrap();
    assert_eq!(seen.events.len(), 1, "{seen:?}");

    let revoke = pb::AuthRoleRevokePermissionRequest {
        role: "ro".into(),
        key: b"/app/".to_vec(),
        range_end: b"/app0".to_vec(),
    };
    AuthClient::new(ch.clone())
        .role_revoke_permission(with(&root, revoke))
        .await
        .unwrap();
    put(&ch, &root, "/app/b").await;
    let last = watch.message().await.unwrap().unwrap();
    assert!(last.canceled, "the watch went on: {last:?}");
    assert!(
        last.events.is_empty(),
        "delivered after the revoke: {last:?}"
    );
    assert_eq!(
        last.cancel_reason,
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
}

#[tokio::test]
async fn a_deleted_users_token_stays_dead_even_if_the_name_comes_back() {
    let (ch, root, alice) = enabled().await;
    let mut auth = AuthClient::new(ch.clone());
    let del = pb::AuthUserDeleteRequest {
        name: "alice".into(),
    };
    auth.user_delete(with(&root, del)).await.unwrap();
    let read = || pb::RangeRequest {
        key: b"/app/a".to_vec(),
        ..Default::default()
    };
    let e = KvClient::new(ch.clone())
        .range(with(&alice, read()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(e.message(), "etcdserver: invalid auth token");

    // Added again, with the same password: the old token is still refused,
    // a new one works.
    let add = pb::AuthUserAddRequest {
        name: "alice".into(),
        password: "apw".into(),
        ..Default::default()
    };
    auth.user_add(with(&root, add)).await.unwrap();
    let e = KvClient::new(ch.clone())
        .range(with(&alice, read()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let fresh = login(&ch, "alice", "apw").await.unwrap();
    let e = KvClient::new(ch.clone())
        .range(with(&fresh, read()))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "a new alice has no role yet"
    );
}

/// An ES256 key pair as PEM files in `dir`: (private, public).
fn es256_keys(dir: &std::path::Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    (private.display().to_string(), public.display().to_string())
}

fn jwt_keys(private: &str, public: &str) -> std::sync::Arc<synod_etcd::JwtKeys> {
    let opts = format!("jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=5m");
    std::sync::Arc::new(synod_etcd::JwtKeys::from_options(&opts).unwrap())
}

async fn serve_jwt(keys: std::sync::Arc<synod_etcd::JwtKeys>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = std::sync::Arc::new(synod_etcd::LocalBackend::new(1, "n1", "http://x"));
    let routes = synod_etcd::EtcdServer::new(backend, Limits::default())
        .with_jwt(keys)
        .router();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr.to_string()
}

/// `--auth-token jwt,...`: Authenticate hands out a JWT that works until
/// users or roles change (then "revision of auth store is old", as etcd
/// says), and a token signed with another key is refused.
#[tokio::test]
async fn jwt_tokens_are_checked_by_signature_and_auth_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = es256_keys(dir.path(), "ours");
    let (other_private, other_public) = es256_keys(dir.path(), "theirs");
    let addr = serve_jwt(jwt_keys(&private, &public)).await;
    let (ch, root, alice) = enabled_on(addr).await;
    assert_eq!(alice.split('.').count(), 3, "not a JWT: {alice}");
    put(&ch, &root, "/app/a").await;
    let read = || pb::RangeRequest {
        key: b"/app/a".to_vec(),
        ..Default::default()
    };
    KvClient::new(ch.clone())
        .range(with(&alice, read()))
        .await
        .unwrap();

    let forged = jwt_keys(&other_private, &other_public);
    let other_addr = serve_jwt(forged).await;
    let (_, other_root, _) = enabled_on(other_addr).await;
    let e = KvClient::new(ch.clone())
        .range(with(&other_root, read()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    AuthClient::new(ch.clone())
        .role_add(with(&root, pb::AuthRoleAddRequest { name: "x".into() }))
        .await
        .unwrap();
    let e = KvClient::new(ch.clone())
        .range(with(&alice, read()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "etcdserver: revision of auth store is old");
    let fresh = login(&ch, "alice", "apw").await.unwrap();
    KvClient::new(ch.clone())
        .range(with(&fresh, read()))
        .await
        .unwrap();
}
