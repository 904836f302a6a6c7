//! Where each filesystem sits in tyrd's mount namespace, kept in the
//! kernel's `tyr_mounts` map so the LSM hooks can name a file by its
//! identity: the path tyrd (and the operator's policy) knows it by, whatever
//! bind mount, private mount namespace or chroot a process reached it
//! through.
//!
//! The kernel walks a file's dentries up to the root of its filesystem and
//! looks the result up by (device, directory of the filesystem a mount
//! shows); the value is that mount's mountpoint here. The first mount of
//! each (device, root) in mountinfo order wins: the one the system made
//! first, not a later bind mount of it; `tyr_canonical_mounts` lists those
//! first mounts of whole filesystems, so that a file reached through a
//! second mount of one is named by its identity too. A watcher thread
//! rewrites both maps whenever the mount table changes (mountinfo polls
//! POLLPRI on change).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use tracing::warn;

use crate::bpf::records::{tyr_mount_key, tyr_mount_value};

/// Bytes of a mount's root the kernel's key holds (`TYR_MOUNT_KEY`).
const KEY_ROOT: usize = 248;
/// Bytes of a mountpoint the kernel's value holds (`TYR_MOUNTPOINT_MAX`, NUL excluded).
const MOUNTPOINT_MAX: usize = 255;
/// Entries the kernel's map holds.
const CAPACITY: usize = 4096;

const _: () = assert!(size_of::<tyr_mount_key>() == 8 + KEY_ROOT);
const _: () = assert!(size_of::<tyr_mount_value>() == 8 + MOUNTPOINT_MAX + 1);

/// One filesystem placement: (device, root within it) -> mountpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The kernel's dev_t: major << 20 | minor.
    pub dev: u32,
    /// The directory of the filesystem the mount shows ("/" for its root).
    pub root: String,
    pub mountpoint: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(digits) = octal
        {
            let code = digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What tyrd's mount table tells the kernel.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountView {
    /// Where each filesystem's files are named (`tyr_mounts`).
    pub placements: Vec<Placement>,
    /// Mount ids of the first mount of each filesystem's root: the mounts
    /// that name files as `placements` does (`tyr_canonical_mounts`). A file
    /// reached through another mount of a whole filesystem (the same one
    /// mounted again elsewhere) is named by its identity.
    pub canonical_ids: Vec<u32>,
}

/// The placements of a mountinfo text, first mount of each (device, root)
/// only, and the mounts that name files as they do.
pub fn parse_mountinfo(text: &str) -> MountView {
    let mut placements: Vec<Placement> = Vec::new();
    let mut canonical_ids = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mountpoint options ... - fstype source
        let mut fields = line.split(' ');
        let (Some(id), Some(_), Some(dev), Some(root), Some(mountpoint)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((major, minor)) = dev.split_once(':') else { continue };
        let (Ok(id), Ok(major), Ok(minor)) = (id.parse::<u32>(), major.parse::<u32>(), minor.parse::<u32>()) else {
            continue;
        };
        let placement =
            Placement { dev: (major << 20) | minor, root: unescape(root), mountpoint: unescape(mountpoint) };
        if !placements.iter().any(|p| p.dev == placement.dev && p.root == placement.root) {
            if placement.root == "/" {
                canonical_ids.push(id);
            }
            placements.push(placement);
        }
    }
    MountView { placements: canonical(placements), canonical_ids }
}

/// The placements that name files: per filesystem, those whose root is not
/// inside another's (a mount of the whole filesystem covers every bind
/// mount of a directory of it), so a file has one identity, the one the
/// system's own mount gives it.
fn canonical(placements: Vec<Placement>) -> Vec<Placement> {
    let within =
        |inner: &str, outer: &str| outer == "/" || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'));
    placements
        .iter()
        .filter(|p| !placements.iter().any(|q| q.dev == p.dev && q.root != p.root && within(&p.root, &q.root)))
        .cloned()
        .collect()
}

/// The kernel's key and value for a placement; None when it does not fit.
fn entry(placement: &Placement) -> Option<(tyr_mount_key, tyr_mount_value)> {
    // The key's root ends in '/' so "/a" does not match "/ab"; a root of
    // "/" is just "/".
    let root = if placement.root == "/" { "/".to_owned() } else { format!("{}/", placement.root) };
    let mountpoint = if placement.mountpoint == "/" { "" } else { placement.mountpoint.as_str() };
    if root.len() > KEY_ROOT || mountpoint.len() > MOUNTPOINT_MAX {
        return None;
    }
    let mut key =
        tyr_mount_key { prefixlen: 32 + 8 * root.len() as u32, dev: placement.dev.to_be(), ..Default::default() };
    key.root[..root.len()].copy_from_slice(root.as_bytes());
    let mut value = tyr_mount_value {
        root_components: placement.root.split('/').filter(|c| !c.is_empty()).count() as u32,
        len: mountpoint.len() as u32,
        ..Default::default()
    };
    for (slot, byte) in value.mountpoint.iter_mut().zip(mountpoint.bytes()) {
        *slot = byte as _;
    }
    Some((key, value))
}

fn key_bytes(key: &tyr_mount_key) -> Vec<u8> {
    // SAFETY: tyr_mount_key is a Plain repr(C) struct of integers and bytes.
    unsafe { plain::as_bytes(key) }.to_vec()
}

fn value_bytes(value: &tyr_mount_value) -> Vec<u8> {
    // SAFETY: as above.
    unsafe { plain::as_bytes(value) }.to_vec()
}

/// What the watcher counts.
#[derive(Debug, Default)]
pub struct MountTableStats {
    /// Rewrites of the kernel map after a mount table change.
    pub refreshes: AtomicU64,
    /// Placements that did not fit the kernel's key or value, or its capacity
    /// (files there have no identity: the name asked for decides alone), and
    /// mounts past the capacity of the canonical list.
    pub skipped: AtomicU64,
    /// Map writes or deletes that failed.
    pub write_failures: AtomicU64,
}

/// A kernel map's contents, kept equal to what is wanted.
struct SyncedMap {
    map: MapHandle,
    installed: HashMap<Vec<u8>, Vec<u8>>,
}

impl SyncedMap {
    /// Makes the map hold `wanted`, counting failed writes and deletes.
    fn sync(&mut self, wanted: HashMap<Vec<u8>, Vec<u8>>, stats: &MountTableStats) {
        // Removed first, so the map never needs room for both tables.
        let gone: Vec<Vec<u8>> = self.installed.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for key in gone {
            match self.map.delete(&key) {
                Ok(()) => {
                    self.installed.remove(&key);
                }
                Err(_) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (key, value) in wanted {
            if self.installed.get(&key) == Some(&value) {
                continue;
            }
            match self.map.update(&key, &value, MapFlags::ANY) {
                Ok(()) => {
                    self.installed.insert(key, value);
                }
                Err(_) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The kernel maps' contents, kept in step with mountinfo.
struct Installer {
    placements: SyncedMap,
    canonical: SyncedMap,
    stats: Arc<MountTableStats>,
}

impl Installer {
    fn install(&mut self, view: &MountView) {
        let mut wanted = HashMap::new();
        let mut skipped = 0;
        for placement in &view.placements {
            match entry(placement) {
                Some((key, value)) if wanted.len() < CAPACITY => {
                    wanted.entry(key_bytes(&key)).or_insert_with(|| value_bytes(&value));
                }
                _ => skipped += 1,
            }
        }
        // Mounts past the capacity are not listed: files there are named
        // by their identity, which costs a walk but names them right.
        let ids: HashMap<Vec<u8>, Vec<u8>> =
            view.canonical_ids.iter().take(CAPACITY).map(|id| (id.to_ne_bytes().to_vec(), vec![1])).collect();
        skipped += view.canonical_ids.len().saturating_sub(CAPACITY);
        self.stats.skipped.store(skipped as u64, Ordering::Relaxed);
        self.placements.sync(wanted, &self.stats);
        self.canonical.sync(ids, &self.stats);
    }
}

/// Keeps `tyr_mounts` current until dropped.
#[derive(Debug)]
pub struct MountTable {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<MountTableStats>,
}

fn read_mountinfo(file: &mut File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

impl MountTable {
    /// Installs the current mount table and watches for changes.
    pub fn start(placements: &MapHandle, canonical: &MapHandle) -> Self {
        let stats = Arc::new(MountTableStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (placements, canonical) = match (MapHandle::try_from(placements), MapHandle::try_from(canonical)) {
            (Ok(placements), Ok(canonical)) => (placements, canonical),
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "no handle on the mount maps: file identities are unavailable");
                return Self { stop, thread: None, stats };
            }
        };
        let synced = |map| SyncedMap { map, installed: HashMap::new() };
        let mut installer =
            Installer { placements: synced(placements), canonical: synced(canonical), stats: Arc::clone(&stats) };
        let mut file = match File::open("/proc/self/mountinfo") {
            Ok(file) => file,
            Err(error) => {
                warn!(%error, "reading the mount table failed: file identities are unavailable");
                return Self { stop, thread: None, stats };
            }
        };
        match read_mountinfo(&mut file) {
            Ok(text) => installer.install(&parse_mountinfo(&text)),
            Err(error) => warn!(%error, "reading the mount table failed"),
        }
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tyrd-mounts".to_owned())
            .spawn(move || watch(file, installer, &stopping))
            .map_err(|error| warn!(%error, "mount table watcher did not start: identities follow the table at start"))
            .ok();
        Self { stop, thread, stats }
    }
}

/// Rewrites the map whenever mountinfo signals a change, until `stop`.
fn watch(mut file: File, mut installer: Installer, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLPRI | libc::POLLERR, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 500) };
        if ready <= 0 || poll.revents & (libc::POLLPRI | libc::POLLERR) == 0 {
            continue;
        }
        match read_mountinfo(&mut file) {
            Ok(text) => {
                installer.install(&parse_mountinfo(&text));
                installer.stats.refreshes.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => warn!(%error, "re-reading the mount table failed"),
        }
    }
}

impl Drop for MountTable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Inode number of tyrd's mount namespace (the kernel compares a file's
/// mount's namespace with it); 0 when unknown, which makes every file's
/// identity be resolved.
pub fn own_mount_namespace() -> u32 {
    std::fs::metadata("/proc/self/ns/mnt").map(|m| m.ino() as u32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw shared:12 - proc proc rw
40 22 254:2 / /home rw shared:20 - ext4 /dev/vdb rw
41 22 0:45 /@data /srv/my\\040data rw shared:21 - btrfs /dev/vdc rw
42 22 254:2 /alice /srv/alice rw shared:20 - ext4 /dev/vdb rw
43 22 254:1 / /mnt/again rw shared:1 - ext4 /dev/vda rw
";

    #[test]
    fn first_mount_of_each_root_wins() {
        let view = parse_mountinfo(MOUNTINFO);
        let placements = view.placements;
        let find = |dev: u32, root: &str| placements.iter().find(|p| p.dev == dev && p.root == root).cloned();
        assert_eq!(find(254 << 20 | 1, "/").map(|p| p.mountpoint), Some("/".to_owned()), "not /mnt/again");
        assert_eq!(find(254 << 20 | 2, "/").map(|p| p.mountpoint), Some("/home".to_owned()));
        assert_eq!(find(254 << 20 | 2, "/alice"), None, "a bind mount of a directory /home shows already");
        assert_eq!(find(45, "/@data").map(|p| p.mountpoint), Some("/srv/my data".to_owned()), "escapes undone");
        assert_eq!(placements.len(), 4);
        // The second mount of /dev/vda's root names its files by identity.
        assert_eq!(view.canonical_ids, vec![22, 23, 40], "not 41 (a subvolume), 42 (a directory) or 43 (again)");
    }

    #[test]
    fn entries_end_roots_with_a_slash_and_count_components() {
        let (key, value) =
            entry(&Placement { dev: 45, root: "/@data".into(), mountpoint: "/srv/data".into() }).expect("fits");
        assert_eq!(key.prefixlen, 32 + 8 * 7);
        assert_eq!(&key.root[..7], b"/@data/");
        assert_eq!(key.dev, 45u32.to_be());
        assert_eq!((value.root_components, value.len), (1, 9));
        let (key, value) = entry(&Placement { dev: 1, root: "/".into(), mountpoint: "/".into() }).expect("fits");
        assert_eq!((key.prefixlen, key.root[0]), (40, b'/'));
        assert_eq!((value.root_components, value.len), (0, 0), "the root mountpoint is the empty prefix");
        let long = "/x".repeat(200);
        assert!(entry(&Placement { dev: 1, root: long.clone(), mountpoint: "/m".into() }).is_none());
        assert!(entry(&Placement { dev: 1, root: "/".into(), mountpoint: long }).is_none());
    }
}
