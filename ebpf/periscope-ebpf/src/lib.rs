//! Empty library target: it lets the exporter's build script depend on this crate so that cargo
//! rebuilds the eBPF object whenever these sources change.
#![no_std]
