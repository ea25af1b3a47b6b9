//! Generates the `rtcd.v1` client and server at build time with protox (pure Rust): no system
//! `protoc` is needed on any machine or in CI (stack.md §2).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/rtcd/v1/signaling.proto", "proto/rtcd/v1/rooms.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller per-RPC buffers than tonic's default: see `src/codec.rs`.
        .codec_path("crate::codec::SignalingCodec")
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
