//! On-disk encoding of WAL segments (see README.md for the tables).
//!
//! A segment is a 64-byte header followed by records. Each record is a
//! 12-byte frame header, the payload, zero padding, and a 4-byte footer
//! holding the payload checksum, the whole frame a multiple of 16 bytes.
//! Alignment keeps every frame header (and footer) inside one 512-byte
//! sector, so a torn write can zero a header but never half of one. Because
//! the first sector-aligned piece of a frame holds the header and the last
//! holds the footer, only a full 512-byte run of zeros inside a payload can
//! look like a sector that never reached the disk.

use std::path::Path;

use crate::error::{Error, Result};
use crate::{Entry, HardState, Identity, SnapshotMeta};

/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SYNODWAL";
/// Format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; records start at this offset.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Length of a record frame header.
pub const FRAME_HEADER_LEN: usize = 12;
/// Length of a record frame footer (the payload checksum).
pub const FRAME_FOOTER_LEN: usize = 4;
/// Frames start at multiples of this.
pub const FRAME_ALIGN: usize = 16;
/// Largest payload accepted (a sanity bound, not a design limit).
pub const MAX_PAYLOAD: usize = 1 << 30;
/// Sector size assumed when telling a torn write from corruption.
pub const SECTOR: usize = 512;

/// Record type byte: a log entry.
pub const TYPE_ENTRY: u8 = 1;
/// Record type byte: hard state.
pub const TYPE_HARD_STATE: u8 = 2;
/// Record type byte: snapshot marker.
pub const TYPE_SNAPSHOT: u8 = 3;

/// The decoded header of a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version.
    pub version: u32,
    /// Cluster and node that own the log.
    pub identity: Identity,
    /// Segment sequence number (1, 2, 3, ... with no gaps).
    pub seq: u64,
    /// Index the next entry was expected to have when the segment was made.
    pub first_index: u64,
}

/// One logical record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A log entry. An entry whose index is at or below the current last
    /// index replaces that entry and everything after it.
    Entry(Entry),
    /// The Raft hard state as of this point in the log.
    HardState(HardState),
    /// A snapshot covering the log up to and including `index` exists.
    Snapshot(SnapshotMeta),
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Segment file name: `{seq:016x}-{first_index:016x}.wal`.
pub fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}.wal")
}

/// Parse a segment file name into `(seq, first_index)`.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

/// Encode a segment header.
pub fn encode_segment_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut v = Vec::with_capacity(SEGMENT_HEADER_LEN);
    v.extend_from_slice(&SEGMENT_MAGIC);
    put_u32(&mut v, h.version);
    put_u32(&mut v, SEGMENT_HEADER_LEN as u32);
    put_u64(&mut v, h.identity.cluster_id);
    put_u64(&mut v, h.identity.node_id);
    put_u64(&mut v, h.seq);
    put_u64(&mut v, h.first_index);
    v.resize(60, 0);
    let crc = crc32c::crc32c(&v);
    put_u32(&mut v, crc);
    v.try_into().expect("64 bytes")
}

/// Decode and check a segment header.
pub fn decode_segment_header(path: &Path, b: &[u8]) -> Result<SegmentHeader> {
    if b.len() < SEGMENT_HEADER_LEN {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "segment is {} bytes, shorter than its {SEGMENT_HEADER_LEN}-byte header",
                b.len()
            ),
        ));
    }
    if b[..8] != SEGMENT_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            format!("bad magic {:02x?}, expected \"SYNODWAL\"", &b[..8]),
        ));
    }
    let stored = get_u32(b, 60);
    let actual = crc32c::crc32c(&b[..60]);
    if stored != actual {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "segment header checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
            ),
        ));
    }
    let version = get_u32(b, 8);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(SegmentHeader {
        version,
        identity: Identity {
            cluster_id: get_u64(b, 16),
            node_id: get_u64(b, 24),
        },
        seq: get_u64(b, 32),
        first_index: get_u64(b, 40),
    })
}

/// Bytes a record with a `payload_len`-byte payload occupies on disk.
pub fn frame_len(payload_len: usize) -> usize {
    (FRAME_HEADER_LEN + payload_len + FRAME_FOOTER_LEN).next_multiple_of(FRAME_ALIGN)
}

/// Append one frame of type `ty` whose payload `payload` writes (exactly
/// `len` bytes) to `out`.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    ty: u8,
    len: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) {
    assert!(len <= MAX_PAYLOAD, "record payload too large");
    let start = out.len();
    put_u32(out, len as u32);
    out.push(ty);
    out.extend_from_slice(&[0, 0, 0]);
    let hcrc = crc32c::crc32c(&out[start..start + 8]);
    put_u32(out, hcrc);
    let payload_start = out.len();
    payload(out);
    debug_assert_eq!(out.len() - payload_start, len);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&out[start..start + 8]),
        &out[payload_start..],
    );
    let end = start + frame_len(len);
    out.resize(end - FRAME_FOOTER_LEN, 0);
    put_u32(out, crc);
}

fn record_type_and_payload_len(r: &Record) -> (u8, usize) {
    match r {
        Record::Entry(e) => (TYPE_ENTRY, 16 + e.data.len()),
        Record::HardState(_) => (TYPE_HARD_STATE, 24),
        Record::Snapshot(_) => (TYPE_SNAPSHOT, 16),
    }
}

/// Append the framed encoding of `r` to `out`.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let (ty, len) = record_type_and_payload_len(r);
    encode_frame(out, ty, len, |out| match r {
        Record::Entry(e) => {
            put_u64(out, e.index);
            put_u64(out, e.term);
            out.extend_from_slice(&e.data);
        }
        Record::HardState(h) => {
            put_u64(out, h.term);
            put_u64(out, h.vote);
            put_u64(out, h.commit);
        }
        Record::Snapshot(s) => {
            put_u64(out, s.index);
            put_u64(out, s.term);
        }
    });
}

fn decode_payload(ty: u8, p: &[u8]) -> std::result::Result<Record, String> {
    match ty {
        TYPE_ENTRY if p.len() >= 16 => Ok(Record::Entry(Entry {
            index: get_u64(p, 0),
            term: get_u64(p, 8),
            data: p[16..].to_vec(),
        })),
        TYPE_HARD_STATE if p.len() == 24 => Ok(Record::HardState(HardState {
            term: get_u64(p, 0),
            vote: get_u64(p, 8),
            commit: get_u64(p, 16),
        })),
        TYPE_SNAPSHOT if p.len() == 16 => Ok(Record::Snapshot(SnapshotMeta {
            index: get_u64(p, 0),
            term: get_u64(p, 8),
        })),
        TYPE_ENTRY | TYPE_HARD_STATE | TYPE_SNAPSHOT => Err(format!(
            "record type {ty} has impossible payload length {}",
            p.len()
        )),
        _ => Err(format!("unknown record type {ty}")),
    }
}

/// How a segment's readable data ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The data ends cleanly (end of file or an all-zero preallocated tail).
    Clean,
    /// The last segment ends in a partially written record: `bytes` bytes
    /// starting at `offset` are garbage and must be cut off.
    Torn {
        /// Where the torn record starts.
        offset: u64,
        /// How many bytes from `offset` up to the last non-zero byte.
        bytes: u64,
        /// Why it was judged torn.
        reason: String,
    },
}

/// The result of reading one segment.
#[derive(Clone, Debug)]
pub struct SegmentScan {
    /// The decoded header.
    pub header: SegmentHeader,
    /// Records with their byte offsets.
    pub records: Vec<(u64, Record)>,
    /// Offset just past the last good record.
    pub end: u64,
    /// How the data ends.
    pub tail: Tail,
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// True if some sector-aligned piece of `bytes[from..to]` is entirely zero:
/// the signature of a sector that never reached the disk.
fn has_zero_sector_chunk(bytes: &[u8], from: usize, to: usize) -> bool {
    let mut at = from;
    while at < to {
        let next = ((at / SECTOR) + 1) * SECTOR;
        let end = next.min(to);
        if all_zero(&bytes[at..end]) {
            return true;
        }
        at = end;
    }
    false
}

/// Read every record of a segment.
///
/// In the last segment (`is_last`) damage that looks like an interrupted
/// write is reported as [`Tail::Torn`]: a record that runs past the end of
/// the file, a record with a bad checksum some sector of which is all zeros,
/// or stray bytes after the all-zero end marker. Any other damage, and any
/// damage at all in an older segment, is an [`Error::Corrupt`] naming the
/// file and the offset.
pub fn scan_segment(path: &Path, bytes: &[u8], is_last: bool) -> Result<SegmentScan> {
    let mut records = Vec::new();
    let (header, end, tail) = scan_segment_into(path, bytes, is_last, &mut records)?;
    Ok(SegmentScan {
        header,
        records,
        end,
        tail,
    })
}

/// Like [`scan_segment`], but collects records into `records` so that a
/// caller still has the good records that precede an error. Returns the
/// header, the end offset and the tail.
pub fn scan_segment_into(
    path: &Path,
    bytes: &[u8],
    is_last: bool,
    records: &mut Vec<(u64, Record)>,
) -> Result<(SegmentHeader, u64, Tail)> {
    let header = decode_segment_header(path, bytes)?;
    let mut at = SEGMENT_HEADER_LEN;
    let len = bytes.len();
    let torn_or_corrupt = |at: usize, why: String| -> Result<Tail> {
        if is_last {
            Ok(Tail::Torn {
                offset: at as u64,
                bytes: (bytes.len() - at) as u64,
                reason: why,
            })
        } else {
            Err(Error::corrupt(
                path,
                at as u64,
                format!("{why} in a segment that is not the last one"),
            ))
        }
    };
    let tail = loop {
        if at >= len {
            break Tail::Clean;
        }
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER_LEN {
            if all_zero(rest) {
                break Tail::Clean;
            }
            break torn_or_corrupt(at, "record header cut short by end of file".into())?;
        }
        let h = &rest[..FRAME_HEADER_LEN];
        if all_zero(h) {
            if all_zero(rest) {
                break Tail::Clean;
            }
            break torn_or_corrupt(at, "non-zero bytes after the zero end-of-log marker".into())?;
        }
        let stored_hcrc = get_u32(h, 8);
        let actual_hcrc = crc32c::crc32c(&h[..8]);
        if stored_hcrc != actual_hcrc {
            return Err(Error::corrupt(
                path,
                at as u64,
                format!(
                    "record header checksum mismatch: stored {stored_hcrc:#010x}, computed \
                     {actual_hcrc:#010x}"
                ),
            ));
        }
        let plen = get_u32(h, 0) as usize;
        let ty = h[4];
        if plen > MAX_PAYLOAD {
            return Err(Error::corrupt(
                path,
                at as u64,
                format!("record length {plen} exceeds the maximum {MAX_PAYLOAD}"),
            ));
        }
        let flen = frame_len(plen);
        if rest.len() < flen {
            break torn_or_corrupt(
                at,
                format!(
                    "record of {flen} bytes cut short by end of file ({} bytes present)",
                    rest.len()
                ),
            )?;
        }
        let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + plen];
        let stored = get_u32(rest, flen - FRAME_FOOTER_LEN);
        let actual = crc32c::crc32c_append(crc32c::crc32c(&h[..8]), payload);
        if stored != actual {
            let why =
                format!("record checksum mismatch: stored {stored:#010x}, computed {actual:#010x}");
            if is_last && has_zero_sector_chunk(bytes, at, at + flen) {
                break torn_or_corrupt(at, format!("{why}, with an unwritten (all-zero) sector"))?;
            }
            return Err(Error::corrupt(path, at as u64, why));
        }
        let rec = decode_payload(ty, payload).map_err(|d| Error::corrupt(path, at as u64, d))?;
        records.push((at as u64, rec));
        at = (at + flen).min(len);
    };
    let end = match &tail {
        Tail::Clean => at.min(len) as u64,
        Tail::Torn { offset, .. } => *offset,
    };
    Ok((header, end, tail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn seg(records: &[Record]) -> Vec<u8> {
        let h = SegmentHeader {
            version: FORMAT_VERSION,
            identity: Identity {
                cluster_id: 7,
                node_id: 3,
            },
            seq: 1,
            first_index: 1,
        };
        let mut b = encode_segment_header(&h).to_vec();
        for r in records {
            encode_record(r, &mut b);
        }
        b
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Snapshot(SnapshotMeta { index: 0, term: 0 }),
            Record::HardState(HardState {
                term: 2,
                vote: 1,
                commit: 0,
            }),
            Record::Entry(Entry {
                index: 1,
                term: 2,
                data: b"hello".to_vec(),
            }),
            Record::Entry(Entry {
                index: 2,
                term: 2,
                data: vec![0xAB; 700],
            }),
            Record::Entry(Entry {
                index: 3,
                term: 2,
                data: vec![],
            }),
        ]
    }

    #[test]
    fn round_trip() {
        let recs = sample();
        let b = seg(&recs);
        assert_eq!(b.len() % FRAME_ALIGN, 0);
        let s = scan_segment(&PathBuf::from("x"), &b, false).unwrap();
        assert_eq!(s.tail, Tail::Clean);
        assert_eq!(s.end as usize, b.len());
        let got: Vec<Record> = s.records.into_iter().map(|(_, r)| r).collect();
        assert_eq!(got, recs);
        assert_eq!(s.header.identity.node_id, 3);
        assert_eq!(parse_segment_name(&segment_name(5, 77)), Some((5, 77)));
        // A zero-filled (preallocated) tail is a clean end.
        let mut z = b.clone();
        z.resize(b.len() + 4096, 0);
        let s = scan_segment(&PathBuf::from("x"), &z, false).unwrap();
        assert_eq!(
            (s.tail, s.end as usize, s.records.len()),
            (Tail::Clean, b.len(), 5)
        );
    }

    #[test]
    fn every_cut_of_last_record_is_torn_in_last_segment_only() {
        let recs = sample();
        let full = seg(&recs);
        let before = seg(&recs[..4]).len();
        for cut in before + 1..full.len() {
            let b = &full[..cut];
            let s = scan_segment(&PathBuf::from("x"), b, true).unwrap();
            assert_eq!(s.records.len(), 4, "cut {cut}");
            assert_eq!(s.end as usize, before);
            assert!(matches!(s.tail, Tail::Torn { offset, .. } if offset as usize == before));
            let e = scan_segment(&PathBuf::from("x"), b, false).unwrap_err();
            assert!(matches!(e, Error::Corrupt { offset, .. } if offset as usize == before));
        }
    }

    /// A bit flip in the last record must not pass for a torn write just
    /// because the record's payload ends in zeros that fall into the next
    /// sector (the footer keeps that piece non-zero), whatever the alignment.
    #[test]
    fn zero_tail_across_a_sector_boundary_is_still_corruption() {
        let mut data = vec![1u8; 40];
        data.extend_from_slice(&[0u8; 60]);
        for filler in 0..80 {
            let recs = vec![
                Record::Entry(Entry {
                    index: 1,
                    term: 1,
                    data: vec![7; filler * 8],
                }),
                Record::Entry(Entry {
                    index: 2,
                    term: 1,
                    data: data.clone(),
                }),
            ];
            let mut b = seg(&recs);
            let at = seg(&recs[..1]).len();
            b[at + FRAME_HEADER_LEN + 20] ^= 0x08;
            match scan_segment(&PathBuf::from("x"), &b, true) {
                Err(Error::Corrupt { offset, .. }) => assert_eq!(offset as usize, at),
                other => panic!("filler {filler}: expected corruption, got {other:?}"),
            }
            // Losing the sector that holds the footer is a torn write.
            let end = b.len();
            let sector_start = ((end - 1) / SECTOR) * SECTOR;
            let mut t = seg(&recs);
            for x in &mut t[sector_start.max(at)..end] {
                *x = 0;
            }
            let s = scan_segment(&PathBuf::from("x"), &t, true).unwrap();
            assert_eq!(s.records.len(), 1, "filler {filler}");
        }
    }

    #[test]
    fn flipped_byte_is_corruption_with_offset() {
        let recs = sample();
        let b = seg(&recs);
        let third = seg(&recs[..2]).len();
        for pos in [third + 3, third + 10, third + 20] {
            let mut c = b.clone();
            c[pos] ^= 0x40;
            let e = scan_segment(&PathBuf::from("/d/seg.wal"), &c, true).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, Error::Corrupt { offset, .. } if offset as usize == third),
                "{msg}"
            );
            assert!(
                msg.contains("/d/seg.wal") && msg.contains(&format!("offset {third}")),
                "{msg}"
            );
        }
        let mut c = b.clone();
        c[20] ^= 1;
        assert!(matches!(
            scan_segment(&PathBuf::from("x"), &c, true),
            Err(Error::Corrupt { offset: 0, .. })
        ));
    }
}
