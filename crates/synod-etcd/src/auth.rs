//! etcd's Auth service, its tokens, and the caller every other service
//! checks requests against.
//!
//! **Tokens.** etcd's `simple` tokens live in the memory of the member that
//! made them, and it replicates each through the log so the others learn it.
//! synod's tokens need no log entry: a token names its user, the user's
//! password epoch and the time it was made, and carries an HMAC-SHA256 of
//! those under the secret that AuthEnable put in the replicated auth store.
//! Every member can therefore check any member's token, and a changed
//! password, a deleted user or a new AuthEnable invalidates the old tokens.
//! As etcd's, a token lapses after `--auth-token-ttl` without use, counted
//! by each member that sees it; clients answer "invalid auth token" by
//! authenticating again.
//!
//! **Passwords** are hashed with bcrypt at etcd's cost by the member that
//! takes the request, on a blocking thread, one at a time: a loop of wrong
//! passwords costs that member one core and never stalls its Raft thread.

use crate::backend::{ApiError, Backend, Header, LeaseTtl, MemberInfo, StatusInfo, Subscription};
use crate::convert;
use crate::pb::authpb;
use crate::pb::etcdserverpb as pb;
use crate::service::{status, EtcdServer};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use synod_kv::auth::{AuthCommand, AuthError, AuthState, PermKind, Permission};
use synod_kv::{self as kv, Command};
use tonic::{Request, Response, Status};

/// etcd's bcrypt cost (Go's `bcrypt.DefaultCost`), unless `--bcrypt-cost`
/// says otherwise.
pub const BCRYPT_COST: u32 = 10;

/// How long a token stays valid without use unless set (etcd's
/// `--auth-token-ttl`).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Tokens seen before a sweep drops the ones that lapsed.
const SWEEP_EVERY: usize = 4096;

/// Bytes of HMAC kept in a token: 128 bits.
const MAC_BYTES: usize = 16;

/// The tokens this member has seen, and the one bcrypt slot.
pub(crate) struct Tokens {
    /// `--auth-token jwt,...`: JWTs instead of synod's simple tokens.
    jwt: Option<Arc<crate::jwt::JwtKeys>>,
    ttl: Duration,
    /// When each token seen lapses unless used again.
    seen: Mutex<HashMap<String, Instant>>,
    bcrypt: tokio::sync::Semaphore,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(body.as_bytes());
    m
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Tokens {
        Tokens {
            jwt: None,
            ttl,
            seen: Mutex::new(HashMap::new()),
            bcrypt: tokio::sync::Semaphore::new(1),
        }
    }

    pub(crate) fn with_jwt(mut self, keys: Arc<crate::jwt::JwtKeys>) -> Tokens {
        self.jwt = Some(keys);
        self
    }

    /// A new token for `user`, who must exist in `auth`.
    fn issue(&self, auth: &AuthState, user: &str) -> Result<String, Status> {
        match &self.jwt {
            Some(keys) => keys.issue(user, auth.revision()).ok_or_else(|| {
                Status::unknown("auth: token signing attempted with verify-only key")
            }),
            None => Ok(self.issue_simple(auth, user)),
        }
    }

    fn issue_simple(&self, auth: &AuthState, user: &str) -> String {
        let epoch = auth.user(user).map_or(0, |u| u.epoch);
        let mut nonce = [0u8; 8];
        getrandom::getrandom(&mut nonce).expect("the OS gives random bytes");
        let body = format!(
            "{}.{epoch}.{}.{}",
            hex(user.as_bytes()),
            unix_now(),
            hex(&nonce)
        );
        let sig = mac(auth.secret(), &body).finalize().into_bytes();
        let token = format!("{body}.{}", hex(&sig[..MAC_BYTES]));
        self.touch(token.clone());
        token
    }

    fn touch(&self, token: String) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= SWEEP_EVERY && seen.len().is_power_of_two() {
            let now = Instant::now();
            seen.retain(|_, lapses| *lapses > now);
        }
        seen.insert(token, Instant::now() + self.ttl);
    }

    /// The user a token stands for, or `InvalidAuthToken`.
    fn verify(&self, auth: &AuthState, token: &str) -> Result<String, AuthError> {
        let bad = AuthError::InvalidAuthToken;
        if !auth.enabled() {
            return Err(bad);
        }
        if let Some(keys) = &self.jwt {
            let claims = keys.verify(token).ok_or(bad)?;
            // As etcd: a token made before users or roles changed.
            if claims.revision < auth.revision() {
                return Err(AuthError::AuthOldRevision);
            }
            return Ok(claims.username);
        }
        let (body, sig) = token.rsplit_once('.').ok_or(bad)?;
        let sig = unhex(sig).ok_or(bad)?;
        // verify_truncated_left takes any prefix, even an empty one: only a
        // full-length MAC may pass.
        if sig.len() != MAC_BYTES {
            return Err(bad);
        }
        mac(auth.secret(), body)
            .verify_truncated_left(&sig)
            .map_err(|_| bad)?;
        let mut parts = body.split('.');
        let (Some(user), Some(epoch), Some(issued), Some(_nonce), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad);
        };
        let user = String::from_utf8(unhex(user).ok_or(bad)?).map_err(|_| bad)?;
        let epoch: u64 = epoch.parse().map_err(|_| bad)?;
        let issued: u64 = issued.parse().map_err(|_| bad)?;
        if auth.user(&user).map(|u| u.epoch) != Some(epoch) {
            return Err(bad);
        }
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(token) {
            Some(lapses) if *lapses <= now => return Err(bad),
            Some(lapses) => *lapses = now + self.ttl,
            // First seen here: made by another member, or before a sweep
            // dropped it (then it had lapsed, and is too old now).
            None if unix_now().saturating_sub(issued) > self.ttl.as_secs() => return Err(bad),
            None => {
                drop(seen);
                self.touch(token.to_string());
            }
        }
        Ok(user)
    }
}

/// Who sent a request, as far as auth is concerned.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub auth: Arc<AuthState>,
    /// Empty when the request carried no token.
    pub user: String,
}

fn auth_status(e: AuthError) -> Status {
    status(&kv::Error::Auth(e).into())
}

impl Caller {
    pub fn enabled(&self) -> bool {
        self.auth.enabled()
    }

    /// `cmd` as proposed on this caller's behalf: checked when applied.
    pub fn wrap(&self, cmd: Command) -> Command {
        if self.enabled() {
            Command::As {
                user: self.user.clone(),
                cmd: Box::new(cmd),
            }
        } else {
            cmd
        }
    }

    /// Whether the caller may `want` the keys `[key, range_end)`.
    pub fn check(&self, key: &[u8], range_end: &[u8], want: PermKind) -> Result<(), Status> {
        self.auth
            .check(&self.user, key, range_end, want)
            .map_err(auth_status)
    }

    pub fn admin(&self) -> Result<(), Status> {
        self.auth.check_admin(&self.user).map_err(auth_status)
    }

    /// etcd 3.4's Maintenance service refuses non-root callers with the auth
    /// store's own error, code Unknown ("auth: permission denied"): so do we.
    pub fn admin_raw(&self) -> Result<(), Status> {
        self.auth.check_admin(&self.user).map_err(|e| {
            let raw = match e {
                AuthError::UserEmpty => "auth: user name is empty",
                AuthError::UserNotFound => "auth: user not found",
                _ => "auth: permission denied",
            };
            Status::unknown(raw)
        })
    }
}

/// The token a request carries, in etcd's metadata keys.
fn token_of<T>(req: &Request<T>) -> Option<&str> {
    let md = req.metadata();
    let v = md.get("token").or_else(|| md.get("authorization"))?;
    let v = v.to_str().ok()?;
    Some(v.strip_prefix("Bearer ").unwrap_or(v))
}

fn kind_of(p: &authpb::Permission) -> PermKind {
    match authpb::permission::Type::try_from(p.perm_type) {
        Ok(authpb::permission::Type::Write) => PermKind::Write,
        Ok(authpb::permission::Type::Readwrite) => PermKind::ReadWrite,
        _ => PermKind::Read,
    }
}

fn perm_pb(p: &Permission) -> authpb::Permission {
    let t = match p.kind {
        PermKind::Read => authpb::permission::Type::Read,
        PermKind::Write => authpb::permission::Type::Write,
        PermKind::ReadWrite => authpb::permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: t as i32,
        key: p.key.clone(),
        range_end: p.range_end.clone(),
    }
}

impl<B: Backend> EtcdServer<B> {
    /// Who sent `req`: no one in particular while auth is disabled, else the
    /// user its token names (none without a token; an invalid token is
    /// refused, as etcd does, whatever the request).
    pub(crate) fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let auth = self.backend().auth();
        // etcd 3.4 refuses a token while auth is disabled too: no token is
        // valid then.
        let user = match token_of(req) {
            Some(t) => self.tokens().verify(&auth, t).map_err(auth_status)?,
            // Without a token, the common name of a verified client
            // certificate (`--client-cert-auth`), as etcd takes it.
            None => req
                .extensions()
                .get::<crate::tls::ClientIdentity>()
                .and_then(|id| id.common_name.clone())
                .unwrap_or_default(),
        };
        Ok(Caller { auth, user })
    }

    /// The caller, with the auth store as of a linearizable read: what a
    /// question about users and roles is answered from.
    async fn fresh_caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.backend().barrier().await.map_err(|e| status(&e))?;
        self.caller(req)
    }

    async fn bcrypt<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let tokens = self.tokens();
        let _slot = tokens
            .bcrypt
            .acquire()
            .await
            .map_err(|_| Status::unavailable("synod: member is stopping"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Status::internal(format!("synod: password hashing failed: {e}")))
    }

    /// The hash to store for a password: given (etcd 3.5's
    /// `hashedPassword`, base64 of the bcrypt hash) or made here.
    async fn password_hash(&self, password: String, hashed: String) -> Result<String, Status> {
        if !hashed.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(hashed)
                .map_err(|_| Status::invalid_argument("synod: hashedPassword is not base64"))?;
            return String::from_utf8(raw).map_err(|_| {
                Status::invalid_argument("synod: hashedPassword is not a bcrypt hash")
            });
        }
        let cost = self.limits().bcrypt_cost;
        self.bcrypt(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|e| Status::invalid_argument(format!("synod: cannot hash the password: {e}")))
    }

    async fn auth_write(
        &self,
        caller: &Caller,
        cmd: AuthCommand,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        let (h, _) = self.write(caller.wrap(Command::Auth(cmd))).await?;
        Ok(convert::header(h))
    }

    async fn header_now(&self) -> Result<Option<pb::ResponseHeader>, Status> {
        let h = self.backend().header().await.map_err(|e| status(&e))?;
        Ok(convert::header(h))
    }
}

#[tonic::async_trait]
impl<B: Backend> pb::auth_server::Auth for EtcdServer<B> {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let caller = self.caller(&req)?;
        let mut secret = vec![0u8; 32];
        getrandom::getrandom(&mut secret).expect("the OS gives random bytes");
        let header = self
            .auth_write(&caller, AuthCommand::Enable { secret })
            .await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let caller = self.caller(&req)?;
        let header = self.auth_write(&caller, AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let caller = self.fresh_caller(&req).await?;
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header_now().await?,
            enabled: caller.enabled(),
            auth_revision: caller.auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let caller = self.fresh_caller(&req).await?;
        let req = req.into_inner();
        let auth = caller.auth;
        if !auth.enabled() {
            return Err(auth_status(AuthError::AuthNotEnabled));
        }
        let failed = || auth_status(AuthError::AuthFailed);
        let user = auth.user(&req.name).ok_or_else(failed)?;
        let Some(hash) = user.password.clone() else {
            // etcd 3.4's own words, code Unknown.
            return Err(Status::unknown(
                "auth: authentication failed, password was given for no password user",
            ));
        };
        let password = req.password;
        let ok = self
            .bcrypt(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await?;
        if !ok {
            return Err(failed());
        }
        let token = self.tokens().issue(&auth, &req.name)?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.header_now().await?,
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = self.caller(&req)?;
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(auth_status(AuthError::UserEmpty));
        }
        // Refuse what the log would refuse before spending a bcrypt on it.
        caller.admin()?;
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password = if no_password {
            None
        } else {
            Some(
                self.password_hash(req.password, req.hashed_password)
                    .await?,
            )
        };
        let header = self
            .auth_write(
                &caller,
                AuthCommand::UserAdd {
                    name: req.name,
                    password,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let caller = self.fresh_caller(&req).await?;
        let name = req.into_inner().name;
        if name != caller.user {
            caller.admin()?;
        }
        let user = caller
            .auth
            .user(&name)
            .ok_or_else(|| auth_status(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header_now().await?,
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let caller = self.fresh_caller(&req).await?;
        caller.admin()?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header_now().await?,
            users: caller.auth.users().map(String::from).collect(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().name;
        let header = self
            .auth_write(&caller, AuthCommand::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller(&req)?;
        caller.admin()?;
        let req = req.into_inner();
        let password = Some(
            self.password_hash(req.password, req.hashed_password)
                .await?,
        );
        let header = self
            .auth_write(
                &caller,
                AuthCommand::UserChangePassword {
                    name: req.name,
                    password,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let header = self
            .auth_write(
                &caller,
                AuthCommand::UserGrantRole {
                    user: r.user,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let header = self
            .auth_write(
                &caller,
                AuthCommand::UserRevokeRole {
                    name: r.name,
                    role: r.role,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().name;
        let header = self
            .auth_write(&caller, AuthCommand::RoleAdd { name })
            .await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let caller = self.fresh_caller(&req).await?;
        let name = req.into_inner().role;
        let holds = caller
            .auth
            .user(&caller.user)
            .is_some_and(|u| u.roles.contains(&name));
        if !holds {
            caller.admin()?;
        }
        let role = caller
            .auth
            .role(&name)
            .ok_or_else(|| auth_status(AuthError::RoleNotFound))?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header_now().await?,
            perm: role.perms.iter().map(perm_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let caller = self.fresh_caller(&req).await?;
        caller.admin()?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header_now().await?,
            roles: caller.auth.roles().map(String::from).collect(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let caller = self.caller(&req)?;
        let name = req.into_inner().role;
        let header = self
            .auth_write(&caller, AuthCommand::RoleDelete { name })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let perm = r
            .perm
            .ok_or_else(|| auth_status(AuthError::PermissionNotGiven))?;
        let perm = Permission {
            kind: kind_of(&perm),
            key: perm.key,
            range_end: perm.range_end,
        };
        let header = self
            .auth_write(
                &caller,
                AuthCommand::RoleGrantPermission { name: r.name, perm },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let header = self
            .auth_write(
                &caller,
                AuthCommand::RoleRevokePermission {
                    name: r.role,
                    key: r.key,
                    range_end: r.range_end,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

/// A backend that acts for one caller: its writes are proposed on the
/// caller's behalf and its reads checked against the caller's permissions.
/// The Lock and Election services run their recipes on it, so a recipe can
/// do no more than its client could.
pub(crate) struct AsUser<B> {
    inner: Arc<B>,
    caller: Caller,
}

impl<B> AsUser<B> {
    pub fn new(inner: Arc<B>, caller: Caller) -> AsUser<B> {
        AsUser { inner, caller }
    }

    fn may_read(&self, key: &[u8], range_end: &[u8]) -> Result<(), ApiError> {
        self.caller
            .auth
            .check(&self.caller.user, key, range_end, PermKind::Read)
            .map_err(|e| ApiError::Kv(kv::Error::Auth(e)))
    }
}

impl<B: Backend> Backend for AsUser<B> {
    async fn range(
        &self,
        req: kv::RangeRequest,
        serializable: bool,
    ) -> Result<(Header, kv::RangeResponse), ApiError> {
        self.may_read(&req.key, &req.range_end)?;
        self.inner.range(req, serializable).await
    }

    async fn write(&self, cmd: Command) -> Result<(Header, kv::CommandResponse), ApiError> {
        self.inner.write(self.caller.wrap(cmd)).await
    }

    async fn keep_alive(&self, id: i64) -> Result<(Header, i64), ApiError> {
        self.inner.keep_alive(id).await
    }

    async fn time_to_live(&self, id: i64) -> Result<(Header, Option<LeaseTtl>), ApiError> {
        self.inner.time_to_live(id).await
    }

    async fn leases(&self) -> Result<(Header, Vec<i64>), ApiError> {
        self.inner.leases().await
    }

    async fn members(&self) -> Result<(Header, Vec<MemberInfo>), ApiError> {
        self.inner.members().await
    }

    async fn status(&self) -> Result<(Header, StatusInfo), ApiError> {
        self.inner.status().await
    }

    async fn move_leader(&self, target: u64) -> Result<Header, ApiError> {
        self.inner.move_leader(target).await
    }

    async fn hash_kv(&self, revision: i64) -> Result<(Header, u32, i64), ApiError> {
        self.inner.hash_kv(revision).await
    }

    async fn subscribe(&self) -> Result<Subscription, ApiError> {
        self.inner.subscribe().await
    }

    async fn history(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start: i64,
    ) -> Result<(i64, Vec<kv::Event>), ApiError> {
        self.may_read(&key, &range_end)?;
        self.inner.history(key, range_end, start).await
    }

    async fn header(&self) -> Result<Header, ApiError> {
        self.inner.header().await
    }

    fn auth(&self) -> Arc<AuthState> {
        self.inner.auth()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled_with(users: &[&str]) -> AuthState {
        let mut a = AuthState::default();
        for u in users.iter().chain(&["root"]) {
            a.apply(&AuthCommand::UserAdd {
                name: u.to_string(),
                password: Some("h".into()),
            })
            .unwrap();
        }
        a.apply(&AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        })
        .unwrap();
        a.apply(&AuthCommand::Enable {
            secret: vec![7; 32],
        })
        .unwrap();
        a
    }

    #[test]
    fn a_token_names_its_user_and_nothing_forged_passes() {
        let auth = enabled_with(&["alice", "bob"]);
        let tokens = Tokens::new(Duration::from_secs(300));
        let t = tokens.issue_simple(&auth, "alice");
        assert_eq!(tokens.verify(&auth, &t).as_deref(), Ok("alice"));
        // Another member, which has never seen it, takes it too.
        let other = Tokens::new(Duration::from_secs(300));
        assert_eq!(other.verify(&auth, &t).as_deref(), Ok("alice"));
        // Claiming to be bob with alice's signature fails.
        let forged = t.replacen(&hex(b"alice"), &hex(b"bob"), 1);
        assert_eq!(
            tokens.verify(&auth, &forged),
            Err(AuthError::InvalidAuthToken)
        );
        let (body, _) = t.rsplit_once('.').unwrap();
        let unsigned = format!("{body}.");
        for junk in ["", ".", "a.b.c.d.e", "zz", &t[..t.len() - 2], &unsigned] {
            assert_eq!(
                tokens.verify(&auth, junk),
                Err(AuthError::InvalidAuthToken),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn a_new_password_or_a_new_secret_ends_old_tokens() {
        let mut auth = enabled_with(&["alice"]);
        let tokens = Tokens::new(Duration::from_secs(300));
        let t = tokens.issue_simple(&auth, "alice");
        auth.apply(&AuthCommand::UserChangePassword {
            name: "alice".into(),
            password: Some("h2".into()),
        })
        .unwrap();
        assert_eq!(tokens.verify(&auth, &t), Err(AuthError::InvalidAuthToken));

        let t = tokens.issue_simple(&auth, "alice");
        auth.apply(&AuthCommand::Disable).unwrap();
        auth.apply(&AuthCommand::Enable {
            secret: vec![8; 32],
        })
        .unwrap();
        assert_eq!(tokens.verify(&auth, &t), Err(AuthError::InvalidAuthToken));
    }

    #[test]
    fn an_unused_token_lapses_after_the_ttl() {
        let auth = enabled_with(&["alice"]);
        let tokens = Tokens::new(Duration::ZERO);
        let t = tokens.issue_simple(&auth, "alice");
        assert_eq!(tokens.verify(&auth, &t), Err(AuthError::InvalidAuthToken));
    }
}
