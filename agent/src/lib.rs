//! tyrd: Tyr's host daemon. It attaches CO-RE eBPF programs, recognises AI
//! agents, enforces policy in the kernel and streams events to tyr-server.

pub mod bpf;
pub mod capture;
pub mod capture_loop;
pub mod client;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod enforce;
pub mod host;
pub mod kinds;
pub mod metrics;
pub mod observe;
pub mod pipeline;
pub mod private_fs;
pub mod redact;
pub mod sink;
pub mod spool;
