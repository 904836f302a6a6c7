//! AI-agent detection: which process is which agent.
//!
//! Every new process gets a fingerprint (exe path and its sha256, argv,
//! the names of marker environment variables, later the modules it loads,
//! the files it writes and its first TLS server name), scored against the
//! known-agent table in `tyr-common`. A confident classification registers
//! a discovered agent and is written to the kernel's pid -> agent map, which
//! children inherit on fork. Unconfident matches keep their evidence so
//! operators can see why a process was not classified.

pub mod environ;
pub mod exe_hash;
pub mod registry;
pub mod tracker;
