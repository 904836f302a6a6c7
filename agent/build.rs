//! Compiles the eBPF programs in `bpf/` and generates their Rust skeletons
//! into OUT_DIR, one per object.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

/// The BPF objects, one per hook family: (source under bpf/, skeleton name).
const OBJECTS: [(&str, &str); 5] = [
    ("process.bpf.c", "process"),
    ("file_lsm.bpf.c", "file_lsm"),
    ("file_syscalls.bpf.c", "file_syscalls"),
    ("connect.bpf.c", "connect"),
    ("tls_egress.bpf.c", "tls_egress"),
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let bpf = manifest.join("../bpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", bpf.display());
    for (source, name) in OBJECTS {
        SkeletonBuilder::new()
            .source(bpf.join(source))
            .clang_args([
                "-Wall".into(),
                "-Werror".into(),
                // v3: 32-bit subregisters, JMP32 and atomic exchange (5.12+).
                "-mcpu=v3".into(),
                format!("-I{}", bpf.join("include").display()),
                format!("-I{}", bpf.display()),
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|error| panic!("building bpf/{source}: {error:#}"));
    }
}
