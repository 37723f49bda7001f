//! Compiles `proto/billing/v1/*.proto` with a pure-Rust compiler (no system `protoc`), generating
//! the message types, the gRPC client and server, and the descriptor set served by reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    // `sqlx::migrate!` embeds the migrations: a new file must rebuild this crate.
    println!("cargo:rerun-if-changed=../migrations");

    let files: Vec<PathBuf> = ["billing.proto", "events.proto", "commands.proto"]
        .iter()
        .map(|name| proto_root.join("billing/v1").join(name))
        .collect();
    let descriptors = protox::compile(&files, [&proto_root])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("billing_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::proto::codec::BillingCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
