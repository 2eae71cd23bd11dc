//! Compiles `proto/repo.proto` with protox (no `protoc` needed) and
//! generates the prost messages and tonic client/server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/repo.proto");
    let fds = protox::compile(["repo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
