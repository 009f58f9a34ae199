//! Builds the eBPF object (ebpf/periscope-ebpf) for bpfel-unknown-none and lets
//! `src/probes/mod.rs` embed it with `include_bytes_aligned!`; and generates the Prometheus
//! protobuf exposition types (`proto/io/prometheus/client/metrics.proto`) with prost, compiled
//! by protox (pure Rust: no protoc needed).
//!
//! bpf-linker links LLVM bitcode, so the compiler that builds the eBPF crate must use the same
//! LLVM major as bpf-linker (22 here). The stable toolchain has LLVM 22 while the current nightly
//! has moved on, so by default the eBPF crate is built with the stable toolchain and
//! `RUSTC_BOOTSTRAP=1` (needed for `-Z build-std=core`). `PERISCOPE_EBPF_TOOLCHAIN` overrides it.
fn main() -> anyhow::Result<()> {
    compile_prometheus_proto()?;
    println!("cargo:rerun-if-env-changed=PERISCOPE_EBPF_TOOLCHAIN");
    let toolchain =
        std::env::var("PERISCOPE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_string());
    if !toolchain.starts_with("nightly") {
        // SAFETY: the build script is single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/periscope-ebpf");
    let package = aya_build::Package {
        name: "periscope-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
}

fn compile_prometheus_proto() -> anyhow::Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    println!("cargo:rerun-if-changed={dir}");
    let descriptors = protox::compile(["io/prometheus/client/metrics.proto"], [dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
