//! Generates the Rust protocol types and tonic stubs at build time.
//!
//! protox parses the `.proto` files in pure Rust, so a fresh machine needs no
//! `protoc` binary.

fn main() {
    let protos = ["agent.proto", "events.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."]).expect("proto files must parse");
    tonic_prost_build::configure()
        // Ordered maps: metadata prints and stores in a stable order, and
        // inserting a handful of short keys is cheaper than hashing them.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .expect("tonic code generation must succeed");
}
