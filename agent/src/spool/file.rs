//! One spooled batch on disk: its name (the sequence range it holds), its
//! framing (magic, format version, length, SHA-256 of the payload) and the
//! durable write path (temporary name, fsync, rename, directory fsync).
//!
//! The name carries the range so that even a file whose contents are lost
//! still says which numbers were used: a damaged batch becomes a visible gap
//! at the server, never a reused number.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};
use tyr_proto::EventBatch;

/// First bytes of every batch file.
const MAGIC: &[u8; 8] = b"TYRSPOOL";
/// Version of the framing below.
const FORMAT_VERSION: u32 = 1;
/// Magic, version (u32 LE), payload length (u64 LE), SHA-256 of the payload.
pub(super) const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// Suffix of a complete batch file.
const BATCH_SUFFIX: &str = ".batch";
/// Suffix of a batch being written (never read back).
pub(super) const TMP_SUFFIX: &str = ".tmp";

/// Why a batch file's contents cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its header says (a torn write).
    #[error("truncated: {actual} bytes of {expected}")]
    Truncated {
        /// Bytes the header announces (header included).
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Not a spool file, or a later format.
    #[error("not a spool batch file (bad magic or format version)")]
    Format,
    /// The payload does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload is not an `EventBatch`.
    #[error("payload does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The file name of the batch holding `first..=last`.
pub(super) fn batch_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}{BATCH_SUFFIX}")
}

/// The temporary name a batch starting at `first` is written under.
pub(super) fn tmp_name(first: u64) -> String {
    format!("{first:020}{TMP_SUFFIX}")
}

/// The range a batch file name announces; None for any other name.
pub(super) fn parse_batch_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(BATCH_SUFFIX)?;
    let (first, last) = stem.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first >= 1 && first <= last).then_some((first, last))
}

/// The framed bytes of `batch`.
pub(super) fn encode(batch: &EventBatch) -> Vec<u8> {
    let payload = batch.encode_to_vec();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    bytes
}

/// The payload length a header announces, after checking magic and version.
fn announced_len(header: &[u8]) -> Result<u64, FrameError> {
    let format = header
        .get(..HEADER_LEN)
        .ok_or(FrameError::Truncated { expected: HEADER_LEN as u64, actual: header.len() as u64 })?;
    if &format[..8] != MAGIC || format[8..12] != FORMAT_VERSION.to_le_bytes() {
        return Err(FrameError::Format);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&format[12..20]);
    Ok(u64::from_le_bytes(len))
}

/// Checks that a file of `size` bytes starting with `header` is complete
/// (cheap: no checksum, used when scanning the spool at open).
pub(super) fn check_complete(header: &[u8], size: u64) -> Result<(), FrameError> {
    let expected = announced_len(header)?.saturating_add(HEADER_LEN as u64);
    if size != expected {
        return Err(FrameError::Truncated { expected, actual: size });
    }
    Ok(())
}

/// Decodes and verifies framed bytes.
pub(super) fn decode(bytes: &[u8]) -> Result<EventBatch, FrameError> {
    check_complete(bytes, bytes.len() as u64)?;
    let payload = &bytes[HEADER_LEN..];
    if Sha256::digest(payload)[..] != bytes[20..HEADER_LEN] {
        return Err(FrameError::Checksum);
    }
    Ok(EventBatch::decode(payload)?)
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::private_fs::sync_dir(dir)
}

/// How far a durable write got before failing.
#[derive(Debug)]
pub(super) enum WriteFailure {
    /// Nothing is left under the final name: the write did not happen.
    NotWritten(io::Error),
    /// The file is complete under its final name but the directory fsync
    /// failed, and removing it failed too: it may or may not survive a crash.
    Renamed(io::Error),
}

/// Writes `bytes` to `dir/tmp`, fsyncs it, renames it to `dir/name` and
/// fsyncs the directory. On failure the temporary file is removed, and a
/// renamed file whose directory entry could not be made durable is removed
/// again when possible, so an error normally means nothing was written.
pub(super) fn write_durably(dir: &Path, tmp: &str, name: &str, bytes: &[u8]) -> Result<(), WriteFailure> {
    let (tmp_path, path) = (dir.join(tmp), dir.join(name));
    let written = (|| {
        // 0600 from creation on, whatever a stale temporary had.
        let mut file = crate::private_fs::create(&tmp_path)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(error) = written.and_then(|()| fs::rename(&tmp_path, &path)) {
        let _ = fs::remove_file(&tmp_path);
        return Err(WriteFailure::NotWritten(error));
    }
    if let Err(error) = sync_dir(dir) {
        return match fs::remove_file(&path) {
            Ok(()) => Err(WriteFailure::NotWritten(error)),
            Err(_) => Err(WriteFailure::Renamed(error)),
        };
    }
    Ok(())
}

/// Writes a small text file durably (temporary name, fsync, rename, directory fsync).
pub(super) fn write_state(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let tmp = format!("{name}{TMP_SUFFIX}");
    write_durably(dir, &tmp, name, text.as_bytes()).map_err(|failure| match failure {
        WriteFailure::NotWritten(error) | WriteFailure::Renamed(error) => error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tyr_proto::Event;

    #[test]
    fn names_round_trip_and_reject_others() {
        assert_eq!(parse_batch_name(&batch_name(1, 100)), Some((1, 100)));
        assert_eq!(parse_batch_name(&batch_name(u64::MAX, u64::MAX)), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_batch_name("acked"), None);
        assert_eq!(parse_batch_name("00000000000000000005-00000000000000000004.batch"), None);
        assert_eq!(parse_batch_name("00000000000000000000-00000000000000000004.batch"), None);
        assert_eq!(parse_batch_name(&tmp_name(3)), None);
    }

    #[test]
    fn framing_detects_damage() {
        let batch = EventBatch { events: vec![Event { seq: 7, ..Event::default() }], batch_id: 7 };
        let bytes = encode(&batch);
        assert_eq!(decode(&bytes).expect("intact"), batch);
        assert!(matches!(decode(&bytes[..bytes.len() - 1]), Err(FrameError::Truncated { .. })));
        assert!(matches!(decode(&bytes[..10]), Err(FrameError::Truncated { .. })));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert!(matches!(decode(&flipped), Err(FrameError::Checksum)));
        let mut foreign = bytes;
        foreign[0] = b'X';
        assert!(matches!(decode(&foreign), Err(FrameError::Format)));
    }
}
