//! Between etcd's wire types and synod-kv's. Wire enums arrive as plain
//! integers; unknown values are refused rather than guessed.

use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;
use crate::Header;
use synod_kv as kv;
use tonic::Status;

pub(crate) fn header(h: Header) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

/// The header of a Cluster service answer (member list, add, remove,
/// update, promote): etcd fills only the ids and the term there, never the
/// revision.
pub(crate) fn cluster_header(h: Header) -> Option<pb::ResponseHeader> {
    header(Header { revision: 0, ..h })
}

fn invalid(what: &str, value: i32) -> Status {
    Status::invalid_argument(format!("etcdserver: invalid {what} {value}"))
}

pub(crate) fn range_request(r: pb::RangeRequest) -> Result<kv::RangeRequest, Status> {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let sort_order =
        match O::try_from(r.sort_order).map_err(|_| invalid("sort order", r.sort_order))? {
            O::None => kv::SortOrder::None,
            O::Ascend => kv::SortOrder::Ascend,
            O::Descend => kv::SortOrder::Descend,
        };
    let sort_target =
        match T::try_from(r.sort_target).map_err(|_| invalid("sort target", r.sort_target))? {
            T::Key => kv::SortTarget::Key,
            T::Version => kv::SortTarget::Version,
            T::Create => kv::SortTarget::Create,
            T::Mod => kv::SortTarget::Mod,
            T::Value => kv::SortTarget::Value,
        };
    Ok(kv::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

pub(crate) fn put_request(p: pb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

pub(crate) fn delete_request(d: pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

fn compare(c: pb::Compare) -> Result<kv::Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result).map_err(|_| invalid("compare result", c.result))? {
        R::Equal => kv::CompareResult::Equal,
        R::Greater => kv::CompareResult::Greater,
        R::Less => kv::CompareResult::Less,
        R::NotEqual => kv::CompareResult::NotEqual,
    };
    // A missing operand compares as the zero value, as etcd does.
    let int = |u: &Option<U>| match u {
        Some(U::Version(v) | U::CreateRevision(v) | U::ModRevision(v) | U::Lease(v)) => *v,
        _ => 0,
    };
    let target = match T::try_from(c.target).map_err(|_| invalid("compare target", c.target))? {
        T::Version => kv::CompareTarget::Version(int(&c.target_union)),
        T::Create => kv::CompareTarget::Create(int(&c.target_union)),
        T::Mod => kv::CompareTarget::Mod(int(&c.target_union)),
        T::Lease => kv::CompareTarget::Lease(int(&c.target_union)),
        T::Value => kv::CompareTarget::Value(match c.target_union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
    };
    Ok(kv::Compare {
        key: c.key,
        range_end: c.range_end,
        result,
        target,
    })
}

fn request_op(op: pb::RequestOp) -> Result<kv::RequestOp, Status> {
    use pb::request_op::Request as R;
    Ok(match op.request {
        Some(R::RequestRange(r)) => kv::RequestOp::Range(range_request(r)?),
        Some(R::RequestPut(p)) => kv::RequestOp::Put(put_request(p)),
        Some(R::RequestDeleteRange(d)) => kv::RequestOp::DeleteRange(delete_request(d)),
        Some(R::RequestTxn(t)) => kv::RequestOp::Txn(txn_request(t)?),
        // etcd answers an empty operation this way.
        None => return Err(crate::service::status(&kv::Error::KeyNotFound.into())),
    })
}

pub(crate) fn txn_request(t: pb::TxnRequest) -> Result<kv::TxnRequest, Status> {
    Ok(kv::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

pub(crate) fn key_value(kv: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn range_response(h: Header, r: kv::RangeResponse) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(h),
        kvs: r.kvs.into_iter().map(key_value).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_response(h: Header, p: kv::PutResponse) -> pb::PutResponse {
    pb::PutResponse {
        header: header(h),
        prev_kv: p.prev_kv.map(key_value),
    }
}

pub(crate) fn delete_response(h: Header, d: kv::DeleteRangeResponse) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: header(h),
        deleted: d.deleted,
        prev_kvs: d.prev_kvs.into_iter().map(key_value).collect(),
    }
}

pub(crate) fn txn_response(h: Header, t: kv::TxnResponse) -> pb::TxnResponse {
    // The revision before the transaction: it made the next one if it
    // changed anything.
    let before = h.revision - i64::from(changes(&t.responses));
    pb::TxnResponse {
        header: header(h),
        succeeded: t.succeeded,
        responses: nested(h, before, &mut false, t.responses),
    }
}

/// Whether a transaction's operations changed the store (etcd counts a
/// delete that found nothing as no change).
fn changes(ops: &[kv::ResponseOp]) -> bool {
    ops.iter().any(|r| match r {
        kv::ResponseOp::Range(_) => false,
        kv::ResponseOp::Put(_) => true,
        kv::ResponseOp::DeleteRange(d) => d.deleted > 0,
        kv::ResponseOp::Txn(t) => changes(&t.responses),
    })
}

/// The answers inside a transaction, with the headers etcd gives them: the
/// revision alone, as the operation saw the store (`before`, or the one
/// after once an earlier operation changed something); a nested
/// transaction's header is empty.
fn nested(
    h: Header,
    before: i64,
    changed: &mut bool,
    ops: Vec<kv::ResponseOp>,
) -> Vec<pb::ResponseOp> {
    use pb::response_op::Response as R;
    let seen = |changed: bool| {
        Some(pb::ResponseHeader {
            revision: before + i64::from(changed),
            ..Default::default()
        })
    };
    ops.into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                kv::ResponseOp::Range(r) => R::ResponseRange(pb::RangeResponse {
                    header: seen(*changed),
                    ..range_response(h, r)
                }),
                kv::ResponseOp::Put(p) => {
                    *changed = true;
                    R::ResponsePut(pb::PutResponse {
                        header: seen(true),
                        ..put_response(h, p)
                    })
                }
                kv::ResponseOp::DeleteRange(d) => {
                    *changed |= d.deleted > 0;
                    R::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: seen(*changed),
                        ..delete_response(h, d)
                    })
                }
                kv::ResponseOp::Txn(t) => R::ResponseTxn(pb::TxnResponse {
                    header: Some(pb::ResponseHeader::default()),
                    succeeded: t.succeeded,
                    responses: nested(h, before, changed, t.responses),
                }),
            }),
        })
        .collect()
}
