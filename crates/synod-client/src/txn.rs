//! Compare-then-else transactions, built up call by call.

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use synod_etcd::pb::etcdserverpb as pb;

/// `if every compare holds { then } else { otherwise }`, applied atomically
/// at one revision.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub(crate) req: pb::TxnRequest,
}

fn compare(
    key: &[u8],
    result: CompareResult,
    target: CompareTarget,
    u: TargetUnion,
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(u),
        range_end: Vec::new(),
    }
}

/// A put, for [`Txn::then`] and [`Txn::otherwise`].
pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        })),
    }
}

/// A single-key get, for [`Txn::then`] and [`Txn::otherwise`].
pub fn get(key: impl Into<Vec<u8>>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key: key.into(),
            ..Default::default()
        })),
    }
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Holds when `key` does not exist (its create revision is 0).
    pub fn if_absent(mut self, key: impl AsRef<[u8]>) -> Txn {
        self.req.compare.push(compare(
            key.as_ref(),
            CompareResult::Equal,
            CompareTarget::Create,
            TargetUnion::CreateRevision(0),
        ));
        self
    }

    /// Holds when `key` was last modified at `rev` (0: it does not exist).
    pub fn if_mod_revision(mut self, key: impl AsRef<[u8]>, rev: i64) -> Txn {
        self.req.compare.push(compare(
            key.as_ref(),
            CompareResult::Equal,
            CompareTarget::Mod,
            TargetUnion::ModRevision(rev),
        ));
        self
    }

    /// Holds when `key` holds `value`.
    pub fn if_value(mut self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) -> Txn {
        self.req.compare.push(compare(
            key.as_ref(),
            CompareResult::Equal,
            CompareTarget::Value,
            TargetUnion::Value(value.into()),
        ));
        self
    }

    /// Runs when every compare holds.
    pub fn then(mut self, op: pb::RequestOp) -> Txn {
        self.req.success.push(op);
        self
    }

    /// Runs when some compare fails.
    pub fn otherwise(mut self, op: pb::RequestOp) -> Txn {
        self.req.failure.push(op);
        self
    }
}
