//! The encoding of Raft records inside WAL entries and snapshot files: one
//! format-version byte, then the record in bincode.
//!
//! The version byte lets a later build change an encoding and still read the
//! old one (or refuse it by name) instead of misreading bytes. Decoding never
//! panics: bytes that do not decode, trailing bytes and unknown versions are
//! errors the caller turns into a refusal to start.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use synod_protocols::raft::Snapshot;

/// The format this build writes and reads.
pub const VERSION: u8 = 1;

/// Records larger than this are refused when decoding: the WAL itself
/// bounds records far lower, so anything beyond is damage, and the bound
/// keeps a damaged length from allocating the machine's memory.
pub const MAX_RECORD: u64 = 1 << 30;

/// Why stored bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Zero bytes.
    Empty,
    /// Written by a format this build does not read.
    UnknownVersion(u8),
    /// The bytes after the version byte are not a record.
    Malformed(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty record"),
            DecodeError::UnknownVersion(v) => write!(
                f,
                "record format version {v}, but this build reads version {VERSION}"
            ),
            DecodeError::Malformed(e) => write!(f, "record does not decode: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn options() -> impl bincode::Options {
    use bincode::Options;
    // The same wire layout as `bincode::serialize` (fixed-width integers,
    // little endian), but bounded and strict about trailing bytes.
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_RECORD)
        .reject_trailing_bytes()
}

/// Encodes a record.
///
/// Sized first (a walk that writes nothing), so a record is one allocation:
/// an entry is encoded on every put, and a snapshot record may be tens of
/// megabytes, which a growing buffer would copy at every doubling.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    use bincode::Options;
    let size = options()
        .serialized_size(value)
        .expect("raft records serialize");
    let mut out = Vec::with_capacity(1 + size as usize);
    out.push(VERSION);
    options()
        .serialize_into(&mut out, value)
        .expect("raft records serialize");
    debug_assert_eq!(out.len(), 1 + size as usize);
    out
}

/// The bytes [`encode`] writes for a snapshot record, as the record's small
/// prefix (version, metadata, data length) and the snapshot's data, which is
/// not copied: a snapshot of a large store is tens or hundreds of megabytes,
/// and joining them in one buffer faulted in and filled that much fresh
/// memory, which perf showed as most of the snapshot writer's time.
pub fn encode_snapshot_parts(snap: &Snapshot) -> (Vec<u8>, &[u8]) {
    let data: &[u8] = &snap.data.0;
    (snapshot_prefix(&snap.meta, data.len() as u64), data)
}

/// The bytes of a snapshot record before its data, for a snapshot at
/// `meta` whose data is `data_len` bytes long (see
/// [`encode_snapshot_parts`]).
pub fn snapshot_prefix(meta: &synod_protocols::raft::SnapshotMeta, data_len: u64) -> Vec<u8> {
    use bincode::Options;
    let mut prefix = vec![VERSION];
    options()
        .serialize_into(&mut prefix, meta)
        .expect("raft records serialize");
    // bincode's fixed-width layout of a byte string: its length, then the bytes.
    prefix.extend_from_slice(&data_len.to_le_bytes());
    prefix
}

/// Decodes a snapshot record written by [`encode`] (or by
/// [`encode_snapshot_parts`]), keeping its data in `bytes` rather than
/// copying it out: a restart decodes a snapshot as large as the store.
pub fn decode_snapshot(bytes: Vec<u8>) -> Result<Snapshot, DecodeError> {
    use bincode::Options;
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let mut rest = body;
    // The metadata is followed by the data, so it ends before the buffer.
    let meta: synod_protocols::raft::SnapshotMeta = options()
        .allow_trailing_bytes()
        .deserialize_from(&mut rest)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let Some((len, data)) = rest.split_first_chunk::<8>() else {
        return Err(DecodeError::Malformed("no data length".into()));
    };
    let len = u64::from_le_bytes(*len);
    if len != data.len() as u64 {
        return Err(DecodeError::Malformed(format!(
            "snapshot data of {len} bytes, but {} follow",
            data.len()
        )));
    }
    let at = bytes.len() - data.len();
    let data = synod_protocols::raft::Payload(bytes::Bytes::from(bytes).slice(at..));
    Ok(Snapshot { meta, data })
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    use bincode::Options;
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    options()
        .deserialize(body)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use synod_protocols::raft::{EntryData, Payload};

    #[test]
    fn records_round_trip() {
        let data = EntryData::App(Payload(vec![1, 2, 3].into()));
        assert_eq!(decode::<EntryData>(&encode(&data)), Ok(data));
        let snap = Snapshot::default();
        assert_eq!(decode::<Snapshot>(&encode(&snap)), Ok(snap));
    }

    #[test]
    fn a_snapshot_in_parts_is_its_record() {
        use synod_protocols::raft::{ConfState, SnapshotMeta};
        let snap = Snapshot {
            meta: SnapshotMeta {
                index: 9,
                term: 3,
                conf: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                },
            },
            data: Payload((0..300u32).map(|i| i as u8).collect::<Vec<u8>>().into()),
        };
        let (prefix, data) = encode_snapshot_parts(&snap);
        assert_eq!([prefix.as_slice(), data].concat(), encode(&snap));
        let empty = Snapshot::default();
        let (prefix, data) = encode_snapshot_parts(&empty);
        assert_eq!([prefix.as_slice(), data].concat(), encode(&empty));
        assert_eq!(decode_snapshot(encode(&snap)), Ok(snap.clone()));
        assert_eq!(decode_snapshot(encode(&empty)), Ok(empty));
        // One byte short, one too many, or a record of another kind: refused.
        let mut short = encode(&snap);
        short.pop();
        assert!(matches!(
            decode_snapshot(short),
            Err(DecodeError::Malformed(_))
        ));
        let mut long = encode(&snap);
        long.push(0);
        assert!(matches!(
            decode_snapshot(long),
            Err(DecodeError::Malformed(_))
        ));
        assert!(decode_snapshot(encode(&EntryData::Empty)).is_err());
    }

    #[test]
    fn another_version_is_named_not_misread() {
        let mut bytes = encode(&EntryData::Empty);
        bytes[0] = 2;
        let err = decode::<EntryData>(&bytes).unwrap_err();
        assert_eq!(err, DecodeError::UnknownVersion(2));
        assert!(err.to_string().contains("reads version 1"), "{err}");
        assert_eq!(decode::<EntryData>(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&EntryData::Empty);
        bytes.push(0);
        assert!(matches!(
            decode::<EntryData>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }

    proptest! {
        /// Arbitrary bytes give a record or an error, never a panic or a
        /// huge allocation (the bounded fuzz target for the record codec).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<EntryData>(&bytes);
            let _ = decode::<Snapshot>(&bytes);
            let mut versioned = vec![VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = decode::<EntryData>(&versioned);
            let _ = decode::<Snapshot>(&versioned);
            let _ = decode_snapshot(versioned);
        }
    }
}
