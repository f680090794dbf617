//! Generates the Rust wire types and tonic stubs from `proto/*.proto`.
//! protox parses the files in-process, so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/runtime/v1/runtime.proto",
        "proto/runtime/v1/appcallback.proto",
        "proto/runtime/v1/lifecycle.proto",
        "proto/mecha/config/v1/component.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
