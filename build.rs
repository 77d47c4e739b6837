//! Compiles the minimal Envoy ext_authz protos with protox (pure Rust, no system `protoc`) and
//! writes the descriptor set next to the generated code for gRPC reflection.
use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/envoy/service/auth/v3/external_auth.proto",
        "proto/envoy/service/auth/v3/attribute_context.proto",
        "proto/envoy/config/core/v3/base.proto",
        "proto/envoy/type/v3/http_status.proto",
        "proto/google/rpc/status.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("ext_authz_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_well_known_types(false)
        .compile_fds(fds)?;
    Ok(())
}
