//! Periscope's eBPF object: one module per probe family, each attached independently by user
//! space. Programs aggregate in the kernel into per-CPU histogram maps; nothing is streamed.
#![no_std]
#![no_main]

mod block;
mod exec;
mod http;
mod profile;
mod sched;
mod shared;
mod sock;
mod syscall;
mod tcp;
mod uprobe;
mod usdt;

// Only for the BPF target: host builds (clippy over the workspace) get std's handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
