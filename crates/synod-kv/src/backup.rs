//! The file `etcdctl snapshot save` writes from a synod member, and that
//! `synod snapshot restore` starts a new cluster from: the whole store (every
//! retained revision and lease) in one checksummed file.
//!
//! Framed as etcd frames its snapshot files, which etcdctl checks while it
//! saves one: a body whose length is a multiple of 512 bytes, then the
//! SHA-256 of the body. Inside the body, little-endian:
//!
//! | bytes | what |
//! | --- | --- |
//! | 8 | magic `SYNODBAK` |
//! | 4 | format version (1) |
//! | 8 | length n of the store |
//! | n | the store as a versioned payload ([`Payload::encode`]) |
//! | 0-511 | zeros, up to a multiple of 512 |
//!
//! A file that is cut short, bit-flipped or of another format is refused
//! with what is wrong, never half-read.

use crate::Store;
use sha2::{Digest, Sha256};
use synod_protocols::raft::Payload;

const MAGIC: &[u8; 8] = b"SYNODBAK";
const VERSION: u32 = 1;
/// Magic, version, length.
const HEAD: usize = 8 + 4 + 8;
/// etcdctl takes a file as complete only if its length is a multiple of
/// this plus the checksum.
const ALIGN: usize = 512;
const SUM: usize = 32;

/// Encodes `store` as a backup file. Its member records are left out: a
/// restored cluster has the members its restore names.
pub fn encode(store: &Store) -> Vec<u8> {
    let data = Payload::encode(&store.clone().without_members());
    let body = (HEAD + data.0.len()).next_multiple_of(ALIGN);
    let mut out = Vec::with_capacity(body + SUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(data.0.len() as u64).to_le_bytes());
    out.extend_from_slice(&data.0);
    out.resize(body, 0);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// What `synod snapshot status` prints, as `etcdutl snapshot status` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupStatus {
    /// CRC-32C of the store's bytes (etcd prints a CRC-32 of its data).
    pub hash: u32,
    pub revision: i64,
    /// Keys alive at `revision`.
    pub keys: i64,
    /// Bytes of the file.
    pub size: u64,
}

/// Reads a backup file, checking it whole first.
pub fn decode(bytes: &[u8]) -> Result<(Store, BackupStatus), String> {
    if bytes.len() < HEAD + SUM || &bytes[..8] != MAGIC {
        return Err("not a synod snapshot file (no SYNODBAK header)".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "snapshot file format version {version}; this build reads version {VERSION}"
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - SUM);
    if body.len() % ALIGN != 0 || Sha256::digest(body).as_slice() != sum {
        return Err(format!(
            "SHA-256 mismatch over {} bytes: the file is cut short or damaged",
            body.len()
        ));
    }
    let n = u64::from_le_bytes(body[12..HEAD].try_into().expect("8 bytes"));
    let data = usize::try_from(n)
        .ok()
        .and_then(|n| body.get(HEAD..HEAD.checked_add(n)?))
        .ok_or_else(|| format!("the store's length {n} runs past the end of the file"))?;
    let store: Store = Payload(bytes::Bytes::copy_from_slice(data))
        .try_decode()
        .map_err(|e| format!("the store inside does not decode: {e}"))?;
    let status = BackupStatus {
        hash: crc32c::crc32c(data),
        revision: store.revision(),
        keys: store.live_keys(),
        size: bytes.len() as u64,
    };
    Ok((store, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, PutRequest};

    fn store() -> Store {
        let mut s = Store::new();
        for i in 0..10 {
            let put = PutRequest {
                key: format!("k{i}").into_bytes(),
                value: vec![b'v'; i],
                ..PutRequest::default()
            };
            s.apply(&Command::Put(put)).unwrap();
        }
        s
    }

    #[test]
    fn a_backup_reads_back_as_the_same_store() {
        let s = store();
        let file = encode(&s);
        let (back, status) = decode(&file).unwrap();
        assert_eq!(back.hash(), s.hash());
        assert_eq!(status.revision, 11);
        assert_eq!(status.keys, 10);
        assert_eq!(status.size, file.len() as u64);
    }

    #[test]
    fn a_damaged_or_cut_backup_is_refused() {
        let file = encode(&store());
        let mut flipped = file.clone();
        flipped[40] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("SHA-256 mismatch"));
        assert!(decode(&file[..file.len() - 1])
            .unwrap_err()
            .contains("SHA-256 mismatch"));
        // The framing etcdctl checks before it keeps a saved file.
        assert_eq!(file.len() % 512, 32);
        assert!(decode(b"PK\x03\x04 a zip file")
            .unwrap_err()
            .contains("not a synod"));
    }
}
