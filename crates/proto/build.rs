//! Compiles `proto/portwatch/v1/*.proto` in Rust (protox), so a fresh machine
//! needs no `protoc`. Also writes the encoded descriptor set to `OUT_DIR` for
//! gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files =
        ["common.proto", "agent.proto", "admin.proto"].map(|f| root.join("portwatch/v1").join(f));
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("portwatch_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        // `AgentService.Connect` would clash with the generated `connect` constructor;
        // clients are built with `new(channel)` on a channel we configure (TLS) anyway.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
