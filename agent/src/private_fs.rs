//! How tyrd puts files on disk: every file it writes (spool batches, raw
//! recordings, identity, policy cache, discovered agents, sequence state)
//! is created 0600 from its first byte, and every directory it creates is
//! 0700. They hold command lines, policies and keys.
//!
//! A directory tyrd did not create is never chmod'ed (it may be shared on
//! purpose, or be someone else's): one open to group or others, or owned by
//! another user, is reported once with a warning and counted
//! ([`exposed_dirs`]), and used as it is.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

/// Mode of the files tyrd writes.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories tyrd creates.
pub const DIR_MODE: u32 = 0o700;
/// Exposed directories remembered (so each is reported once); past it
/// they are still counted, once per check.
const REPORTED_MAX: usize = 64;

/// Exposed directories found so far (group/other access, or another owner).
static EXPOSED_DIRS: AtomicU64 = AtomicU64::new(0);
/// The exposed directories already reported.
static REPORTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// How many directories tyrd writes into were found open to other users.
pub fn exposed_dirs() -> u64 {
    EXPOSED_DIRS.load(Ordering::Relaxed)
}

/// Creates `dir` and its missing parents with mode 0700; an existing
/// directory is checked and left as it is (see the module doc).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            check_existing(dir, &meta);
            Ok(())
        }
        Ok(_) => Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory")),
        // The mode is applied at creation (umask can only narrow it): no chmod.
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
        }
        Err(error) => Err(error),
    }
}

/// Why an existing directory lets others in, if it does.
fn exposure(meta: &fs::Metadata) -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        Some("owned by another user")
    } else if meta.mode() & 0o077 != 0 {
        Some("open to group or others")
    } else {
        None
    }
}

fn check_existing(dir: &Path, meta: &fs::Metadata) {
    let Some(reason) = exposure(meta) else { return };
    let mut reported = REPORTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if reported.iter().any(|d| d == dir) {
        return;
    }
    EXPOSED_DIRS.fetch_add(1, Ordering::Relaxed);
    if reported.len() < REPORTED_MAX {
        reported.push(dir.to_path_buf());
    }
    warn!(
        dir = %dir.display(),
        mode = format_args!("{:o}", meta.mode() & 0o7777),
        reason,
        "a directory tyrd writes into is not private; left unchanged (tyrd only restricts directories it creates)"
    );
}

/// Creates `path` anew, mode 0600, for writing: a file left at that name
/// (a stale temporary, an old recording) is removed first, so the mode is
/// never inherited from it, and a symlink there is replaced, not followed.
pub fn create(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path)
}

/// The temporary name [`write_atomic`] writes `path` under.
pub fn temporary_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably, mode 0600: a temporary
/// file is written and fsynced, renamed over `path`, and the directory
/// fsynced. A reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary_for(path);
    let written = (|| {
        let mut file = create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tyr-private-{name}-{}", uuid::Uuid::new_v4().simple()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o7777
    }

    #[test]
    fn created_directories_and_files_are_private() {
        let root = scratch("create");
        let dir = root.join("a/b");
        ensure_dir(&dir).expect("create");
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("state");
        write_atomic(&file, b"one").expect("write");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(&file).expect("read"), b"one");
        write_atomic(&file, b"two").expect("rewrite");
        assert_eq!(fs::read(&file).expect("read"), b"two");
        assert!(!temporary_for(&file).exists(), "no temporary left");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_stale_file_does_not_lend_its_mode() {
        let root = scratch("stale");
        ensure_dir(&root).expect("create");
        let path = root.join("recording");
        fs::write(&path, b"old").expect("old");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
        drop(create(&path).expect("create"));
        assert_eq!(mode(&path), 0o600);
        assert!(fs::read(&path).expect("read").is_empty());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn an_existing_open_directory_is_reported_not_changed() {
        let root = scratch("exposed");
        fs::create_dir_all(&root).expect("create");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        let before = exposed_dirs();
        ensure_dir(&root).expect("existing");
        ensure_dir(&root).expect("again");
        assert_eq!(mode(&root), 0o755, "never chmod a directory tyrd did not create");
        assert!(exposed_dirs() > before, "counted");
        let reported = REPORTED.lock().expect("lock");
        assert_eq!(reported.iter().filter(|d| **d == root).count(), 1, "reported once");
        drop(reported);
        let private = scratch("private");
        ensure_dir(&private).expect("create");
        assert!(exposure(&fs::metadata(&private).expect("meta")).is_none());
        let file = private.join("f");
        fs::write(&file, b"x").expect("file");
        assert!(ensure_dir(&file).is_err(), "a file is not a directory");
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_dir_all(&private);
    }
}
