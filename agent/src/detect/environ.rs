//! Names of marker environment variables of a process, from
//! /proc/PID/environ. Only names the known-agent table asks about are kept;
//! values are never copied out of the read buffer, logged or stored.

use std::path::Path;

use tyr_common::agents::is_marker_env_name;

/// Most bytes of an environment block read.
const ENVIRON_MAX: usize = 256 * 1024;

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

/// Reads the marker names of a live process; empty when it is gone or
/// unreadable (the fingerprint then lacks environment evidence).
pub fn read_marker_names(proc_root: &Path, pid: u32) -> Vec<String> {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(proc_root.join(pid.to_string()).join("environ")) else {
        return Vec::new();
    };
    let mut environ = Vec::with_capacity(8192);
    if file.take(ENVIRON_MAX as u64).read_to_end(&mut environ).is_err() {
        return Vec::new();
    }
    let names = marker_names(&environ);
    // The values are in this buffer: wipe it before it is freed.
    environ.iter_mut().for_each(|b| *b = 0);
    names
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
    fn reads_a_live_process() {
        // This test process has no marker variables unless the runner set
        // some; either way nothing but names comes back.
        let names = read_marker_names(Path::new("/proc"), std::process::id());
        assert!(names.iter().all(|n| !n.contains('=')));
    }
}
