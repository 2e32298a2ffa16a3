//! Errors of the key-value state machine, worded as etcd words them so that
//! etcdctl users see the messages they know.

use std::fmt;

/// Why a request was refused. Every variant leaves the store unchanged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// A request needs a key and got an empty one.
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    KeyNotFound,
    /// `ignore_value` together with a value.
    ValueProvided,
    /// `ignore_lease` together with a lease.
    LeaseProvided,
    /// A put names a lease that was never granted or is already revoked.
    LeaseNotFound(i64),
    /// A grant asks for an id that is in use.
    LeaseExists(i64),
    /// A grant asks for a TTL above [`crate::MAX_LEASE_TTL`].
    LeaseTtlTooLarge(i64),
    /// A read or compaction names a revision after the current one.
    FutureRevision { requested: i64, current: i64 },
    /// A read, watch or compaction names a revision that compaction removed.
    Compacted { requested: i64, compacted: i64 },
    /// A transaction writes one key twice, or puts a key that it also deletes.
    DuplicateKey,
    /// A transaction has more operations in one branch than the store allows.
    TooManyOps { ops: usize, max: usize },
    /// The space quota is exceeded (the NOSPACE alarm is raised): only
    /// requests that free space or change nothing are taken.
    NoSpace,
    /// Refused by the auth store: no or unknown user, no permission, or an
    /// auth change etcd's rules forbid.
    Auth(crate::auth::AuthError),
}

/// How a front end should classify an [`Error`]; the names are gRPC's codes, as
/// etcd uses them for these errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    OutOfRange,
    ResourceExhausted,
    PermissionDenied,
    Unauthenticated,
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::DuplicateKey
            | Error::TooManyOps { .. } => ErrorClass::InvalidArgument,
            Error::LeaseNotFound(_) => ErrorClass::NotFound,
            Error::LeaseExists(_) => ErrorClass::FailedPrecondition,
            Error::LeaseTtlTooLarge(_) | Error::FutureRevision { .. } | Error::Compacted { .. } => {
                ErrorClass::OutOfRange
            }
            Error::NoSpace => ErrorClass::ResourceExhausted,
            Error::Auth(a) => {
                use crate::auth::AuthError as A;
                match a {
                    A::UserEmpty
                    | A::RoleEmpty
                    | A::AuthFailed
                    | A::PermissionNotGiven
                    | A::InvalidAuthMgmt
                    | A::AuthOldRevision => ErrorClass::InvalidArgument,
                    A::PermissionDenied => ErrorClass::PermissionDenied,
                    A::InvalidAuthToken => ErrorClass::Unauthenticated,
                    _ => ErrorClass::FailedPrecondition,
                }
            }
        }
    }
}

impl Error {
    /// What etcd would say, byte for byte: etcd's Go client turns these strings
    /// back into typed errors by exact match, so they must not change.
    pub fn etcd_message(&self) -> &'static str {
        match self {
            Error::EmptyKey => "etcdserver: key is not provided",
            Error::KeyNotFound => "etcdserver: key not found",
            Error::ValueProvided => "etcdserver: value is provided",
            Error::LeaseProvided => "etcdserver: lease is provided",
            Error::LeaseNotFound(_) => "etcdserver: requested lease not found",
            Error::LeaseExists(_) => "etcdserver: lease already exists",
            Error::LeaseTtlTooLarge(_) => "etcdserver: too large lease TTL",
            Error::FutureRevision { .. } => {
                "etcdserver: mvcc: required revision is a future revision"
            }
            Error::Compacted { .. } => "etcdserver: mvcc: required revision has been compacted",
            Error::DuplicateKey => "etcdserver: duplicate key given in txn request",
            Error::TooManyOps { .. } => "etcdserver: too many operations in txn request",
            Error::NoSpace => "etcdserver: mvcc: database space exceeded",
            Error::Auth(a) => a.etcd_message(),
        }
    }
}

/// etcd's message, then the specifics (for logs and our own CLI).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.etcd_message())?;
        match self {
            Error::LeaseNotFound(id) | Error::LeaseExists(id) => write!(f, " (lease {id:x})"),
            Error::LeaseTtlTooLarge(ttl) => {
                write!(f, " ({ttl} s, at most {} s)", crate::MAX_LEASE_TTL)
            }
            Error::FutureRevision { requested, current } => {
                write!(f, " (asked for {requested}, current {current})")
            }
            Error::Compacted {
                requested,
                compacted,
            } => write!(f, " (asked for {requested}, compacted up to {compacted})"),
            Error::TooManyOps { ops, max } => write!(f, " ({ops}, at most {max})"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {}
