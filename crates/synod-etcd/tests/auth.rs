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
    let addr = common::serve(Limits::default()).await;
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
