//! Builds the eBPF object (ebpf/periscope-ebpf) for bpfel-unknown-none and lets
//! `src/probes/mod.rs` embed it with `include_bytes_aligned!`; and generates the Prometheus
//! protobuf exposition types (`proto/io/prometheus/client/metrics.proto`) and pprof's profile
//! types (`proto/perftools/profiles/profile.proto`) with prost, compiled by protox (pure Rust:
//! no protoc needed).
//!
//! bpf-linker links LLVM bitcode, so the compiler that builds the eBPF crate must use the same
//! LLVM major as bpf-linker (22 here). The stable toolchain has LLVM 22 while the current nightly
//! has moved on, so by default the eBPF crate is built with the stable toolchain and
//! `RUSTC_BOOTSTRAP=1` (needed for `-Z build-std=core`). `PERISCOPE_EBPF_TOOLCHAIN` overrides it.
//!
//! aya-build forwards every line of the inner cargo build (its progress included) as a
//! `cargo:warning`, which cargo shows as ~50 `warning: periscope@...` lines on every fresh
//! build: a new user reads them as something wrong. They are held back and shown only when the
//! eBPF build fails, or with `PERISCOPE_BUILD_VERBOSE=1`.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
};

fn main() -> anyhow::Result<()> {
    compile_protos()?;
    println!("cargo:rerun-if-env-changed=PERISCOPE_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=PERISCOPE_BUILD_VERBOSE");
    let toolchain =
        std::env::var("PERISCOPE_EBPF_TOOLCHAIN").unwrap_or_else(|_| "stable".to_string());
    if !toolchain.starts_with("nightly") {
        // SAFETY: the build script is single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let verbose = std::env::var("PERISCOPE_BUILD_VERBOSE").is_ok_and(|v| v == "1");
    let (result, lines) = with_stdout_captured(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/periscope-ebpf");
        let package = aya_build::Package {
            name: "periscope-ebpf",
            root_dir: root,
            ..Default::default()
        };
        aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&toolchain))
    })?;
    for line in &lines {
        match line.strip_prefix("cargo:warning=") {
            // On failure cargo prints the script's stderr: the inner build's own words.
            Some(text) if result.is_err() => eprintln!("{text}"),
            Some(_) if !verbose => {}
            // Every other instruction (rerun-if-changed...) must reach cargo as it was.
            _ => println!("{line}"),
        }
    }
    result.map_err(|e| e.context("building the eBPF programs (output above)"))
}

/// Runs `f` with this process's stdout (where aya-build prints its cargo instructions) sent to
/// a file, and returns `f`'s result with the lines it printed.
fn with_stdout_captured<T>(f: impl FnOnce() -> T) -> anyhow::Result<(T, Vec<String>)> {
    let out_dir = std::env::var("OUT_DIR")?;
    let mut file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(format!("{out_dir}/ebpf-build.log"))?;
    std::io::stdout().flush()?;
    // SAFETY: plain descriptor duplication of fds this process owns; stdout is restored below.
    let saved = unsafe { libc::dup(libc::STDOUT_FILENO) };
    anyhow::ensure!(
        saved >= 0,
        "dup(stdout): {}",
        std::io::Error::last_os_error()
    );
    unsafe { libc::dup2(file.as_raw_fd(), libc::STDOUT_FILENO) };
    let result = f();
    let _ = std::io::stdout().flush();
    unsafe {
        libc::dup2(saved, libc::STDOUT_FILENO);
        libc::close(saved);
    }
    let mut text = String::new();
    file.rewind()?;
    file.read_to_string(&mut text)?;
    Ok((result, text.lines().map(str::to_string).collect()))
}

fn compile_protos() -> anyhow::Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
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
