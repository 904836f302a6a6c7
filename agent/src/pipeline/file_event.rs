//! What a file record says beyond its path: which operation it was (open,
//! link, rename, mount, user namespace), which name of the file the kernel
//! decided on (the path asked for, or the file's identity in tyrd's mount
//! namespace), and why the kernel refused without deciding.
//!
//! The event's resource is the name the verdict was decided on, so the
//! server re-evaluates what the kernel evaluated; the other name is kept in
//! metadata (`requested_path` or `identity`).

use std::collections::BTreeMap;

use crate::bpf::records::{tyr_failsafe_reason, tyr_file_op};

/// Metadata key: the file's path in tyrd's mount namespace, when the
/// process asked for it under another name.
pub const IDENTITY_KEY: &str = "identity";
/// Metadata key: the path the process asked for, when the verdict was
/// decided on the file's identity (the event's resource).
pub const REQUESTED_PATH_KEY: &str = "requested_path";
/// Metadata key: the operation of a non-open file record.
pub const OPERATION_KEY: &str = "operation";
/// Metadata key: why the kernel refused without deciding.
pub const FAILSAFE_KEY: &str = "failsafe";
/// The `rule` of a refusal the kernel made without deciding (fail closed).
pub const FAILSAFE_RULE: &str = "failsafe";
/// `failsafe` of a governed agent's overlay or FUSE mount, which tyrd
/// refuses (such a filesystem serves files under names of its own).
pub const STACKED_MOUNT: &str = "stacked_mount";
/// The `rule` of that refusal.
pub const STACKED_MOUNT_RULE: &str = "agent-stacked-mount";
/// The `rule` of a governed agent refused a user namespace (`--agent-userns deny`).
pub const USERNS_RULE: &str = "agent-userns-deny";
/// `operation` of a governed agent reaching into another process
/// (ptrace, pidfd_getfd, process_vm_writev, /proc/PID/mem).
pub const PTRACE_OPERATION: &str = "ptrace";
/// The `rule` of its refusal: the other process is governed less strictly.
pub const PTRACE_RULE: &str = "agent-ptrace";
/// Metadata key, value `subtree`: a directory decided as everything below
/// it (renames and mounts of directories).
pub const SCOPE_KEY: &str = "scope";

/// The fields of a file record this module reads.
#[derive(Debug)]
pub struct FileRecord<'a> {
    pub op: u8,
    /// The path asked for (a failed open: already joined with its name).
    pub path: String,
    pub name: &'a [u8],
    pub identity: &'a [u8],
    pub decided_on_identity: bool,
    pub failsafe: u8,
    /// The directory the operation moved or mounted over (a subtree decision).
    pub directory: bool,
}

fn op_name(op: u8) -> Option<(&'static str, &'static str)> {
    let op = u32::from(op);
    [
        (tyr_file_op::TYR_FILE_OP_LINK, "link", "link_name"),
        (tyr_file_op::TYR_FILE_OP_RENAME, "rename", "new_path"),
        (tyr_file_op::TYR_FILE_OP_MOUNT, "mount", "mount_source"),
        (tyr_file_op::TYR_FILE_OP_USERNS, "userns_create", ""),
        (tyr_file_op::TYR_FILE_OP_PTRACE, PTRACE_OPERATION, ""),
        (tyr_file_op::TYR_FILE_OP_CONNECT, "connect", ""),
        (tyr_file_op::TYR_FILE_OP_SYMLINK, "symlink", "target"),
        (tyr_file_op::TYR_FILE_OP_MKNOD, "mknod", ""),
        (tyr_file_op::TYR_FILE_OP_UNLINK, "unlink", ""),
        (tyr_file_op::TYR_FILE_OP_TRUNCATE, "truncate", ""),
    ]
    .into_iter()
    .find(|(code, ..)| code.0 == op)
    .map(|(_, name, other)| (name, other))
}

/// The reason a kernel refusal was not a decision, as metadata shows it.
pub fn failsafe_text(reason: u8) -> Option<&'static str> {
    match u32::from(reason) {
        0 => None,
        r if r == tyr_failsafe_reason::TYR_FAILSAFE_NO_SCRATCH.0 => Some("no_scratch"),
        r if r == tyr_failsafe_reason::TYR_FAILSAFE_STACKED_MOUNT.0 => Some(STACKED_MOUNT),
        r if r == tyr_failsafe_reason::TYR_FAILSAFE_INCOMPLETE.0 => Some("incomplete"),
        _ => Some("unknown"),
    }
}

/// The event's resource for a file record, with its metadata added.
pub fn resource(record: FileRecord<'_>, metadata: &mut BTreeMap<String, String>) -> String {
    let identity = String::from_utf8_lossy(record.identity);
    let mut resource = record.path;
    if !identity.is_empty() && identity != resource {
        if record.decided_on_identity {
            let asked = std::mem::replace(&mut resource, identity.into_owned());
            metadata.insert(REQUESTED_PATH_KEY.to_owned(), asked);
        } else {
            metadata.insert(IDENTITY_KEY.to_owned(), identity.into_owned());
        }
    }
    if let Some((operation, other)) = op_name(record.op) {
        metadata.insert(OPERATION_KEY.to_owned(), operation.to_owned());
        if !other.is_empty() && !record.name.is_empty() {
            metadata.insert(other.to_owned(), String::from_utf8_lossy(record.name).into_owned());
        }
        if record.directory || u32::from(record.op) == tyr_file_op::TYR_FILE_OP_MOUNT.0 {
            metadata.insert(SCOPE_KEY.to_owned(), "subtree".to_owned());
        }
    }
    if let Some(reason) = failsafe_text(record.failsafe) {
        metadata.insert(FAILSAFE_KEY.to_owned(), reason.to_owned());
    }
    resource
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &str, identity: &'a [u8], on_identity: bool) -> FileRecord<'a> {
        FileRecord {
            op: 0,
            path: path.to_owned(),
            name: b"",
            identity,
            decided_on_identity: on_identity,
            failsafe: 0,
            directory: false,
        }
    }

    #[test]
    fn the_deciding_name_is_the_resource() {
        let mut metadata = BTreeMap::new();
        let r = resource(record("/tmp/x/id", b"/home/u/.ssh/id", true), &mut metadata);
        assert_eq!(r, "/home/u/.ssh/id");
        assert_eq!(metadata[REQUESTED_PATH_KEY], "/tmp/x/id");
        assert!(!metadata.contains_key(IDENTITY_KEY));

        let mut metadata = BTreeMap::new();
        let r = resource(record("/tmp/x/id", b"/home/u/.ssh/id", false), &mut metadata);
        assert_eq!(r, "/tmp/x/id");
        assert_eq!(metadata[IDENTITY_KEY], "/home/u/.ssh/id");

        let mut metadata = BTreeMap::new();
        assert_eq!(resource(record("/a", b"/a", true), &mut metadata), "/a");
        assert!(metadata.is_empty(), "an identity equal to the path is not repeated");
    }

    #[test]
    fn operations_and_failsafe_are_named() {
        let mut metadata = BTreeMap::new();
        let rename = FileRecord {
            op: tyr_file_op::TYR_FILE_OP_RENAME.0 as u8,
            name: b"/tmp/out",
            directory: true,
            failsafe: tyr_failsafe_reason::TYR_FAILSAFE_NO_SCRATCH.0 as u8,
            ..record("/home/u/.ssh", b"", false)
        };
        assert_eq!(resource(rename, &mut metadata), "/home/u/.ssh");
        assert_eq!(metadata[OPERATION_KEY], "rename");
        assert_eq!(metadata["new_path"], "/tmp/out");
        assert_eq!(metadata[SCOPE_KEY], "subtree");
        assert_eq!(metadata[FAILSAFE_KEY], "no_scratch");
    }
}
