// Pure-Rust codegen: protox parses the .proto files, so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/hsca/v1/errors.proto",
        "proto/hsca/v1/ca.proto",
        "proto/hsca/v1/registry.proto",
        "proto/hsca/v1/admin.proto",
        "proto/hsca/v1/fleet.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Server reflection (grpcurl) serves this file descriptor set.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hsca_v1_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
