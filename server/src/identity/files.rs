//! Files of the identity on disk: atomic writes with the right mode from
//! creation, permission checks on secret keys, and a lock so two processes
//! sharing a data directory never make two CAs.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::IdentityError;

/// Mode of secret files (keys): owner read/write only.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of public files (certificates).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of the data directory when the server creates it.
const DATA_DIR_MODE: u32 = 0o700;
/// Name of the lock file held while the identity is loaded or made.
const LOCK_FILE: &str = ".identity.lock";

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { action, path, source }
}

/// Creates the data directory (mode 0700) when it does not exist.
pub fn ensure_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::DirBuilder::new().recursive(true).mode(DATA_DIR_MODE).create(dir).map_err(io_error("creating", dir))
}

/// An exclusive lock on the data directory's identity, released on drop.
#[derive(Debug)]
pub struct DirLock {
    /// The open lock file; closing it releases the lock.
    _file: File,
}

/// Takes the identity lock of `dir`, waiting for another process to finish.
pub fn lock_dir(dir: &Path) -> Result<DirLock, IdentityError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_MODE)
        .open(&path)
        .map_err(io_error("opening", &path))?;
    file.lock().map_err(io_error("locking", &path))?;
    Ok(DirLock { _file: file })
}

/// Whether `path` exists (a dangling entry or an unreadable one is an error).
pub fn exists(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(error) => Err(IdentityError::Io { action: "inspecting", path: path.to_path_buf(), source: error }),
    }
}

/// Reads a text file.
pub fn read_text(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(io_error("reading", path))
}

/// Reads a secret key file, refusing it when group or others can access it.
pub fn read_secret(path: &Path) -> Result<String, IdentityError> {
    let metadata = fs::metadata(path).map_err(io_error("inspecting", path))?;
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::InsecureKeyFile { path: path.to_path_buf(), mode });
    }
    read_text(path)
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, created with `mode` (so a secret is never briefly readable),
/// synced, renamed over `path`, then the directory synced.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let temp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(io_error("creating", &temp))?;
        file.write_all(contents).map_err(io_error("writing", &temp))?;
        file.sync_all().map_err(io_error("syncing", &temp))?;
        fs::rename(&temp, path).map_err(io_error("renaming into", path))
    })();
    if result.is_err() {
        // Best effort: a leftover temporary file only wastes a few bytes.
        let _ = fs::remove_file(&temp);
        return result;
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("syncing", dir))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = std::env::temp_dir().join(format!("tyr-files-{}", uuid::Uuid::new_v4().simple()));
        ensure_dir(&dir).unwrap();
        let path = dir.join("key");
        write_atomic(&path, b"one", SECRET_MODE).unwrap();
        write_atomic(&path, b"two", SECRET_MODE).unwrap();
        assert_eq!(read_secret(&path).unwrap(), "two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tyr-files-{}", uuid::Uuid::new_v4().simple()));
        ensure_dir(&dir).unwrap();
        let path = dir.join("key");
        write_atomic(&path, b"secret", SECRET_MODE).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_secret(&path), Err(IdentityError::InsecureKeyFile { mode: 0o640, .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
