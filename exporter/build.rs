//! Builds the eBPF object (ebpf/periscope-ebpf) for bpfel-unknown-none and lets
//! `src/probes/mod.rs` embed it with `include_bytes_aligned!`.
//!
//! bpf-linker links LLVM bitcode, so the compiler that builds the eBPF crate must use the same
//! LLVM major as bpf-linker (22 here). The stable toolchain has LLVM 22 while the current nightly
//! has moved on, so by default the eBPF crate is built with the stable toolchain and
//! `RUSTC_BOOTSTRAP=1` (needed for `-Z build-std=core`). `PERISCOPE_EBPF_TOOLCHAIN` overrides it.
fn main() -> anyhow::Result<()> {
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
