//! Compiles `proto/vfs.proto` with protox (no `protoc` needed) and generates
//! the prost messages and tonic client/server from the descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/vfs.proto");
    let fds = protox::compile(["vfs.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
