//! Generates the gRPC code with a vendored `protoc`, so a fresh machine needs no system
//! protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build runs `protoc` from this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/tkms/node/v1/node.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
