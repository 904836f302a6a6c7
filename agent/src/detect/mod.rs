//! AI-agent detection: which process is which agent.
//!
//! Every new process gets a fingerprint (exe path and its sha256, argv,
//! the names of marker environment variables, later the modules it loads,
//! the files it writes and its first TLS server name), scored against the
//! known-agent table in `tyr-common`. A confident classification registers
//! a discovered agent and is written to the kernel's pid -> agent map, which
//! children inherit on fork. Unconfident matches keep their evidence so
//! operators can see why a process was not classified, and register an
//! `unknown` discovered agent operators can promote. Operators' overrides
//! ([`overrides`]) change the type an agent is governed as; the session
//! learns of discoveries and activity through the [`feed`].

pub mod environ;
pub mod exe_hash;
pub mod feed;
pub mod overrides;
pub mod registry;
pub mod tracker;
