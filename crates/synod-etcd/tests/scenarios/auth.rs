//! Users, roles and permissions: every Auth call, then what a read-only user,
//! a caller without a token and one with a bad token may do in every other
//! service. Runs last among the scenarios and leaves auth disabled and the
//! store without users, so a recording on one etcd stays clean.

use super::outcome;
use serde_json::{json, Value};
use synod_etcd::pb::authpb;
use synod_etcd::pb::etcdserverpb as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Request;

/// `msg` sent with `token` ("" for none), as etcd's clients send it.
fn with<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("token", token.parse().expect("a token is ASCII"));
    }
    r
}

fn ok<T>(_: T) -> Value {
    json!("ok")
}

struct Client {
    auth: pb::auth_client::AuthClient<Channel>,
    kv: pb::kv_client::KvClient<Channel>,
    lease: pb::lease_client::LeaseClient<Channel>,
    cluster: pb::cluster_client::ClusterClient<Channel>,
    maintenance: pb::maintenance_client::MaintenanceClient<Channel>,
    ch: Channel,
}

fn get(key: &str, range_end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

fn put(key: &str, lease: i64) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        lease,
        ..Default::default()
    }
}

fn perm(kind: authpb::permission::Type, key: &str, range_end: &str) -> authpb::Permission {
    authpb::Permission {
        perm_type: kind as i32,
        key: key.into(),
        range_end: range_end.into(),
    }
}

impl Client {
    async fn login(&mut self, name: &str, password: &str) -> (Value, String) {
        let r = self
            .auth
            .authenticate(pb::AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            })
            .await;
        let token = r
            .as_ref()
            .map_or(String::new(), |r| r.get_ref().token.clone());
        (outcome(r, ok), token)
    }

    async fn user_add(&mut self, token: &str, name: &str, password: &str) -> Value {
        let r = self
            .auth
            .user_add(with(
                token,
                pb::AuthUserAddRequest {
                    name: name.into(),
                    password: password.into(),
                    ..Default::default()
                },
            ))
            .await;
        outcome(r, ok)
    }

    async fn grant_role(&mut self, token: &str, user: &str, role: &str) -> Value {
        let r = self
            .auth
            .user_grant_role(with(
                token,
                pb::AuthUserGrantRoleRequest {
                    user: user.into(),
                    role: role.into(),
                },
            ))
            .await;
        outcome(r, ok)
    }

    async fn role_add(&mut self, token: &str, name: &str) -> Value {
        let r = self
            .auth
            .role_add(with(token, pb::AuthRoleAddRequest { name: name.into() }))
            .await;
        outcome(r, ok)
    }

    async fn enable(&mut self, token: &str) -> Value {
        let r = self
            .auth
            .auth_enable(with(token, pb::AuthEnableRequest {}))
            .await;
        outcome(r, ok)
    }

    async fn range(&mut self, token: &str, key: &str, range_end: &str) -> Value {
        let r = self.kv.range(with(token, get(key, range_end))).await;
        outcome(r, |r| json!({ "count": r.count }))
    }

    async fn put(&mut self, token: &str, key: &str, lease: i64) -> Value {
        let r = self.kv.put(with(token, put(key, lease))).await;
        outcome(r, ok)
    }

    /// Opens a watch on `[key, range_end)` and records its first answer.
    async fn watch(&mut self, token: &str, key: &str, range_end: &str) -> Value {
        use pb::watch_request::RequestUnion;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let create = pb::WatchCreateRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        };
        tx.send(pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("queue has room");
        let stream = pb::watch_client::WatchClient::new(self.ch.clone())
            .watch(with(token, ReceiverStream::new(rx)))
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => return outcome::<()>(Err(e), ok),
        };
        match tokio::time::timeout(super::WAIT, stream.message()).await {
            Ok(Ok(Some(r))) => json!({
                "watch_id": r.watch_id,
                "created": r.created,
                "canceled": r.canceled,
                "cancel_reason": r.cancel_reason,
            }),
            Ok(Ok(None)) => json!("end of stream"),
            Ok(Err(e)) => outcome::<()>(Err(e), ok),
            Err(_) => json!("timeout"),
        }
    }
}

pub(super) async fn auth(ch: Channel) -> Value {
    use authpb::permission::Type;
    let mut c = Client {
        auth: pb::auth_client::AuthClient::new(ch.clone()),
        kv: pb::kv_client::KvClient::new(ch.clone()),
        lease: pb::lease_client::LeaseClient::new(ch.clone()),
        cluster: pb::cluster_client::ClusterClient::new(ch.clone()),
        maintenance: pb::maintenance_client::MaintenanceClient::new(ch.clone()),
        ch,
    };
    let mut seen = Vec::new();
    let mut note = |step: &str, v: Value| seen.push(json!({ "step": step, "got": v }));

    // Setting up, before auth is on: etcd's preconditions and name checks.
    note("enable without root", c.enable("").await);
    note("add root", c.user_add("", "root", "rootpw").await);
    note("enable without root role", c.enable("").await);
    note("login before enable", c.login("root", "rootpw").await.0);
    note("add role root", c.role_add("", "root").await);
    note("grant root root", c.grant_role("", "root", "root").await);
    note("add alice", c.user_add("", "alice", "apw").await);
    note("add alice again", c.user_add("", "alice", "x").await);
    note("add empty user", c.user_add("", "", "x").await);
    note("add role ro", c.role_add("", "ro").await);
    note("add role ro again", c.role_add("", "ro").await);
    note("add empty role", c.role_add("", "").await);
    let r = c
        .auth
        .role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "ro".into(),
            perm: Some(perm(Type::Read, "/app/", "/app0")),
        })
        .await;
    note("grant ro read /app/", outcome(r, ok));
    // (A grant without a permission is left out: etcd 3.4.23 crashes on it,
    // a nil dereference; synod answers "permission not given".)
    let r = c
        .auth
        .role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "nope".into(),
            perm: Some(perm(Type::Read, "a", "")),
        })
        .await;
    note("grant to missing role", outcome(r, ok));
    note("grant ro alice", c.grant_role("", "alice", "ro").await);
    note(
        "grant ro alice again",
        c.grant_role("", "alice", "ro").await,
    );
    note(
        "grant missing role",
        c.grant_role("", "alice", "nope").await,
    );
    note("grant to missing user", c.grant_role("", "bob", "ro").await);
    let r = c
        .auth
        .user_revoke_role(pb::AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: "root".into(),
        })
        .await;
    note("revoke role not granted", outcome(r, ok));
    let r = c
        .auth
        .role_revoke_permission(pb::AuthRoleRevokePermissionRequest {
            role: "ro".into(),
            key: b"/nope".to_vec(),
            range_end: Vec::new(),
        })
        .await;
    note("revoke permission not granted", outcome(r, ok));
    let r = c
        .auth
        .user_add(pb::AuthUserAddRequest {
            name: "np".into(),
            options: Some(authpb::UserAddOptions { no_password: true }),
            ..Default::default()
        })
        .await;
    note("add user without password", outcome(r, ok));

    // Auth on.
    note("enable", c.enable("").await);
    note("enable again without token", c.enable("").await);
    note("put without token", c.put("", "/app/x", 0).await);
    note("get without token", c.range("", "/app/x", "").await);
    note("login wrong password", c.login("root", "nope").await.0);
    note("login unknown user", c.login("nobody", "x").await.0);
    note("login user without password", c.login("np", "").await.0);
    let (v, root) = c.login("root", "rootpw").await;
    note("login root", v);
    let (v, alice) = c.login("alice", "apw").await;
    note("login alice", v);
    note("bad token", c.range("garbage", "/app/x", "").await);
    note("enable again as root", c.enable(&root).await);
    note("root puts /app/x", c.put(&root, "/app/x", 0).await);
    note("root puts /other", c.put(&root, "/other", 0).await);

    // What a read-only user may do.
    note("alice gets /app/x", c.range(&alice, "/app/x", "").await);
    note(
        "alice gets /app/ prefix",
        c.range(&alice, "/app/", "/app0").await,
    );
    note("alice gets /other", c.range(&alice, "/other", "").await);
    note("alice gets everything", c.range(&alice, "\0", "\0").await);
    note("alice puts /app/x", c.put(&alice, "/app/x", 0).await);
    let r =
        c.kv.delete_range(with(
            &alice,
            pb::DeleteRangeRequest {
                key: b"/app/x".to_vec(),
                ..Default::default()
            },
        ))
        .await;
    note("alice deletes /app/x", outcome(r, ok));
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: b"/other".to_vec(),
            target: pb::compare::CompareTarget::Version as i32,
            result: pb::compare::CompareResult::Greater as i32,
            target_union: Some(pb::compare::TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(get("/app/x", ""))),
        }],
        failure: Vec::new(),
    };
    let r = c.kv.txn(with(&alice, txn.clone())).await;
    note(
        "alice txn comparing /other",
        outcome(r, |t| json!(t.succeeded)),
    );
    let r = c.kv.txn(with(&root, txn)).await;
    note(
        "root txn comparing /other",
        outcome(r, |t| json!(t.succeeded)),
    );
    note("alice watches /other", c.watch(&alice, "/other", "").await);
    note(
        "alice watches /app/",
        c.watch(&alice, "/app/", "/app0").await,
    );
    note("watch without token", c.watch("", "/app/", "/app0").await);

    let who = |name: &str| pb::AuthUserGetRequest { name: name.into() };
    let r = c.auth.user_get(with(&alice, who("alice"))).await;
    note("alice gets herself", outcome(r, |u| json!(u.roles)));
    let r = c.auth.user_get(with(&alice, who("root"))).await;
    note("alice gets root", outcome(r, |u| json!(u.roles)));
    let r = c.auth.user_get(with(&root, who("bob"))).await;
    note("root gets missing user", outcome(r, |u| json!(u.roles)));
    let r = c
        .auth
        .user_list(with(&alice, pb::AuthUserListRequest {}))
        .await;
    note("alice lists users", outcome(r, |u| json!(u.users)));
    let r = c
        .auth
        .user_list(with(&root, pb::AuthUserListRequest {}))
        .await;
    note("root lists users", outcome(r, |u| json!(u.users)));
    let role = |name: &str| pb::AuthRoleGetRequest { role: name.into() };
    let perms = |r: pb::AuthRoleGetResponse| {
        json!(r
            .perm
            .iter()
            .map(|p| json!([
                p.perm_type,
                String::from_utf8_lossy(&p.key),
                String::from_utf8_lossy(&p.range_end)
            ]))
            .collect::<Vec<_>>())
    };
    let r = c.auth.role_get(with(&alice, role("ro"))).await;
    note("alice gets her role", outcome(r, perms));
    let r = c.auth.role_get(with(&alice, role("root"))).await;
    note("alice gets role root", outcome(r, perms));
    let r = c.auth.role_get(with(&root, role("root"))).await;
    note("root gets role root", outcome(r, perms));
    let r = c.auth.role_get(with(&root, role("nope"))).await;
    note("root gets missing role", outcome(r, perms));
    let r = c
        .auth
        .role_list(with(&alice, pb::AuthRoleListRequest {}))
        .await;
    note("alice lists roles", outcome(r, |r| json!(r.roles)));
    let r = c
        .auth
        .role_list(with(&root, pb::AuthRoleListRequest {}))
        .await;
    note("root lists roles", outcome(r, |r| json!(r.roles)));
    note("alice adds a role", c.role_add(&alice, "x").await);
    note("alice adds a user", c.user_add(&alice, "eve", "x").await);
    let r = c
        .auth
        .auth_disable(with(&alice, pb::AuthDisableRequest {}))
        .await;
    note("alice disables auth", outcome(r, ok));
    let r = c
        .auth
        .user_delete(with(
            &root,
            pb::AuthUserDeleteRequest {
                name: "root".into(),
            },
        ))
        .await;
    note("root deletes root", outcome(r, ok));
    let r = c
        .auth
        .role_delete(with(
            &root,
            pb::AuthRoleDeleteRequest {
                role: "root".into(),
            },
        ))
        .await;
    note("root deletes role root", outcome(r, ok));
    let r = c
        .auth
        .user_revoke_role(with(
            &root,
            pb::AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into(),
            },
        ))
        .await;
    note("root revokes root from root", outcome(r, ok));

    // Leases: anyone may grant; revoking needs write on the lease's keys.
    let grant = |ttl| pb::LeaseGrantRequest { ttl, id: 0 };
    let r = c.lease.lease_grant(with(&alice, grant(100))).await;
    note("alice grants a lease", outcome(r, ok));
    let r = c.lease.lease_grant(with("", grant(100))).await;
    note("lease grant without token", outcome(r, ok));
    let lease = c
        .lease
        .lease_grant(with(&root, grant(100)))
        .await
        .map_or(0, |r| r.into_inner().id);
    note(
        "root attaches /other/k",
        c.put(&root, "/other/k", lease).await,
    );
    let r = c
        .lease
        .lease_time_to_live(with(
            &alice,
            pb::LeaseTimeToLiveRequest {
                id: lease,
                keys: true,
            },
        ))
        .await;
    note(
        "alice asks the lease's time to live",
        outcome(r, |t| json!(t.keys.len())),
    );
    let r = c
        .lease
        .lease_revoke(with(&alice, pb::LeaseRevokeRequest { id: lease }))
        .await;
    note("alice revokes root's lease", outcome(r, ok));
    let r = c
        .lease
        .lease_revoke(with(&root, pb::LeaseRevokeRequest { id: lease }))
        .await;
    note("root revokes it", outcome(r, ok));

    // Cluster and maintenance.
    let r = c
        .cluster
        .member_list(with(&alice, pb::MemberListRequest::default()))
        .await;
    note("alice lists members", outcome(r, ok));
    let r = c
        .cluster
        .member_add(with(
            &alice,
            pb::MemberAddRequest {
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                is_learner: true,
            },
        ))
        .await;
    note("alice adds a member", outcome(r, ok));
    let r = c
        .maintenance
        .status(with(&alice, pb::StatusRequest {}))
        .await;
    note("alice asks status", outcome(r, ok));
    let r = c
        .maintenance
        .hash_kv(with(&alice, pb::HashKvRequest { revision: 0 }))
        .await;
    note("alice asks hashkv", outcome(r, ok));
    let r = c
        .maintenance
        .hash_kv(with("", pb::HashKvRequest { revision: 0 }))
        .await;
    note("hashkv without token", outcome(r, ok));
    let r = c
        .maintenance
        .defragment(with(&alice, pb::DefragmentRequest {}))
        .await;
    note("alice defragments", outcome(r, ok));

    // A new password ends the old tokens.
    let r = c
        .auth
        .user_change_password(with(
            &root,
            pb::AuthUserChangePasswordRequest {
                name: "alice".into(),
                password: "apw2".into(),
                ..Default::default()
            },
        ))
        .await;
    note("root changes alice's password", outcome(r, ok));
    note("alice's old token", c.range(&alice, "/app/x", "").await);
    note("alice's old password", c.login("alice", "apw").await.0);
    let (v, alice) = c.login("alice", "apw2").await;
    note("alice's new password", v);
    note("alice's new token", c.range(&alice, "/app/x", "").await);

    // Auth off again, and the store as it was.
    let r = c
        .auth
        .auth_disable(with(&root, pb::AuthDisableRequest {}))
        .await;
    note("root disables auth", outcome(r, ok));
    note("put without token again", c.put("", "/app/x", 0).await);
    note(
        "a token while auth is off",
        c.range("garbage", "/app/x", "").await,
    );
    let r = c.auth.auth_disable(pb::AuthDisableRequest {}).await;
    note("disable again", outcome(r, ok));
    for name in ["alice", "np", "root"] {
        let r = c
            .auth
            .user_delete(pb::AuthUserDeleteRequest { name: name.into() })
            .await;
        note("delete user", outcome(r, ok));
    }
    for role in ["ro", "root"] {
        let r = c
            .auth
            .role_delete(pb::AuthRoleDeleteRequest { role: role.into() })
            .await;
        note("delete role", outcome(r, ok));
    }
    let r =
        c.kv.delete_range(pb::DeleteRangeRequest {
            key: b"\0".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        })
        .await;
    note("clean up keys", outcome(r, ok));
    json!(seen)
}
