//! Facts about the running kernel that decide which eBPF hooks can work:
//! kernel release, BTF for CO-RE, where cgroup2 is mounted, and whether BPF
//! LSM is in the active LSM list.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where the kernel exposes its own BTF, needed for CO-RE relocations.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
/// The active LSM list (needs securityfs mounted).
const LSM_LIST: &str = "/sys/kernel/security/lsm";
/// The mount table of this process's namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// What the kernel offers, read from procfs and sysfs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel_release: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// The kernel ships BTF, so CO-RE programs can load.
    pub btf_vmlinux: bool,
    /// Mount point of the cgroup2 hierarchy that cgroup hooks attach to.
    pub cgroup2_mount: Option<PathBuf>,
    /// Mount point of bpffs, if any.
    pub bpffs_mount: Option<PathBuf>,
    /// Active LSMs, in order; `None` when securityfs is not mounted.
    pub active_lsms: Option<Vec<String>>,
    /// `bpf` is among the active LSMs.
    pub bpf_lsm_listed: bool,
}

impl HostFacts {
    /// Reads the facts of the running kernel.
    pub fn read() -> Self {
        let mounts = fs::read_to_string(MOUNTINFO).unwrap_or_default();
        let active_lsms = fs::read_to_string(LSM_LIST).ok().map(|list| parse_lsm_list(&list));
        Self {
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            arch: std::env::consts::ARCH.to_owned(),
            btf_vmlinux: Path::new(VMLINUX_BTF).exists(),
            cgroup2_mount: mount_point(&mounts, "cgroup2"),
            bpffs_mount: mount_point(&mounts, "bpf"),
            bpf_lsm_listed: active_lsms.as_ref().is_some_and(|lsms| lsms.iter().any(|lsm| lsm == "bpf")),
            active_lsms,
        }
    }
}

/// Splits `/sys/kernel/security/lsm` ("lockdown,capability,bpf").
fn parse_lsm_list(list: &str) -> Vec<String> {
    list.trim().split(',').filter(|lsm| !lsm.is_empty()).map(str::to_owned).collect()
}

/// The first mount point of a filesystem type in `/proc/self/mountinfo`.
///
/// A mountinfo line is `id parent major:minor root mountpoint options
/// [optional fields...] - fstype source superoptions`.
fn mount_point(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let found_type = after.split_whitespace().next()?;
        if found_type != fstype {
            return None;
        }
        let mount = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mount_path(mount)))
    })
}

/// Mount paths escape space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystems tyrd needs that a minimal system may not have mounted:
/// (filesystem type, mount point, why).
const KERNEL_FILESYSTEMS: [(&str, &str, &str); 2] = [
    ("tracefs", "/sys/kernel/tracing", "tracepoint attach"),
    ("securityfs", "/sys/kernel/security", "the active LSM list"),
];

/// Mounts tracefs and securityfs where they are missing. Failures are
/// logged, not fatal: what they break shows up in the capability report.
pub fn ensure_kernel_filesystems() {
    let mounts = fs::read_to_string(MOUNTINFO).unwrap_or_default();
    for (fstype, target, why) in KERNEL_FILESYSTEMS {
        if mount_point(&mounts, fstype).is_some() || !Path::new(target).is_dir() {
            continue;
        }
        if let Err(error) = mount(fstype, target) {
            eprintln!("tyrd: cannot mount {fstype} on {target} (needed for {why}): {error}");
        }
    }
}

fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let source = std::ffi::CString::new(fstype)?;
    let target = std::ffi::CString::new(target)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration
    // of the call; no data argument is passed.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
35 25 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 35 0:35 / /sys/fs/cgroup/cpu rw shared:14 - cgroup cgroup rw,cpu
41 25 0:36 / /sys/fs/my\\040bpf rw - bpf bpf rw,mode=700
";

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        assert_eq!(mount_point(HYBRID, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(mount_point(HYBRID, "bpf"), Some(PathBuf::from("/sys/fs/my bpf")));
        assert_eq!(mount_point(HYBRID, "tracefs"), None);
        assert_eq!(mount_point("garbage\n\n - \n", "cgroup2"), None);
    }

    #[test]
    fn parses_the_lsm_list() {
        assert_eq!(
            parse_lsm_list("lockdown,capability,landlock,yama,apparmor,bpf\n"),
            ["lockdown", "capability", "landlock", "yama", "apparmor", "bpf"]
        );
        assert!(parse_lsm_list("").is_empty());
    }

    #[test]
    fn reads_this_host() {
        let facts = HostFacts::read();
        assert!(!facts.kernel_release.is_empty());
        assert_eq!(facts.arch, std::env::consts::ARCH);
    }
}
