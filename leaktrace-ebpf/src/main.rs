//! leaktrace's eBPF programs: one module per probe family.
//!
//! - [`alloc`]: uprobes on the allocator (malloc, free, realloc, …), accounted in the kernel.
//! - [`mmap`]: anonymous mmap/munmap/mremap, sent to userspace (which handles partial unmaps).
//! - [`fd`]: descriptors created and closed (files, sockets, pipes, …), sent to userspace.
//! - [`go`]: the Go runtime's sampled heap and goroutines (entry uprobes only).
//! - [`fork`]: processes forked by targets become targets, in the kernel.
//! - [`exit`]: a target calling `_exit` stops until its heap is scanned.
//! - [`thread`]: threads made and ended, sent to userspace.
//! - [`unwind`]: user stacks, unwound from the modules' `.eh_frame` tables.
//! - [`syscalls`]: the raw `sys_enter`/`sys_exit` tracepoints that dispatch to the syscall families.
#![cfg_attr(target_arch = "bpf", no_std, no_main, feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code))]

mod alloc;
mod exit;
mod fd;
mod fork;
mod go;
mod maps;
mod mmap;
mod syscalls;
mod thread;
mod unwind;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// `cargo check --workspace` also builds this crate for the host, where it does nothing.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
