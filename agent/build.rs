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
    let clang_args = |arch: Option<&str>| {
        let mut args = vec![
            "-Wall".to_owned(),
            "-Werror".to_owned(),
            // v3: 32-bit subregisters, JMP32 and atomic exchange (5.12+).
            "-mcpu=v3".to_owned(),
            format!("-I{}", bpf.join("include").display()),
            format!("-I{}", bpf.display()),
        ];
        args.extend(arch.map(|arch| format!("-D__TARGET_ARCH_{arch}")));
        args
    };
    let other_arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "x86",
        _ => "arm64",
    };
    for (source, name) in OBJECTS {
        SkeletonBuilder::new()
            .source(bpf.join(source))
            .clang_args(clang_args(None))
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|error| panic!("building bpf/{source}: {error:#}"));
        // Both vendored vmlinux.h headers must keep compiling: build the
        // object for the other architecture too (not embedded).
        SkeletonBuilder::new()
            .source(bpf.join(source))
            .obj(out.join(format!("{name}.{other_arch}.bpf.o")))
            .clang_args(clang_args(Some(other_arch)))
            .build()
            .unwrap_or_else(|error| panic!("building bpf/{source} for {other_arch}: {error:#}"));
    }
}
