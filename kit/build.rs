//! Generates the etcd v3 client the cluster store speaks (`proto/etcd/`, the part of etcd's API
//! rtcd uses) with protox, like `rtcd-proto`: no system `protoc` on any machine (stack.md §2).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/etcd/rpc.proto", "proto/etcd/kv.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
