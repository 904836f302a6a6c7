//! Decoding of the raw records the eBPF programs write to the ring.
//!
//! The layouts come from `bpf/include/tyr_records.h` through the generated
//! skeleton types. Records are untrusted bytes as far as this module is
//! concerned: every length is checked against the record before slicing, and
//! malformed input is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bpf::records::{
    tyr_connect_fixed, tyr_decided_on, tyr_exec_fixed, tyr_exit_fixed, tyr_file_fixed, tyr_fork_fixed,
    tyr_policy_decision, tyr_record_header, tyr_tls_fixed,
};

/// Record type numbers (`enum tyr_record_type`).
mod record_type {
    pub const EXEC: u16 = 1;
    pub const FORK: u16 = 2;
    pub const EXIT: u16 = 3;
    pub const FILE: u16 = 4;
    pub const CONNECT: u16 = 5;
    pub const TLS: u16 = 6;
}

/// Header flag: variable data was cut at its bound.
pub const FLAG_TRUNCATED: u32 = 1 << 0;
/// Header flag: no process is known for a TLS record's socket.
pub const FLAG_OWNER_UNKNOWN: u32 = 1 << 1;
/// Header flag: a rename or mount of a directory, decided as everything below it.
pub const FLAG_DIRECTORY: u32 = 1 << 2;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte fixed part")]
    Truncated { len: usize, need: usize },
    #[error("record says it has {claimed} bytes but {len} arrived")]
    SizeMismatch { claimed: usize, len: usize },
    #[error("unknown record type {0}")]
    UnknownType(u16),
    #[error("record data lengths ({data} bytes) exceed the record ({available} bytes)")]
    DataOverrun { data: usize, available: usize },
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("not a recording of this record layout (version {LAYOUT_VERSION})")]
    NotARecording,
}

/// What every record says about the acting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Event kind number (`tyr.v1.EventKind`).
    pub kind: u16,
    /// `bpf_ktime_get_boot_ns()` at the time of the record.
    pub boot_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Discovered-agent index the kernel has for the process (0: none).
    pub agent: u32,
    /// The task's comm, up to its first NUL.
    pub comm: [u8; 16],
}

impl Header {
    /// The comm as text (lossy for non-UTF-8 names).
    pub fn comm(&self) -> std::borrow::Cow<'_, str> {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end])
    }

    /// Whether the kernel cut variable data at its bound.
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TRUNCATED != 0
    }
}

/// The policy decision the kernel took for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelDecision {
    /// Version the verdict was decided under.
    pub policy_version: u64,
    /// 1-based rule index in that version (0: the default).
    pub rule: u32,
    /// tyr.v1.Verdict; 0: no policy decided (none loaded, or a hook that
    /// only observes).
    pub verdict: u32,
}

impl KernelDecision {
    fn from_raw(raw: &tyr_policy_decision) -> Self {
        Self { policy_version: raw.policy_version, rule: raw.rule, verdict: raw.verdict }
    }

    /// Whether the kernel decided at all.
    pub fn decided(&self) -> bool {
        self.verdict != 0
    }
}

/// One decoded record, borrowing its variable-length data from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Exec {
        header: Header,
        /// Absolute path of the new executable.
        exe: &'a [u8],
        /// Arguments, NUL-separated (bounded).
        argv: &'a [u8],
        /// 0, or -errno when policy refused the exec (the image did not change).
        result: i32,
        decision: KernelDecision,
        /// Why the kernel refused without deciding (`enum tyr_failsafe_reason`, 0: it decided).
        failsafe: u8,
    },
    Fork {
        header: Header,
        child_pid: u32,
    },
    Exit {
        header: Header,
        /// Wait status: `(code << 8) | signal`.
        exit_code: u32,
    },
    File {
        header: Header,
        /// fd, or -errno.
        result: i32,
        open_flags: u32,
        /// Resolved absolute path (success) or base directory (failure).
        path: &'a [u8],
        /// Name as passed, after a failed open; the other path of a link,
        /// rename or mount.
        name: &'a [u8],
        /// `enum tyr_file_source`.
        source: u16,
        /// `enum tyr_file_op`.
        op: u8,
        /// The file's path in tyrd's mount namespace, when it may differ
        /// from `path` (empty otherwise).
        identity: &'a [u8],
        /// Whether the verdict was decided on `identity` rather than `path`.
        decided_on_identity: bool,
        /// Why the kernel refused without deciding (`enum tyr_failsafe_reason`, 0: it decided).
        failsafe: u8,
        decision: KernelDecision,
    },
    Connect {
        header: Header,
        remote: IpAddr,
        port: u16,
        sock_type: u16,
        protocol: u16,
        cookie: u64,
        decision: KernelDecision,
    },
    Tls {
        header: Header,
        remote: IpAddr,
        remote_port: u16,
        /// Start of the TCP payload: a TLS record carrying a ClientHello.
        hello: &'a [u8],
        cookie: u64,
    },
}

impl Record<'_> {
    /// The header every record starts with.
    pub fn header(&self) -> &Header {
        match self {
            Record::Exec { header, .. }
            | Record::Fork { header, .. }
            | Record::Exit { header, .. }
            | Record::File { header, .. }
            | Record::Connect { header, .. }
            | Record::Tls { header, .. } => header,
        }
    }
}

/// Copies the fixed part `T` from the front of `bytes`.
fn fixed<T: plain::Plain + Default>(bytes: &[u8]) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    let mut value = T::default();
    plain::copy_from_bytes(&mut value, bytes.get(..need).ok_or(DecodeError::Truncated { len: bytes.len(), need })?)
        .map_err(|_| DecodeError::Truncated { len: bytes.len(), need })?;
    Ok(value)
}

fn header(raw: &tyr_record_header) -> Header {
    Header {
        kind: raw.kind,
        boot_ns: raw.boot_ns,
        pid: raw.pid,
        tid: raw.tid,
        ppid: raw.ppid,
        uid: raw.uid,
        gid: raw.gid,
        flags: raw.flags,
        agent: raw.agent,
        comm: raw.comm.map(|c| c as u8),
    }
}

/// Splits the data after a fixed part of `fixed_len` bytes into two slices
/// of the given lengths.
fn data_parts(bytes: &[u8], fixed_len: usize, first: usize, second: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    let data = &bytes[fixed_len..];
    if first + second > data.len() {
        return Err(DecodeError::DataOverrun { data: first + second, available: data.len() });
    }
    let (a, rest) = data.split_at(first);
    Ok((a, &rest[..second]))
}

fn address(family: u16, bytes: [u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
        other => Err(DecodeError::UnknownFamily(other)),
    }
}

/// Decodes one record as it came off the ring.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let raw: tyr_record_header = fixed(bytes)?;
    let claimed = raw.size as usize;
    if claimed > bytes.len() || claimed < std::mem::size_of::<tyr_record_header>() {
        return Err(DecodeError::SizeMismatch { claimed, len: bytes.len() });
    }
    // The ring may pad a record; only its claimed size is meaningful.
    let bytes = &bytes[..claimed];
    let header = header(&raw);
    match raw.r#type {
        record_type::EXEC => {
            let rec: tyr_exec_fixed = fixed(bytes)?;
            let (exe, argv) = data_parts(bytes, size_of_val(&rec), rec.exe_len as usize, rec.argv_len as usize)?;
            let decision = KernelDecision::from_raw(&rec.decision);
            // A refusal without a decision says why in `reserved`.
            let failsafe = u8::try_from(rec.reserved).unwrap_or(u8::MAX);
            Ok(Record::Exec { header, exe, argv, result: rec.result, decision, failsafe })
        }
        record_type::FORK => {
            let rec: tyr_fork_fixed = fixed(bytes)?;
            Ok(Record::Fork { header, child_pid: rec.child_pid })
        }
        record_type::EXIT => {
            let rec: tyr_exit_fixed = fixed(bytes)?;
            Ok(Record::Exit { header, exit_code: rec.exit_code })
        }
        record_type::FILE => {
            let rec: tyr_file_fixed = fixed(bytes)?;
            let (path, rest) = data_parts(
                bytes,
                size_of_val(&rec),
                usize::from(rec.path_len),
                usize::from(rec.name_len) + usize::from(rec.identity_len),
            )?;
            let (name, identity) = rest.split_at(usize::from(rec.name_len));
            Ok(Record::File {
                header,
                result: rec.result,
                open_flags: rec.open_flags,
                path,
                name,
                source: rec.source,
                op: rec.op,
                identity,
                decided_on_identity: u32::from(rec.decided_on) == tyr_decided_on::TYR_DECIDED_ON_IDENTITY.0,
                failsafe: rec.failsafe,
                decision: KernelDecision::from_raw(&rec.decision),
            })
        }
        record_type::CONNECT => {
            let rec: tyr_connect_fixed = fixed(bytes)?;
            Ok(Record::Connect {
                header,
                remote: address(rec.family, rec.addr)?,
                port: rec.port,
                sock_type: rec.sock_type,
                protocol: rec.protocol,
                cookie: rec.cookie,
                decision: KernelDecision::from_raw(&rec.decision),
            })
        }
        record_type::TLS => {
            let rec: tyr_tls_fixed = fixed(bytes)?;
            let (hello, _) = data_parts(bytes, size_of_val(&rec), usize::from(rec.hello_len), 0)?;
            Ok(Record::Tls {
                header,
                remote: address(rec.family, rec.remote_addr)?,
                remote_port: rec.remote_port,
                hello,
                cookie: rec.cookie,
            })
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

/// Version of the record layouts in `bpf/include/tyr_records.h`; bumped
/// whenever a layout changes, so old recordings are refused, not misread.
pub const LAYOUT_VERSION: u32 = 5;

/// The start of a recording: magic and layout version.
pub fn recording_header() -> [u8; 12] {
    let mut header = *b"TYRRAW\0\0\0\0\0\0";
    header[8..].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    header
}

/// Splits a recording made with `tyrd observe --record-raw` (the header,
/// then each record as a little-endian u32 length and its bytes).
pub fn split_recording(bytes: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let header = recording_header();
    let Some(mut rest) = bytes.strip_prefix(&header[..]) else {
        return Err(DecodeError::NotARecording);
    };
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or(DecodeError::Truncated { len: rest.len(), need: 4 })?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (record, tail) = tail.split_at_checked(len).ok_or(DecodeError::Truncated { len: tail.len(), need: len })?;
        records.push(record);
        rest = tail;
    }
    Ok(records)
}

/// Builders of raw records in the kernel's layout, for tests, fuzzing and
/// benchmarks.
pub mod encode {
    use super::*;

    /// The bytes of a fixed part.
    fn bytes_of<T: plain::Plain>(value: &T) -> Vec<u8> {
        // SAFETY: T is a Plain repr(C) struct; viewing its initialised
        // bytes is sound (the generated structs have no padding holes
        // that could be uninitialised: they are Default-constructed).
        unsafe { plain::as_bytes(value) }.to_vec()
    }

    fn raw_header(r#type: u16, kind: u16, pid: u32, ppid: u32, comm: &str, size: usize) -> tyr_record_header {
        let mut header = tyr_record_header {
            r#type,
            kind,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            boot_ns: 1_000_000_000,
            pid,
            tid: pid,
            ppid,
            uid: 1000,
            gid: 1000,
            ..Default::default()
        };
        for (slot, byte) in header.comm.iter_mut().zip(comm.bytes().take(15)) {
            *slot = byte as i8;
        }
        header
    }

    /// An exec record.
    pub fn exec(pid: u32, ppid: u32, comm: &str, exe: &str, argv: &[&str]) -> Vec<u8> {
        let argv: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let size = std::mem::size_of::<tyr_exec_fixed>() + exe.len() + argv.len();
        let rec = tyr_exec_fixed {
            hdr: raw_header(record_type::EXEC, 3, pid, ppid, comm, size),
            exe_len: exe.len() as u32,
            argv_len: argv.len() as u32,
            ..Default::default()
        };
        let mut out = bytes_of(&rec);
        out.extend_from_slice(exe.as_bytes());
        out.extend_from_slice(&argv);
        out
    }

    /// A successful file open.
    pub fn file_open(pid: u32, comm: &str, path: &str, write: bool) -> Vec<u8> {
        let size = std::mem::size_of::<tyr_file_fixed>() + path.len();
        let rec = tyr_file_fixed {
            hdr: raw_header(record_type::FILE, if write { 2 } else { 1 }, pid, 1, comm, size),
            result: 3,
            open_flags: if write { 0o1101 } else { 0o2000000 },
            path_len: path.len() as u16,
            name_len: 0,
            source: 2,
            ..Default::default()
        };
        let mut out = bytes_of(&rec);
        out.extend_from_slice(path.as_bytes());
        out
    }

    /// A connect.
    pub fn connect(pid: u32, comm: &str, v4: [u8; 4], port: u16) -> Vec<u8> {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&v4);
        let rec = tyr_connect_fixed {
            hdr: raw_header(record_type::CONNECT, 4, pid, 1, comm, std::mem::size_of::<tyr_connect_fixed>()),
            family: AF_INET,
            port,
            sock_type: 1,
            protocol: 6,
            addr,
            cookie: 42,
            ..Default::default()
        };
        bytes_of(&rec)
    }

    /// An exit.
    pub fn exit(pid: u32, comm: &str, exit_code: u32) -> Vec<u8> {
        let rec = tyr_exit_fixed {
            hdr: raw_header(record_type::EXIT, 6, pid, 1, comm, std::mem::size_of::<tyr_exit_fixed>()),
            exit_code,
            reserved: 0,
        };
        bytes_of(&rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_encode_builds() {
        let exec = encode::exec(10, 1, "bash", "/usr/bin/bash", &["bash", "-c", "true"]);
        match decode(&exec).expect("exec") {
            Record::Exec { header, exe, argv, .. } => {
                assert_eq!(header.pid, 10);
                assert_eq!(header.ppid, 1);
                assert_eq!(header.comm(), "bash");
                assert_eq!(exe, b"/usr/bin/bash");
                assert_eq!(argv, b"bash\0-c\0true\0");
            }
            other => panic!("{other:?}"),
        }
        let file = encode::file_open(11, "cat", "/etc/hosts", false);
        assert!(matches!(decode(&file), Ok(Record::File { path: b"/etc/hosts", .. })));
        let connect = encode::connect(12, "curl", [127, 0, 0, 1], 8080);
        assert!(matches!(
            decode(&connect),
            Ok(Record::Connect { port: 8080, remote: IpAddr::V4(ip), .. }) if ip == Ipv4Addr::LOCALHOST
        ));
    }

    #[test]
    fn rejects_records_that_lie_about_their_lengths() {
        let mut exec = encode::exec(10, 1, "bash", "/usr/bin/bash", &["bash"]);
        // exe_len beyond the record.
        let exe_len_at = std::mem::size_of::<tyr_record_header>();
        exec[exe_len_at..exe_len_at + 4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(matches!(decode(&exec), Err(DecodeError::DataOverrun { .. })));

        let file = encode::file_open(11, "cat", "/etc/hosts", false);
        assert!(matches!(decode(&file[..20]), Err(DecodeError::Truncated { .. })));
        assert!(matches!(decode(&file[..file.len() - 1]), Err(DecodeError::SizeMismatch { .. })));

        let mut unknown = encode::exit(1, "x", 0);
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownType(99)));
    }

    #[test]
    fn the_recorded_fixture_decodes_completely() {
        let bytes = include_bytes!("../../../bench/data/raw_records.bin");
        let records = split_recording(bytes).expect("well-formed recording");
        assert!(records.len() > 1000);
        let mut kinds = std::collections::BTreeSet::new();
        for raw in &records {
            kinds.insert(decode(raw).expect("recorded records decode").header().kind);
        }
        assert_eq!(kinds.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7], "every kind recorded");
        assert!(split_recording(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn corrupted_records_never_panic(
            seed in 0usize..4,
            flips in proptest::collection::vec((0usize..256, any::<u8>()), 1..8),
            cut in 0usize..300,
        ) {
            let mut bytes = match seed {
                0 => encode::exec(1, 0, "sh", "/bin/sh", &["sh", "-c", "echo hi"]),
                1 => encode::file_open(2, "cat", "/tmp/some/file", true),
                2 => encode::connect(3, "curl", [10, 0, 0, 1], 443),
                _ => encode::exit(4, "sh", 256),
            };
            for (at, value) in flips {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = value;
                }
            }
            bytes.truncate(cut.max(1));
            let _ = decode(&bytes);
        }
    }
}
