//! The replicated key-value store's vocabulary: client requests, results and the
//! events a key-value node reports. Shared by the Raft-backed node
//! ([`crate::raft`]) and the simulator's clients and checkers, so both sides
//! speak exactly one language.
//!
//! Client sessions: every request carries `(client, seq)`. A node applies a
//! command at most once per session, so a client that retries after a timeout
//! (possibly against another node) never applies its write twice.

use crate::sansio::NodeId;
use serde::{Deserialize, Serialize};

/// One key-value operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    /// Result: whether the key existed.
    Delete {
        key: String,
    },
    /// Sets `value` if the current value equals `expected` (`None`: the key must be
    /// absent). Result: whether it swapped.
    Cas {
        key: String,
        expected: Option<String>,
        value: String,
    },
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Get { key }
            | KvOp::Delete { key }
            | KvOp::Cas { key, .. } => key,
        }
    }
    pub fn is_read(&self) -> bool {
        matches!(self, KvOp::Get { .. })
    }
}

/// The result of a successful operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvResult {
    /// put
    Ok,
    /// get
    Value(Option<String>),
    /// delete (existed) and cas (swapped)
    Bool(bool),
}

/// A client request, identified by its session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KvRequest {
    pub client: u64,
    /// Increases by one with each new operation of this client; a retry reuses it.
    pub seq: u64,
    pub op: KvOp,
}

/// Why a request was not served. A client may retry it elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvError {
    /// This node is not the leader; `hint` is the leader it believes in, if any.
    NotLeader { hint: Option<NodeId> },
    /// The node gave up on the request (leadership lost, or it was dropped while
    /// in flight). The operation may or may not have been applied: only a retry
    /// with the same `(client, seq)` tells, exactly once.
    Dropped,
}

/// What a key-value node reports to its clients and to the simulator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEvent {
    /// The answer to a request.
    Response {
        client: u64,
        seq: u64,
        result: Result<KvResult, KvError>,
    },
    /// The node applied the log entry at `index` (committed in `term`); `digest`
    /// identifies its content, so checkers can verify that every node applies the
    /// same entry at the same index.
    Applied { index: u64, term: u64, digest: u64 },
    /// The node became leader of `term`.
    BecameLeader { term: u64 },
    /// The node replaced its state with a peer's snapshot of every entry up
    /// to `index`; it applies the entries after it next.
    Restored { index: u64 },
}

/// Administrative requests, injected by the simulator or an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    AddVoter(NodeId),
    AddLearner(NodeId),
    PromoteLearner(NodeId),
    RemoveNode(NodeId),
    TransferLeader(NodeId),
    /// Take a snapshot now and compact the log up to it.
    Snapshot,
}

/// Input to a key-value node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvInput {
    Client(KvRequest),
    Admin(AdminOp),
}

/// A small in-memory key-value map that applies [`KvOp`]s with client sessions.
/// Deterministic (ordered maps), so every replica that applies the same log holds
/// byte-identical state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    pub data: std::collections::BTreeMap<String, String>,
    /// Per client: the last applied seq and its result.
    pub sessions: std::collections::BTreeMap<u64, (u64, KvResult)>,
}

impl KvStore {
    /// Applies a request exactly once per `(client, seq)`: a duplicate returns the
    /// recorded result of the original. Requests older than the session's last
    /// seq are answered with `None` (the client has moved on; nobody waits).
    pub fn apply(&mut self, req: &KvRequest) -> Option<KvResult> {
        if let Some((last, result)) = self.sessions.get(&req.client) {
            if req.seq == *last {
                return Some(result.clone());
            }
            if req.seq < *last {
                return None;
            }
        }
        let result = self.apply_op(&req.op);
        if !req.op.is_read() {
            self.sessions.insert(req.client, (req.seq, result.clone()));
        }
        Some(result)
    }

    /// Applies an operation with no session (reads, and tests).
    pub fn apply_op(&mut self, op: &KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
                KvResult::Ok
            }
            KvOp::Get { key } => KvResult::Value(self.data.get(key).cloned()),
            KvOp::Delete { key } => KvResult::Bool(self.data.remove(key).is_some()),
            KvOp::Cas {
                key,
                expected,
                value,
            } => {
                if self.data.get(key) == expected.as_ref() {
                    self.data.insert(key.clone(), value.clone());
                    KvResult::Bool(true)
                } else {
                    KvResult::Bool(false)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_write_applies_once() {
        let mut s = KvStore::default();
        let cas = |seq| KvRequest {
            client: 1,
            seq,
            op: KvOp::Cas {
                key: "k".into(),
                expected: None,
                value: "v".into(),
            },
        };
        assert_eq!(s.apply(&cas(1)), Some(KvResult::Bool(true)));
        // The retry sees the original answer, not a failed second swap.
        assert_eq!(s.apply(&cas(1)), Some(KvResult::Bool(true)));
        assert_eq!(s.apply(&cas(2)), Some(KvResult::Bool(false)));
        assert_eq!(s.apply(&cas(1)), None);
    }
}
