//! Member and cluster ids, derived as etcd derives them, so that a member
//! started with etcd's flags gets the id etcd would give it, and two clusters
//! started with different peer URLs or tokens never share a cluster id (which
//! is what lets a member refuse a data directory or a peer of another cluster).

use sha1::{Digest, Sha1};

/// The first 8 bytes of the SHA-1 of `data`, big-endian: etcd's id from bytes.
fn id_of(data: &[u8]) -> u64 {
    let sum = Sha1::digest(data);
    let mut first = [0u8; 8];
    first.copy_from_slice(&sum[..8]);
    u64::from_be_bytes(first)
}

/// A member's id: from its peer URLs (sorted, concatenated) and the cluster
/// token (`--initial-cluster-token`), as etcd computes it for a member of
/// the initial cluster.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut data = urls.concat().into_bytes();
    data.extend_from_slice(token.as_bytes());
    id_of(&data)
}

/// The cluster's id: from its initial members' ids (sorted, big-endian).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let data: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    id_of(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from etcd 3.4.23: `etcd --name infra1 --initial-cluster
    /// infra1=http://127.0.0.1:42380 --initial-cluster-token tkn-1 ...` then
    /// `etcdctl member list -w json`.
    #[test]
    fn ids_match_etcd() {
        let m = member_id(&["http://127.0.0.1:42380".to_string()], "tkn-1");
        assert_eq!(m, 9856323249795410054);
        assert_eq!(format!("{m:x}"), "88c8b1c64f7aa886");
        assert_eq!(cluster_id(&[m]), 15010094128421270507);
    }

    #[test]
    fn order_of_urls_and_members_does_not_matter() {
        let a = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        let b = [a[1].clone(), a[0].clone()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
        assert_eq!(cluster_id(&[1, 2, 3]), cluster_id(&[3, 1, 2]));
        assert_ne!(cluster_id(&[1, 2, 3]), cluster_id(&[1, 2]));
    }
}
