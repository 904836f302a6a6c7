//! The generated eBPF skeletons, one per object in `bpf/`.

#![allow(clippy::all, missing_debug_implementations, missing_docs, unsafe_op_in_unsafe_fn)]
#![allow(clippy::undocumented_unsafe_blocks, clippy::unwrap_used)]

pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.skel.rs"));
}
pub mod file_lsm {
    include!(concat!(env!("OUT_DIR"), "/file_lsm.skel.rs"));
}
pub mod file_syscalls {
    include!(concat!(env!("OUT_DIR"), "/file_syscalls.skel.rs"));
}
pub mod connect {
    include!(concat!(env!("OUT_DIR"), "/connect.skel.rs"));
}
pub mod tls_egress {
    include!(concat!(env!("OUT_DIR"), "/tls_egress.skel.rs"));
}

/// The record layouts of `bpf/include/tyr_records.h`, as generated for the
/// process object (every object carries the same definitions).
pub use process::types as records;

// SAFETY: these are #[repr(C)] structs of integers and fixed-size integer
// arrays generated from bpf/include/tyr_records.h, with no padding-sensitive
// invariants: every bit pattern is a valid value.
unsafe impl plain::Plain for records::tyr_record_header {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_exec_fixed {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_fork_fixed {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_exit_fixed {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_file_fixed {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_connect_fixed {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_tls_fixed {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_config {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_agent_class {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_policy_slot {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_net_candidates {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_path_candidates {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_glob {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_path_key {}
// SAFETY: as above.
unsafe impl plain::Plain for records::tyr_policy_decision {}
