//! Names of marker environment variables of a process, from
//! /proc/PID/environ. Only names the known-agent table asks about are kept;
//! values are never copied out of the read buffer, logged or stored.
//!
//! The block is read into one fixed buffer per thread (no allocation that
//! grows, and no copy the allocator could leave behind), and the bytes read
//! are wiped with `zeroize` — which the optimiser may not remove — before
//! the call returns, on every path.

use std::cell::RefCell;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tyr_common::agents::is_marker_env_name;
use zeroize::Zeroize;

/// Most bytes of an environment block read; names past it are not seen.
const ENVIRON_MAX: usize = 256 * 1024;

/// Environment blocks longer than [`ENVIRON_MAX`] (their tail unread).
static ENVIRON_CUT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The read buffer, allocated once per thread that reads environments
    /// (the ring reader) and zero between calls.
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; ENVIRON_MAX].into_boxed_slice());
}

/// How many environment blocks were longer than the bound.
pub fn environ_cut() -> u64 {
    ENVIRON_CUT.load(Ordering::Relaxed)
}

/// The marker variable names in an environment block (`NAME=value\0...`).
pub fn marker_names(environ: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for entry in environ.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else { continue };
        let Ok(name) = std::str::from_utf8(&entry[..eq]) else { continue };
        if is_marker_env_name(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Wipes the bytes read when dropped, so an early return or a panic
/// cannot leave values in the buffer.
struct Wipe<'a> {
    buffer: &'a mut [u8],
    filled: usize,
}

impl Drop for Wipe<'_> {
    fn drop(&mut self) {
        self.buffer[..self.filled].zeroize();
    }
}

/// Reads `file` into the buffer until it is full or the file ends; returns
/// whether the file had more than the buffer holds.
fn fill(file: &mut std::fs::File, wipe: &mut Wipe<'_>) -> std::io::Result<bool> {
    while wipe.filled < wipe.buffer.len() {
        match file.read(&mut wipe.buffer[wipe.filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => wipe.filled += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    // Full: one more byte says whether the block was cut.
    let mut probe = [0u8; 1];
    let more = file.read(&mut probe).is_ok_and(|n| n > 0);
    probe.zeroize();
    Ok(more)
}

/// Reads the marker names of a live process; empty when it is gone or
/// unreadable (the fingerprint then lacks environment evidence).
pub fn read_marker_names(proc_root: &Path, pid: u32) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(proc_root.join(pid.to_string()).join("environ")) else {
        return Vec::new();
    };
    BUFFER.with(|buffer| {
        // Not re-entered: nothing below calls back into this function.
        let Ok(mut buffer) = buffer.try_borrow_mut() else { return Vec::new() };
        let mut wipe = Wipe { buffer: &mut buffer, filled: 0 };
        match fill(&mut file, &mut wipe) {
            Ok(cut) => {
                if cut {
                    ENVIRON_CUT.fetch_add(1, Ordering::Relaxed);
                }
                marker_names(&wipe.buffer[..wipe.filled])
            }
            Err(_) => Vec::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_marker_names_only() {
        let block =
            b"HOME=/root\0OPENAI_API_KEY=sk-secret\0CURSOR_TRACE_ID=abc\0PATH=/bin\0BROKEN\0OPENAI_API_KEY=dup\0";
        assert_eq!(marker_names(block), ["OPENAI_API_KEY", "CURSOR_TRACE_ID"]);
        assert!(marker_names(b"").is_empty());
    }

    #[test]
    fn reads_a_live_process_and_wipes_the_buffer() {
        let secret = "sk-tyr-environ-test-0123456789abcdef";
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .env_clear()
            .env("OPENAI_API_KEY", secret)
            .env("PATH", "/bin")
            .spawn()
            .expect("spawn sleep");
        // spawn returns once exec closed the child's descriptors, a moment
        // before the kernel has set up the new environment: read again
        // until it is there.
        let mut names = Vec::new();
        for _ in 0..200 {
            names = read_marker_names(Path::new("/proc"), child.id());
            if !names.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(names, ["OPENAI_API_KEY"]);
        BUFFER.with(|buffer| assert!(buffer.borrow().iter().all(|&b| b == 0), "the values were wiped"));
    }

    #[test]
    fn a_long_block_is_cut_and_counted() {
        let dir = std::env::temp_dir().join(format!("tyr-environ-{}", std::process::id()));
        let pid_dir = dir.join("7");
        std::fs::create_dir_all(&pid_dir).expect("dir");
        let mut block = b"CURSOR_TRACE_ID=x\0".to_vec();
        block.resize(ENVIRON_MAX + 10, b'a');
        std::fs::write(pid_dir.join("environ"), &block).expect("environ");
        let before = environ_cut();
        assert_eq!(read_marker_names(&dir, 7), ["CURSOR_TRACE_ID"]);
        assert!(environ_cut() > before, "counted");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
