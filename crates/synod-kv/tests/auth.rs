//! Users, roles and permissions as the replicated store applies them.

use synod_kv::auth::{AuthCommand, AuthError, PermKind, Permission};
use synod_kv::*;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn auth(store: &mut Store, cmd: AuthCommand) -> Result<(), Error> {
    store.apply(&Command::Auth(cmd)).map(|_| ())
}

fn as_user(store: &mut Store, user: &str, cmd: Command) -> Result<CommandResponse, Error> {
    store
        .apply(&Command::As {
            user: user.into(),
            cmd: Box::new(cmd),
        })
        .map(|(r, _)| r)
}

fn put(key: &str) -> Command {
    Command::Put(PutRequest {
        key: b(key),
        value: b("v"),
        ..PutRequest::default()
    })
}

fn grant(store: &mut Store, role: &str, kind: PermKind, key: &str, end: &str) {
    let perm = Permission {
        kind,
        key: b(key),
        range_end: b(end),
    };
    let cmd = AuthCommand::RoleGrantPermission {
        name: role.into(),
        perm,
    };
    as_user(store, "root", Command::Auth(cmd)).unwrap();
}

/// root (with the root role) and alice (with role `app`, no permissions
/// yet), auth enabled.
fn enabled() -> Store {
    let mut s = Store::new();
    for user in ["root", "alice"] {
        let add = AuthCommand::UserAdd {
            name: user.into(),
            password: Some("hash".into()),
        };
        auth(&mut s, add).unwrap();
    }
    let grant_root = AuthCommand::UserGrantRole {
        user: "root".into(),
        role: "root".into(),
    };
    auth(&mut s, grant_root).unwrap();
    auth(&mut s, AuthCommand::RoleAdd { name: "app".into() }).unwrap();
    let grant_app = AuthCommand::UserGrantRole {
        user: "alice".into(),
        role: "app".into(),
    };
    auth(&mut s, grant_app).unwrap();
    auth(
        &mut s,
        AuthCommand::Enable {
            secret: vec![1; 32],
        },
    )
    .unwrap();
    s.assert_invariants();
    s
}

const DENIED: Error = Error::Auth(AuthError::PermissionDenied);

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut s = Store::new();
    let enable = || AuthCommand::Enable { secret: vec![1] };
    assert_eq!(
        auth(&mut s, enable()),
        Err(Error::Auth(AuthError::RootUserNotExist))
    );
    let add = AuthCommand::UserAdd {
        name: "root".into(),
        password: None,
    };
    auth(&mut s, add).unwrap();
    assert_eq!(
        auth(&mut s, enable()),
        Err(Error::Auth(AuthError::RootRoleNotExist))
    );
    assert!(!s.auth().enabled());
}

#[test]
fn a_role_covers_its_ranges_and_their_union_but_no_more() {
    let mut s = enabled();
    grant(&mut s, "app", PermKind::Read, "a", "c");
    grant(&mut s, "app", PermKind::ReadWrite, "c", "e");
    grant(&mut s, "app", PermKind::Write, "x", "");
    grant(&mut s, "app", PermKind::Read, "z", "\0");
    let a = s.auth();
    let read = |k: &str, e: &str| a.check("alice", &b(k), &b(e), PermKind::Read);
    let write = |k: &str, e: &str| a.check("alice", &b(k), &b(e), PermKind::Write);
    assert_eq!(read("a", ""), Ok(()));
    assert_eq!(read("b", "d"), Ok(()), "two adjacent grants make one range");
    assert_eq!(read("a", "e"), Ok(()));
    assert_eq!(read("a", "f"), Err(AuthError::PermissionDenied));
    assert_eq!(read("zz", "\0"), Ok(()), "from a key on");
    assert_eq!(read("y", "\0"), Err(AuthError::PermissionDenied));
    assert_eq!(
        read("x", ""),
        Err(AuthError::PermissionDenied),
        "write only"
    );
    assert_eq!(write("x", ""), Ok(()));
    assert_eq!(write("xa", ""), Err(AuthError::PermissionDenied));
    assert_eq!(write("c", "e"), Ok(()));
    assert_eq!(
        write("b", ""),
        Err(AuthError::PermissionDenied),
        "read only"
    );
    assert_eq!(
        a.check("", b"a", b"", PermKind::Read),
        Err(AuthError::UserEmpty)
    );
    assert_eq!(a.check("root", b"q", b"\0", PermKind::Write), Ok(()));
}

#[test]
fn a_write_is_checked_against_the_permissions_in_force_when_it_is_applied() {
    let mut s = enabled();
    grant(&mut s, "app", PermKind::Write, "/app/", "/app0");
    as_user(&mut s, "alice", put("/app/x")).unwrap();
    assert_eq!(as_user(&mut s, "alice", put("/other")), Err(DENIED));

    // Proposed while she could, applied after the grant was revoked.
    let revoke = AuthCommand::RoleRevokePermission {
        name: "app".into(),
        key: b("/app/"),
        range_end: b("/app0"),
    };
    as_user(&mut s, "root", Command::Auth(revoke)).unwrap();
    let before = s.hash();
    assert_eq!(as_user(&mut s, "alice", put("/app/x")), Err(DENIED));
    assert_eq!(s.hash(), before, "a refused write changes nothing");
}

#[test]
fn a_write_proposed_before_auth_was_enabled_is_refused_after() {
    let mut s = enabled();
    assert_eq!(
        s.apply(&put("k")).map(|_| ()),
        Err(Error::Auth(AuthError::UserEmpty))
    );
    // What the service proposes by itself still goes through.
    s.apply(&Command::LeaseGrant { id: 7, ttl: 10 }).unwrap();
    s.apply(&Command::LeaseRevoke { id: 7 }).unwrap();
    s.apply(&Command::Compact { revision: 1 }).unwrap();
}

#[test]
fn every_key_of_a_transaction_is_checked() {
    let mut s = enabled();
    grant(&mut s, "app", PermKind::ReadWrite, "a", "b");
    let txn = |compare_key: &str, put_key: &str| {
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                key: b(compare_key),
                range_end: Vec::new(),
                result: CompareResult::Equal,
                target: CompareTarget::Version(0),
            }],
            success: vec![],
            failure: vec![RequestOp::Txn(TxnRequest {
                success: vec![RequestOp::Put(PutRequest {
                    key: b(put_key),
                    ..PutRequest::default()
                })],
                ..TxnRequest::default()
            })],
        })
    };
    as_user(&mut s, "alice", txn("a1", "a2")).unwrap();
    assert_eq!(as_user(&mut s, "alice", txn("z", "a2")), Err(DENIED));
    assert_eq!(
        as_user(&mut s, "alice", txn("a1", "z")),
        Err(DENIED),
        "a branch not taken is checked too"
    );
}

#[test]
fn revoking_a_lease_needs_write_on_every_key_attached() {
    let mut s = enabled();
    grant(&mut s, "app", PermKind::Write, "a", "b");
    s.apply(&Command::LeaseGrant { id: 5, ttl: 60 }).unwrap();
    let attach = |key: &str| {
        Command::Put(PutRequest {
            key: b(key),
            lease: 5,
            ..PutRequest::default()
        })
    };
    as_user(&mut s, "alice", attach("a1")).unwrap();
    as_user(&mut s, "root", attach("z")).unwrap();
    let revoke = Command::LeaseRevoke { id: 5 };
    assert_eq!(as_user(&mut s, "alice", revoke.clone()), Err(DENIED));
    assert_eq!(
        as_user(&mut s, "alice", attach("a2")),
        Err(DENIED),
        "attaching to a lease holding a key she cannot write"
    );
    as_user(&mut s, "root", revoke).unwrap();
    assert!(s.lease(5).is_none());
}

#[test]
fn root_keeps_root_while_auth_is_on() {
    let mut s = enabled();
    let mgmt = Err(Error::Auth(AuthError::InvalidAuthMgmt));
    let cmds = [
        AuthCommand::UserDelete {
            name: "root".into(),
        },
        AuthCommand::RoleDelete {
            name: "root".into(),
        },
        AuthCommand::UserRevokeRole {
            name: "root".into(),
            role: "root".into(),
        },
    ];
    for cmd in cmds {
        assert_eq!(
            as_user(&mut s, "root", Command::Auth(cmd)).map(|_| ()),
            mgmt
        );
    }
    assert_eq!(
        as_user(&mut s, "alice", Command::Auth(AuthCommand::Disable)).map(|_| ()),
        Err(DENIED)
    );
    s.assert_invariants();
}

#[test]
fn deleting_a_role_takes_it_from_its_users() {
    let mut s = enabled();
    grant(&mut s, "app", PermKind::Read, "a", "");
    let del = AuthCommand::RoleDelete { name: "app".into() };
    as_user(&mut s, "root", Command::Auth(del)).unwrap();
    assert!(s.auth().user("alice").unwrap().roles.is_empty());
    assert_eq!(
        s.auth().check("alice", b"a", b"", PermKind::Read),
        Err(AuthError::PermissionDenied)
    );
    s.assert_invariants();
}

#[test]
fn the_auth_store_travels_in_snapshots_and_counts_in_the_hash() {
    let mut s = enabled();
    grant(&mut s, "app", PermKind::Read, "a", "b");
    let image = bincode::serialize(&s).unwrap();
    let back: Store = bincode::deserialize(&image).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.auth().revision(), s.auth().revision());
    let before = s.hash();
    grant(&mut s, "app", PermKind::Write, "a", "b");
    assert_ne!(s.hash(), before, "replicas that disagree on auth differ");
}
