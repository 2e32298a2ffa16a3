//! Lease ids for grants that leave the choice to the server, made as etcd
//! makes them: the low 16 bits of the member's id, then the time the
//! member started in milliseconds (40 bits), then a count (8 bits, carrying
//! into the time), the sign bit cleared. Two members, or two starts of one,
//! hand out different ids without asking each other, and the ids look like
//! etcd's to a person reading `etcdctl lease list`.
//!
//! The store still gives the next unused small number to a grant that
//! reaches it without an id (the simulator's and the library's grants).

use crate::backend::{ApiError, Backend};
use crate::Header;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use synod_kv as kv;

const COUNT_BITS: u32 = 8;
const TIME_BITS: u32 = 40;
const SUFFIX_BITS: u32 = TIME_BITS + COUNT_BITS;

fn low_bits(x: u64, n: u32) -> u64 {
    x & ((1u64 << n) - 1)
}

/// One member's lease-id generator, shared by all its client listeners:
/// two generators of one member would start from the same millisecond and
/// hand out the same ids.
#[derive(Debug)]
pub struct LeaseIds {
    /// The member id's part; known once the member has answered.
    prefix: OnceLock<u64>,
    suffix: AtomicU64,
}

impl LeaseIds {
    /// Starting from `start_millis`, the Unix time in milliseconds.
    pub(crate) fn new(start_millis: u64) -> LeaseIds {
        LeaseIds {
            prefix: OnceLock::new(),
            suffix: AtomicU64::new(low_bits(start_millis, TIME_BITS) << COUNT_BITS),
        }
    }

    /// Starting now.
    pub fn starting_now() -> LeaseIds {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        LeaseIds::new(now)
    }

    /// Whether the member's id has been given yet.
    pub(crate) fn knows_member(&self) -> bool {
        self.prefix.get().is_some()
    }

    /// Gives the member's id (once; later calls change nothing).
    pub(crate) fn set_member(&self, member_id: u64) {
        let _ = self.prefix.set(low_bits(member_id, 16) << SUFFIX_BITS);
    }

    /// The next id: positive, never 0 (which asks for an id).
    pub(crate) fn next(&self) -> i64 {
        let prefix = self.prefix.get().copied().unwrap_or(0);
        loop {
            let suffix = self.suffix.fetch_add(1, Ordering::Relaxed) + 1;
            let id = ((prefix | low_bits(suffix, SUFFIX_BITS)) & (i64::MAX as u64)) as i64;
            if id != 0 {
                return id;
            }
        }
    }
}

/// Grants a lease of `ttl` seconds under the next id of `ids`. An id some
/// lease already has (one a client chose, or one an earlier start handed
/// out within the same millisecond) is skipped.
pub(crate) async fn grant<B: Backend>(
    b: &B,
    ids: &LeaseIds,
    ttl: i64,
) -> Result<(Header, kv::CommandResponse), ApiError> {
    if !ids.knows_member() {
        ids.set_member(b.header().await?.member_id);
    }
    let mut tries = 0;
    loop {
        let id = ids.next();
        match b.write(kv::Command::LeaseGrant { id, ttl }).await {
            Err(ApiError::Kv(kv::Error::LeaseExists(_))) if tries < 8 => tries += 1,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_etcds_member_time_and_count() {
        let ids = LeaseIds::new(0x12_3456_789a);
        ids.set_member(0x8e9e_05c5_2164_694d);
        // etcd: member 0x...694d, started at 0x123456789a ms: ids count up
        // from 694d123456789a01.
        assert_eq!(ids.next(), 0x694d_1234_5678_9a01);
        assert_eq!(ids.next(), 0x694d_1234_5678_9a02);
        ids.set_member(1);
        assert_eq!(
            ids.next(),
            0x694d_1234_5678_9a03,
            "the member id is set once"
        );
        // The sign bit is cleared, as etcd clears it.
        let high = LeaseIds::new(0);
        high.set_member(0xffff);
        assert_eq!(high.next(), 0x7fff_0000_0000_0001);
    }
}
