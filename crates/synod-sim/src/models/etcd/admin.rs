//! The admin client: sets up users and roles, turns auth on, makes one
//! allowed and two denied writes as a user with little permission, and turns
//! auth off again, through the log like any client, while the other clients
//! and the faults go on. The key-value and lease clients write as `root`, so
//! auth being on does not change what they may do.
//!
//! Checked (property `auth`): every step is answered as etcd's rules say (a
//! denied write is refused with "permission denied", an allowed one
//! succeeds), and no member ever holds a key written by a denied request.
//! That replicas agree on users and roles is part of `state_machine_safety`
//! (the store hash covers the auth store).

use super::engine::SimEngine;
use super::{token, EtcdModel, CLIENT_TIMEOUT};
use crate::sim::Ctl;
use rand::Rng;
use synod_kv::auth::{AuthCommand, AuthError, PermKind, Permission};
use synod_kv::replica::{Answer, ReplicaError, ReplicaInput, Request};
use synod_kv::{Command, PutRequest, RangeRequest};
use synod_protocols::{NodeId, MS};

/// Keys that only denied writes name: no store may ever hold them.
pub const DENIED_KEYS: [&str; 2] = ["denied", "alice/after-revoke"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Denied,
}

/// The admin client's progress.
#[derive(Clone, Debug, Default)]
pub(super) struct AdminClient {
    pub step: usize,
    pub generation: u64,
    pub target: NodeId,
    /// Whether the current step may already have been applied by a try
    /// whose answer was lost (then "already exists" means done).
    pub retried: bool,
    pub answered: u64,
    /// "Not the leader" answers since the last step done: past one per
    /// member, hints are no longer followed (as the key-value clients do; a
    /// member removed while cut off keeps naming a leader that may be down
    /// for good, and a timeout there sends the client back to it: found by
    /// `--engine multipaxos`, seed 103).
    pub redirects: u32,
}

fn as_user(user: &str, cmd: Command) -> Command {
    Command::As {
        user: user.into(),
        cmd: Box::new(cmd),
    }
}

fn put(key: &str) -> Command {
    Command::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    })
}

fn alice_prefix() -> Permission {
    Permission {
        kind: PermKind::ReadWrite,
        key: b"alice/".to_vec(),
        range_end: b"alice0".to_vec(),
    }
}

/// Step `i` of the script and the answer it must get.
fn script(i: usize) -> Option<(Command, Expect)> {
    // As root throughout: while auth is off nothing is checked, and a retried
    // AuthEnable, applied once already, is then allowed again (a no-op).
    let root = |a| as_user("root", Command::Auth(a));
    let auth = root;
    Some(match i {
        0 => (
            auth(AuthCommand::UserAdd {
                name: "root".into(),
                password: Some("$2b$10$hash".into()),
            }),
            Expect::Ok,
        ),
        1 => (
            auth(AuthCommand::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            }),
            Expect::Ok,
        ),
        2 => (
            auth(AuthCommand::UserAdd {
                name: "alice".into(),
                password: Some("$2b$10$hash".into()),
            }),
            Expect::Ok,
        ),
        3 => (auth(AuthCommand::RoleAdd { name: "ro".into() }), Expect::Ok),
        4 => (
            auth(AuthCommand::RoleGrantPermission {
                name: "ro".into(),
                perm: alice_prefix(),
            }),
            Expect::Ok,
        ),
        5 => (
            auth(AuthCommand::UserGrantRole {
                user: "alice".into(),
                role: "ro".into(),
            }),
            Expect::Ok,
        ),
        6 => (
            auth(AuthCommand::Enable {
                secret: vec![7; 32],
            }),
            Expect::Ok,
        ),
        7 => (as_user("alice", put(DENIED_KEYS[0])), Expect::Denied),
        8 => (as_user("alice", put("alice/x")), Expect::Ok),
        9 => (
            root(AuthCommand::RoleRevokePermission {
                name: "ro".into(),
                key: alice_prefix().key,
                range_end: alice_prefix().range_end,
            }),
            Expect::Ok,
        ),
        10 => (as_user("alice", put(DENIED_KEYS[1])), Expect::Denied),
        11 => (root(AuthCommand::Disable), Expect::Ok),
        _ => return None,
    })
}

/// Errors that mean "an earlier try of this step was applied".
fn already_done(e: &synod_kv::Error) -> bool {
    use synod_kv::Error::Auth;
    matches!(
        e,
        Auth(AuthError::UserAlreadyExist)
            | Auth(AuthError::RoleAlreadyExist)
            | Auth(AuthError::PermissionNotGranted)
    )
}

impl<K: SimEngine> EtcdModel<K> {
    pub(super) fn admin_client(&self) -> usize {
        self.clients.len() + 1
    }

    pub(super) fn admin_done(&self) -> bool {
        script(self.admin.step).is_none()
    }

    /// Sends (or sends again) the admin client's current step.
    pub(super) fn admin_send(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        let Some((cmd, _)) = script(self.admin.step) else {
            return;
        };
        self.admin.generation += 1;
        let generation = self.admin.generation;
        let id = self.next_request;
        self.next_request += 1;
        self.admin_inflight.insert(id, generation);
        let latency = ctl.rng().gen_range(MS / 2..2 * MS);
        let req = ReplicaInput::Client {
            id,
            req: Request::Write(cmd),
        };
        ctl.input(self.admin.target, req, latency);
        ctl.wake(
            latency + CLIENT_TIMEOUT,
            token(self.admin_client(), generation),
        );
    }

    /// No answer in time: the step may or may not be applied; try the next
    /// member.
    pub(super) fn admin_timeout(&mut self, ctl: &mut Ctl<'_, K::Node>, generation: u64) {
        if self.admin.generation & 0x7fff_ffff == generation && !self.admin_done() {
            self.admin.retried = true;
            self.admin.target = (self.admin.target + 1) % self.n as NodeId;
            self.admin_send(ctl);
        }
    }

    fn admin_next(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        // The answered try's timeout must not fire a retry.
        self.admin.generation += 1;
        self.admin.step += 1;
        self.admin.retried = false;
        self.admin.redirects = 0;
        self.admin.answered += 1;
        // A pause between steps lets the other clients run under each
        // auth state.
        let pause = ctl.rng().gen_range(10 * MS..60 * MS);
        ctl.wake(pause, token(self.admin_client(), 0) | (1 << 31));
    }

    pub(super) fn admin_answer(
        &mut self,
        ctl: &mut Ctl<'_, K::Node>,
        node: NodeId,
        result: Result<Answer, ReplicaError>,
    ) {
        let Some((cmd, expect)) = script(self.admin.step) else {
            return;
        };
        let n = self.n as NodeId;
        let step = self.admin.step;
        match (result, expect) {
            (Ok(_), Expect::Ok) => self.admin_next(ctl),
            (
                Err(ReplicaError::Kv(synod_kv::Error::Auth(AuthError::PermissionDenied))),
                Expect::Denied,
            ) => self.admin_next(ctl),
            (Err(ReplicaError::Kv(e)), Expect::Ok) if self.admin.retried && already_done(&e) => {
                self.admin_next(ctl)
            }
            (Err(ReplicaError::NotLeader { hint }), _) => {
                self.admin.redirects += 1;
                let follow = self.admin.redirects <= n as u32;
                self.admin.target = hint
                    .filter(|_| follow)
                    .unwrap_or((self.admin.target + 1) % n);
                self.admin_send(ctl);
            }
            (Err(ReplicaError::LeaderChanged), _) => {
                self.admin.retried = true;
                self.admin.target = (self.admin.target + 1) % n;
                self.admin_send(ctl);
            }
            (got, _) => ctl.violation(
                "auth",
                Some(node),
                format!("step {step} ({cmd:?}) should be {expect:?}, was answered {got:?}"),
            ),
        }
    }

    /// No member holds a key that only denied writes name.
    pub(super) fn check_denied_keys(&mut self, ctl: &mut Ctl<'_, K::Node>) {
        let mut found = Vec::new();
        for id in 0..self.n as NodeId {
            let Some(r) = ctl.node(id).and_then(K::replica) else {
                continue;
            };
            for key in DENIED_KEYS {
                let req = RangeRequest {
                    key: key.as_bytes().to_vec(),
                    ..RangeRequest::default()
                };
                if r.store().range(&req).is_ok_and(|r| r.count > 0) {
                    found.push((id, key));
                }
            }
        }
        for (id, key) in found {
            ctl.violation(
                "auth",
                Some(id),
                format!("holds {key:?}, which only a denied write names"),
            );
        }
    }
}
