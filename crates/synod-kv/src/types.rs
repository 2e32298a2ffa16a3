//! Requests, responses and events, field for field as etcd's v3 API has them
//! (`etcdserverpb` and `mvccpb`), minus what belongs to the front end (headers,
//! `serializable`). A server maps its wire types onto these one to one.

use serde::{Deserialize, Serialize};

/// One key at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the put that created the key (since it last did not exist).
    pub create_revision: i64,
    /// Revision of the last put.
    pub mod_revision: i64,
    /// 1 after the creating put, +1 per put since; a delete ends the key.
    pub version: i64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Lease the key is attached to, 0 for none.
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// Keys `[key, range_end)`; an empty `range_end` means `key` alone, and
/// `range_end == [0]` means every key from `key` on (etcd's conventions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read as of this revision (0 or less: the current one).
    pub revision: i64,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    /// Filters on the keys found (0: no filter). `count` ignores them.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` let through.
    pub more: bool,
    /// How many keys the range holds at the revision read, before limit and filters.
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub lease: i64,
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub prev_kv: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// What a comparison looks at, with the operand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Lease(i64),
}

/// Holds if every key in the range (or the single key) satisfies it. A missing
/// key has version, create and mod revision 0 and lease 0; a comparison on the
/// value of a missing key never holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    pub result: CompareResult,
    pub target: CompareTarget,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<RequestOp>,
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it. For a delete, `kv` holds the key and the
/// deleting revision as `mod_revision`, everything else zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key before this change, if it existed and history still holds it.
    pub prev_kv: Option<KeyValue>,
}

/// What Raft replicates: every request that changes the store. Reads do not go
/// through the log (the service answers them after a ReadIndex round).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    /// Drop history before this revision.
    Compact {
        revision: i64,
    },
    /// Grant lease `id` (0: the store picks the next free id) for `ttl` seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revoke a lease and delete its keys (the leader proposes this on expiry,
    /// so expiry happens at the same point of the log everywhere).
    LeaseRevoke {
        id: i64,
    },
    /// A change to what the cluster records of its members. It lives beside
    /// the key space, not in it: no revision, no event, not in HashKV.
    Member(MemberChange),
    /// Raises (`active`) or clears an alarm of member `member`. Like member
    /// records, alarms live beside the key space.
    Alarm {
        active: bool,
        member: u64,
        alarm: AlarmType,
    },
    /// A change to users, roles or permissions.
    Auth(crate::auth::AuthCommand),
    /// A client's request on behalf of `user` ("" for none), checked
    /// against the auth store when applied. Proposed while auth is enabled;
    /// while it is, a bare `Put`, `DeleteRange`, `Txn` or `Auth` is refused.
    As {
        user: String,
        cmd: Box<Command>,
    },
    /// A write that member `by` forwarded to its leader as its request `id`.
    /// Every member applies `cmd` alike; the tag lets the member that
    /// forwarded it recognise the entry in its own log and answer its client
    /// even if the leader that proposed it dies before answering.
    Tagged {
        by: u64,
        id: u64,
        cmd: Box<Command>,
    },
}

/// etcd's alarms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// The space quota (`--quota-backend-bytes`) is exceeded: writes that
    /// take space are refused until an operator frees some and disarms it.
    NoSpace,
    /// A member's data was found corrupt.
    Corrupt,
}

/// What the cluster records of one member besides its vote (which the Raft
/// configuration holds): what `MemberList` shows, and where peers reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Empty until the member has started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Removed for good: its id is never given again, and the others refuse
    /// to talk to it.
    pub removed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Where member `id` is reached: recorded before the configuration
    /// change that adds it, and by `MemberUpdate`.
    PeerUrls { id: u64, peer_urls: Vec<String> },
    /// A member's own name and client URLs, published when it starts.
    Attributes {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Member `id` left the cluster, recorded after the configuration change
    /// that removed it.
    Removed { id: u64 },
}

/// The answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact,
    LeaseGrant { id: i64, ttl: i64 },
    LeaseRevoke,
    Member,
    Alarm,
    Auth,
}

/// A lease as the store knows it. Time is not the store's business: the TTL is
/// kept for the service, whose leader counts it down and proposes the revoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: i64,
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PutRequest` as it was before its byte strings went through
    /// `serde_bytes`: serde's default, element by element.
    #[derive(Serialize, Deserialize)]
    struct PlainPut {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }

    /// Logs and peers written before the change must still decode, and the
    /// other way round: the bytes are the same, only faster to produce.
    #[test]
    fn byte_strings_encode_as_before() {
        let put = PutRequest {
            key: b"key".to_vec(),
            value: vec![0, 1, 2, 255],
            lease: 7,
            prev_kv: true,
            ignore_value: false,
            ignore_lease: true,
        };
        let plain = PlainPut {
            key: put.key.clone(),
            value: put.value.clone(),
            lease: put.lease,
            prev_kv: put.prev_kv,
            ignore_value: put.ignore_value,
            ignore_lease: put.ignore_lease,
        };
        let now = bincode::serialize(&put).unwrap();
        assert_eq!(now, bincode::serialize(&plain).unwrap());
        let back: PutRequest = bincode::deserialize(&now).unwrap();
        assert_eq!(back, put);
    }
}
