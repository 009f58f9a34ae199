//! Generates the Prometheus protobuf exposition types and pprof's profile types from the
//! exporter's vendored official `metrics.proto` and `profile.proto`, so that the tests decode what the endpoint serves with the same definitions
//! Prometheus uses (protox compiles it: no protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../exporter/proto");
    println!("cargo:rerun-if-changed={dir}");
    let descriptors = protox::compile(
        [
            "io/prometheus/client/metrics.proto",
            "perftools/profiles/profile.proto",
        ],
        [dir],
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
