//! Compiles the .proto files with protox (pure Rust): no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["statenode/v1/statenode.proto", "dapr/proto/runtime/v1/dapr.proto", "google/rpc/status.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure().build_server(true).build_client(true).bytes(".").compile_fds(fds)?;
    Ok(())
}
