//! Generates the gRPC code for `proto/quotad/v1` and a descriptor set for
//! server reflection. Uses a vendored `protoc`, so a fresh machine needs none.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .codec_path("crate::api::codec::Codec")
        // Its name borrowed, not copied, for the headers quotad sends.
        .extern_path(".quotad.v1.Header", "crate::api::wire_header::Header")
        .file_descriptor_set_path(out_dir.join("quotad_descriptor.bin"))
        .compile_with_config(
            prost_config,
            &[
                "proto/quotad/v1/ratelimit.proto",
                "proto/quotad/v1/admin.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
