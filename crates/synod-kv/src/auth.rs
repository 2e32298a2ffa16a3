//! etcd's users, roles and key permissions, as part of the replicated state.
//!
//! The auth store travels in the same log and the same snapshots as the keys,
//! so every member decides the same way whether a request is allowed. Two
//! things stay out of it because they are not deterministic: hashing
//! passwords (bcrypt, done by the member that takes the request, which
//! proposes the hash) and tokens (see `synod_etcd`'s auth service, which signs
//! them with [`AuthState::secret`]).
//!
//! Permission checks of writes run when the write is applied, against the auth
//! state at that point of the log: a permission revoked while a write was in
//! flight cannot let it through. Reads are checked by the member that serves
//! them, against the state it has applied, as etcd does.

use crate::{Command, RequestOp, TxnRequest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The user and the role that may do everything; AuthEnable needs both.
pub const ROOT: &str = "root";

/// What a permission lets its holder do: etcd's `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    fn allows(self, want: PermKind) -> bool {
        self == PermKind::ReadWrite || self == want
    }
}

/// A permission on one key (`range_end` empty), a range `[key, range_end)`,
/// or every key from `key` on (`range_end == [0]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The bcrypt hash of the password; `None` for a user created with
    /// `--no-password`, who can only be authenticated by a TLS certificate.
    pub password: Option<String>,
    pub roles: BTreeSet<String>,
    /// The auth revision at which the password was last set: a token names
    /// it, so that changing the password (or deleting and re-adding the user)
    /// invalidates the tokens handed out before.
    pub epoch: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by key; at most one per `(key, range_end)`.
    pub perms: Vec<Permission>,
}

/// A change to the auth store, proposed through the log. Passwords arrive
/// hashed: the proposing member hashed them, off the Raft thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// `secret` signs the tokens handed out while auth stays enabled; the
    /// proposing member draws it, so that every member holds the same.
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        name: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// Why an auth request was refused, worded as etcd words it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthError {
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionNotGiven,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    /// A JWT made before users, roles or permissions last changed.
    AuthOldRevision,
}

impl AuthError {
    /// etcd's message, byte for byte (clients map them back by string).
    pub fn etcd_message(self) -> &'static str {
        match self {
            AuthError::RootUserNotExist => "etcdserver: root user does not exist",
            AuthError::RootRoleNotExist => "etcdserver: root user does not have root role",
            AuthError::UserAlreadyExist => "etcdserver: user name already exists",
            AuthError::UserEmpty => "etcdserver: user name is empty",
            AuthError::UserNotFound => "etcdserver: user name not found",
            AuthError::RoleAlreadyExist => "etcdserver: role name already exists",
            AuthError::RoleNotFound => "etcdserver: role name not found",
            AuthError::RoleEmpty => "etcdserver: role name is empty",
            AuthError::AuthFailed => {
                "etcdserver: authentication failed, invalid user ID or password"
            }
            AuthError::PermissionNotGiven => "etcdserver: permission not given",
            AuthError::PermissionDenied => "etcdserver: permission denied",
            AuthError::RoleNotGranted => "etcdserver: role is not granted to the user",
            AuthError::PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthError::AuthNotEnabled => "etcdserver: authentication is not enabled",
            AuthError::InvalidAuthToken => "etcdserver: invalid auth token",
            AuthError::InvalidAuthMgmt => "etcdserver: invalid auth management",
            AuthError::AuthOldRevision => "etcdserver: revision of auth store is old",
        }
    }
}

/// Users, roles, and whether they are enforced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    enabled: bool,
    /// +1 per change to users, roles or permissions, and per disable (as
    /// etcd counts it); starts at 1.
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    secret: Vec<u8>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            secret: Vec::new(),
        }
    }
}

type Outcome = Result<(), AuthError>;

impl AuthState {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The key that signs tokens (empty while auth is disabled).
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    /// Applies one change with etcd's rules. On error nothing changed.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Outcome {
        match cmd {
            AuthCommand::Enable { secret } => self.enable(secret),
            AuthCommand::Disable => {
                if self.enabled {
                    self.enabled = false;
                    self.secret.clear();
                    self.bump();
                }
                Ok(())
            }
            AuthCommand::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.bump();
                let user = User {
                    password: password.clone(),
                    roles: BTreeSet::new(),
                    epoch: self.revision,
                };
                self.users.insert(name.clone(), user);
                Ok(())
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
                self.bump();
                Ok(())
            }
            AuthCommand::UserChangePassword { name, password } => {
                let epoch = self.revision + 1;
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                // A user made without a password stays without one.
                if user.password.is_some() {
                    user.password.clone_from(password);
                }
                user.epoch = epoch;
                self.bump();
                Ok(())
            }
            AuthCommand::UserGrantRole { user, role } => self.grant_role(user, role),
            AuthCommand::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if !user.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
                self.bump();
                Ok(())
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
                self.bump();
                Ok(())
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
                self.bump();
                Ok(())
            }
            AuthCommand::RoleGrantPermission { name, perm } => {
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let same = |p: &&mut Permission| p.key == perm.key && p.range_end == perm.range_end;
                match role.perms.iter_mut().find(same) {
                    Some(p) => p.kind = perm.kind,
                    None => {
                        role.perms.push(perm.clone());
                        role.perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                self.bump();
                Ok(())
            }
            AuthCommand::RoleRevokePermission {
                name,
                key,
                range_end,
            } => {
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let before = role.perms.len();
                role.perms
                    .retain(|p| p.key != *key || p.range_end != *range_end);
                if role.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.bump();
                Ok(())
            }
        }
    }

    fn enable(&mut self, secret: &[u8]) -> Outcome {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(AuthError::RootRoleNotExist);
        }
        assert!(!secret.is_empty(), "auth enabled without a token secret");
        self.enabled = true;
        self.secret = secret.to_vec();
        Ok(())
    }

    fn grant_role(&mut self, user: &str, role: &str) -> Outcome {
        if !self.users.contains_key(user) {
            return Err(AuthError::UserNotFound);
        }
        // etcd grants the root role whether or not it was ever added.
        if role != ROOT && !self.roles.contains_key(role) {
            return Err(AuthError::RoleNotFound);
        }
        let u = self.users.get_mut(user).expect("checked above");
        if u.roles.insert(role.to_string()) {
            self.bump();
        }
        Ok(())
    }

    /// Whether `user` may do everything (has the root role). `UserEmpty`
    /// for a request without a user, as etcd answers.
    pub fn check_admin(&self, user: &str) -> Outcome {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = self.users.get(user).ok_or(AuthError::UserNotFound)?;
        if !u.roles.contains(ROOT) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// Whether `user` may `want` the keys `[key, range_end)` (etcd's range
    /// conventions): the union of its roles' permissions of that kind must
    /// cover them.
    pub fn check(&self, user: &str, key: &[u8], range_end: &[u8], want: PermKind) -> Outcome {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let u = self.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if u.roles.contains(ROOT) {
            return Ok(());
        }
        let granted: Vec<Span> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.perms)
            .filter(|p| p.kind.allows(want))
            .map(|p| Span::of(&p.key, &p.range_end))
            .collect();
        if Span::of(key, range_end).covered_by(&granted) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `user` may apply `cmd`, as etcd checks a request at apply
    /// time. `lease_keys` names the keys attached to a lease.
    pub fn check_command<'a>(
        &self,
        user: &str,
        cmd: &Command,
        lease_keys: &dyn Fn(i64) -> Option<&'a BTreeSet<Vec<u8>>>,
    ) -> Outcome {
        if !self.enabled {
            return Ok(());
        }
        match cmd {
            Command::Auth(_) => self.check_admin(user),
            Command::Put(p) => self.check_put(user, &p.key, p.lease, p.prev_kv, lease_keys),
            Command::DeleteRange(d) => self.check_delete(user, &d.key, &d.range_end, d.prev_kv),
            Command::Txn(t) => self.check_txn(user, t, lease_keys),
            Command::LeaseRevoke { id } => self.check_lease_keys(user, *id, lease_keys),
            // etcd 3.4 lets any client grant leases and compact.
            Command::LeaseGrant { .. } | Command::Compact { .. } => Ok(()),
            // Members and alarms are never proposed on a client's behalf.
            Command::Member(_) | Command::Alarm { .. } | Command::As { .. } => {
                self.check_admin(user)
            }
            Command::Tagged { cmd, .. } => self.check_command(user, cmd, lease_keys),
        }
    }

    fn check_put<'a>(
        &self,
        user: &str,
        key: &[u8],
        lease: i64,
        prev_kv: bool,
        lease_keys: &dyn Fn(i64) -> Option<&'a BTreeSet<Vec<u8>>>,
    ) -> Outcome {
        self.check(user, key, &[], PermKind::Write)?;
        if lease != 0 {
            self.check_lease_keys(user, lease, lease_keys)?;
        }
        if prev_kv {
            self.check(user, key, &[], PermKind::Read)?;
        }
        Ok(())
    }

    fn check_delete(&self, user: &str, key: &[u8], range_end: &[u8], prev_kv: bool) -> Outcome {
        self.check(user, key, range_end, PermKind::Write)?;
        if prev_kv {
            self.check(user, key, range_end, PermKind::Read)?;
        }
        Ok(())
    }

    /// Attaching to, or revoking, a lease needs write permission on every
    /// key already attached to it (etcd's `checkLeasePuts`).
    fn check_lease_keys<'a>(
        &self,
        user: &str,
        lease: i64,
        lease_keys: &dyn Fn(i64) -> Option<&'a BTreeSet<Vec<u8>>>,
    ) -> Outcome {
        if self.check_admin(user).is_ok() {
            return Ok(());
        }
        for k in lease_keys(lease).into_iter().flatten() {
            self.check(user, k, &[], PermKind::Write)?;
        }
        Ok(())
    }

    fn check_txn<'a>(
        &self,
        user: &str,
        t: &TxnRequest,
        lease_keys: &dyn Fn(i64) -> Option<&'a BTreeSet<Vec<u8>>>,
    ) -> Outcome {
        for c in &t.compare {
            self.check(user, &c.key, &c.range_end, PermKind::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match op {
                RequestOp::Range(r) => self.check(user, &r.key, &r.range_end, PermKind::Read)?,
                RequestOp::Put(p) => {
                    self.check_put(user, &p.key, p.lease, p.prev_kv, lease_keys)?
                }
                RequestOp::DeleteRange(d) => {
                    self.check_delete(user, &d.key, &d.range_end, d.prev_kv)?
                }
                RequestOp::Txn(inner) => self.check_txn(user, inner, lease_keys)?,
            }
        }
        Ok(())
    }

    /// Feeds everything replicated to `h`, for [`crate::Store::hash`].
    pub(crate) fn digest(&self, h: &mut dyn FnMut(&[u8])) {
        h(&[u8::from(self.enabled)]);
        h(&self.revision.to_le_bytes());
        h(&self.secret);
        for (name, u) in &self.users {
            h(name.as_bytes());
            h(u.password.as_deref().unwrap_or("").as_bytes());
            h(&u.epoch.to_le_bytes());
            for r in &u.roles {
                h(r.as_bytes());
            }
        }
        for (name, r) in &self.roles {
            h(name.as_bytes());
            for p in &r.perms {
                h(&[p.kind as u8]);
                h(&p.key);
                h(&p.range_end);
            }
        }
    }

    /// Panics if an invariant is broken.
    pub fn assert_invariants(&self) {
        assert!(self.revision >= 1, "auth revision starts at 1");
        assert_eq!(
            self.enabled,
            !self.secret.is_empty(),
            "a token secret exactly while auth is enabled"
        );
        if self.enabled {
            let root = self
                .users
                .get(ROOT)
                .expect("auth enabled without a root user");
            assert!(root.roles.contains(ROOT), "root lost the root role");
        }
        for (name, u) in &self.users {
            assert!(
                u.epoch <= self.revision,
                "user {name}: epoch from the future"
            );
            for r in &u.roles {
                assert!(
                    r == ROOT || self.roles.contains_key(r),
                    "user {name} holds role {r}, which does not exist"
                );
            }
        }
        for (name, r) in &self.roles {
            for w in r.perms.windows(2) {
                assert!(
                    w[0].key <= w[1].key,
                    "role {name}: permissions out of order"
                );
            }
        }
    }
}

/// A range of keys `[start, end)`, `end == None` reaching past every key.
#[derive(Clone, Debug)]
struct Span {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Span {
    fn of(key: &[u8], range_end: &[u8]) -> Span {
        let point = || {
            let mut e = key.to_vec();
            e.push(0);
            Some(e)
        };
        let end = match range_end {
            [] => point(),
            [0] => None,
            e if e <= key => point(),
            e => Some(e.to_vec()),
        };
        Span {
            start: key.to_vec(),
            end,
        }
    }

    fn holds(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }

    /// Whether the union of `spans` holds every key of this span: walk from
    /// its start, jumping to the end of a span that holds the current key.
    fn covered_by(&self, spans: &[Span]) -> bool {
        let mut at = self.start.clone();
        // Every jump moves `at` past one span's end, so this ends.
        for _ in 0..=spans.len() {
            let Some(next) = spans.iter().find(|s| s.holds(&at)) else {
                return false;
            };
            match &next.end {
                None => return true,
                Some(e) => at.clone_from(e),
            }
            if self.end.as_ref().is_some_and(|end| at >= *end) {
                return true;
            }
        }
        false
    }
}
