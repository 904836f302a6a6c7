//! The kernel-VM harness: boots Debian's own kernel (package
//! `linux-image-amd64`, built with CONFIG_BPF_LSM and `bpf` in its LSM list)
//! under QEMU with software emulation, from an initramfs holding busybox,
//! tyrd (with the shared libraries it links), a static test program and
//! whatever files a test adds, runs a shell script as init, and returns the
//! console. Results come back as parseable lines, `TYR-VM <test> k=v ...`
//! and `TYR-VM-EVENT <json>`. Used where the CI host's kernel refuses BPF
//! LSM: file and exec enforcement are proven here.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The static test program run in the VM (bench/vm/probe.c).
pub const PROBE_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vm/probe.c");

fn failed(what: &str, detail: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {detail}"))
}

fn run(command: &mut Command, what: &str) -> io::Result<Vec<u8>> {
    let out = command.output().map_err(|e| failed(what, e))?;
    if !out.status.success() {
        return Err(failed(what, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out.stdout)
}

/// The newest Debian kernel installed in /boot (`vmlinuz-*-amd64`).
pub fn debian_kernel() -> io::Result<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-amd64"))
        })
        .collect();
    kernels.sort();
    kernels.pop().ok_or_else(|| failed("no /boot/vmlinuz-*-amd64", "install linux-image-amd64 (deploy/dev/setup.sh)"))
}

/// Compiles the test program, statically linked, into `dir`.
pub fn compile_probe(dir: &Path) -> io::Result<PathBuf> {
    let out = dir.join("probe");
    run(Command::new("gcc").args(["-static", "-O2", "-Wall", "-o"]).arg(&out).arg(PROBE_SOURCE), "gcc probe.c")?;
    Ok(out)
}

/// The tyrd binary of the running test's or tool's build (same target dir
/// and profile); see [`workspace_binary`].
pub fn tyrd_binary() -> io::Result<PathBuf> {
    workspace_binary("tyr-agent", "tyrd")
}

/// Set to `1` when the workspace binaries were built by the `cargo test` run
/// that runs the tests (the README's test command does): they are used as built.
pub const PREBUILT_BINARIES_ENV: &str = "TYR_PREBUILT_BINARIES";

/// A binary of this workspace, from the running test's or tool's build
/// (same target dir and profile). Under cargo (`cargo test`, `cargo run`)
/// it is rebuilt first: cargo builds only the running package's
/// dependencies, not another package's binaries, and a stale tyrd would
/// carry old eBPF programs into the VM (or a stale server old handlers).
/// Run directly, the binary found is used as it is.
pub fn workspace_binary(package: &str, name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| failed("locating the build", "no parent dir"))?;
    // Tests run from target/<profile>/deps, tools from target/<profile>.
    let profile_dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir };
    // `deploy/test.sh` builds every workspace binary in the same cargo run as
    // the tests (with the tests' feature set); a `cargo build -p` from here
    // would resolve features differently and rebuild every dependency a
    // second time, which doubled the target dir and filled a CI host's disk.
    let prebuilt = std::env::var_os(PREBUILT_BINARIES_ENV).is_some_and(|value| value == "1");
    let cargo = std::env::var_os("CARGO").filter(|_| !prebuilt);
    if let (Some(cargo), Some(target_dir)) = (cargo, profile_dir.parent()) {
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", package, "--bin", name])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        run(&mut build, &format!("cargo build -p {package} --bin {name}"))?;
    }
    let binary = profile_dir.join(name);
    if binary.exists() {
        Ok(binary)
    } else {
        Err(failed(&format!("no {name} binary"), format!("build it: cargo build -p {package}")))
    }
}

/// An initramfs under construction.
#[derive(Debug)]
pub struct Image {
    root: PathBuf,
}

impl Image {
    /// An image rooted in `work/root` with busybox as /bin/busybox.
    pub fn new(work: &Path) -> io::Result<Self> {
        let root = work.join("root");
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        for dir in ["bin", "sbin", "proc", "sys", "dev", "tmp", "work", "usr/bin", "usr/sbin"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .map_err(|e| failed("copying /bin/busybox (install busybox-static)", e))?;
        Ok(Self { root })
    }

    fn target(&self, dest: &str) -> io::Result<PathBuf> {
        let path = self.root.join(dest.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(path)
    }

    /// Adds a file with `contents` and permission `mode`.
    pub fn add_file(&self, dest: &str, contents: &[u8], mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.target(dest)?;
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
    }

    /// Adds an executable without its debug info, and the shared libraries
    /// it links (as `ldd` lists them) at their paths.
    pub fn add_executable(&self, source: &Path, dest: &str) -> io::Result<()> {
        let path = self.target(dest)?;
        run(Command::new("objcopy").arg("--strip-debug").arg(source).arg(&path), "objcopy --strip-debug")?;
        let ldd = Command::new("ldd").arg(source).output().map_err(|e| failed("ldd", e))?;
        for library in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
            let target = self.target(library)?;
            if !target.exists() {
                std::fs::copy(library, &target)?;
            }
        }
        Ok(())
    }

    /// Writes `/init` (the standard mounts, then `body`, then power-off)
    /// and packs the image as a gzip'd newc cpio at `out`.
    pub fn pack(&self, body: &str, out: &Path) -> io::Result<()> {
        let init = format!("#!/bin/busybox sh\n{INIT_PRELUDE}\n{body}\necho TYR-VM-DONE\npoweroff -f\n");
        self.add_file("init", init.as_bytes(), 0o755)?;
        let files = run(Command::new("find").arg(".").current_dir(&self.root), "listing the image")?;
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| failed("cpio (install cpio)", e))?;
        let mut stdin = cpio.stdin.take().ok_or_else(|| failed("cpio", "no stdin"))?;
        let writer = std::thread::spawn(move || stdin.write_all(&files));
        let mut archive = Vec::new();
        cpio.stdout.take().ok_or_else(|| failed("cpio", "no stdout"))?.read_to_end(&mut archive)?;
        writer.join().map_err(|_| failed("cpio", "writer panicked"))??;
        if !cpio.wait()?.success() {
            return Err(failed("cpio", "failed"));
        }
        let mut gzip = Command::new("gzip")
            .arg("-1")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(out)?)
            .spawn()
            .map_err(|e| failed("gzip", e))?;
        gzip.stdin.take().ok_or_else(|| failed("gzip", "no stdin"))?.write_all(&archive)?;
        if !gzip.wait()?.success() {
            return Err(failed("gzip", "failed"));
        }
        Ok(())
    }
}

/// What every init does first: busybox applets, kernel filesystems (BPF
/// LSM needs securityfs; tyrd finds cgroup2 wherever it is mounted).
const INIT_PRELUDE: &str = "/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
echo TYR-VM-BOOTED lsm=$(cat /sys/kernel/security/lsm)";

/// Boots `kernel` with `initrd` and returns the console output; the VM is
/// killed after `timeout`.
pub fn boot(kernel: &Path, initrd: &Path, timeout: Duration) -> io::Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1536", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed("qemu-system-x86_64 (install qemu-system-x86)", e))?;
    let mut stdout = child.stdout.take().ok_or_else(|| failed("qemu", "no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            return Err(failed("the VM did not power off in time", String::from_utf8_lossy(&out)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = reader.join().map_err(|_| failed("qemu", "reader panicked"))?;
    Ok(String::from_utf8_lossy(&out).replace('\r', ""))
}

/// One `TYR-VM <test> k=v ...` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLine {
    pub test: String,
    pub fields: BTreeMap<String, String>,
}

impl VmLine {
    /// A field's value parsed, or None.
    pub fn num(&self, key: &str) -> Option<i64> {
        self.fields.get(key)?.parse().ok()
    }
}

/// The `TYR-VM` result lines of a console.
pub fn result_lines(console: &str) -> Vec<VmLine> {
    console
        .lines()
        .filter_map(|line| line.split_once("TYR-VM ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let test = words.next()?.to_owned();
            let fields = words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            Some(VmLine { test, fields })
        })
        .collect()
}

/// The text after `prefix` on each console line that has it.
pub fn prefixed<'c>(console: &'c str, prefix: &'c str) -> impl Iterator<Item = &'c str> + 'c {
    console.lines().filter_map(move |line| line.split_once(prefix).map(|(_, rest)| rest))
}

/// The result line of `test` for `path` (panics, naming both, when absent).
pub fn find_line<'l>(lines: &'l [VmLine], test: &str, path: &str) -> &'l VmLine {
    lines
        .iter()
        .find(|l| l.test == test && l.fields.get("path").map(String::as_str) == Some(path))
        .unwrap_or_else(|| panic!("no result for {test} {path}"))
}

/// EPERM, as the test program prints errnos.
pub const EPERM: i64 = 1;

/// An image in `work` with this build's tyrd as /bin/tyrd and the static
/// test program as /bin/probe: what every enforcement VM test starts from.
pub fn tyrd_image(work: &Path) -> io::Result<Image> {
    let image = Image::new(work)?;
    image.add_executable(&tyrd_binary()?, "/bin/tyrd")?;
    let probe = std::fs::read(compile_probe(work)?)?;
    image.add_file("/bin/probe", &probe, 0o755)?;
    Ok(image)
}

/// Shell functions the enforcement VM scripts share: `start_tyrd EVENTS
/// LOG [ARGS]` runs `tyrd observe` on /policy.yaml and waits until it
/// observes, `stop_tyrd` stops it and prints its counters.
pub const TYRD_SHELL: &str = r#"start_tyrd() {
  ev=$1; log=$2; shift 2
  tyrd observe --state-dir /var/lib/tyr --kind exec --policy /policy.yaml "$@" > $ev 2> $log &
  TYRD=$!
  i=0; while ! grep -q "tyrd: observing" $log && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
  grep "tyrd:" $log | sed 's/^/TYR-VM-LOG /'
}
stop_tyrd() { kill -INT $TYRD; wait $TYRD; tail -1 $log | sed 's/^/TYR-VM-COUNTERS /'; }"#;
