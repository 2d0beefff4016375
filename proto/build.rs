//! Generates the Rust code for the `rebeam.v1` protos with a vendored protoc, so nobody installs one.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free in edition 2021; build scripts are single-threaded here.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "rebeam/v1/common.proto",
        "rebeam/v1/raft.proto",
        "rebeam/v1/node.proto",
        "rebeam/v1/client.proto",
        "rebeam/v1/peer.proto",
        "rebeam/v1/gateway.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["."])?;
    Ok(())
}
