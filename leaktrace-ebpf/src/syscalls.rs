//! `syscalls:sys_enter_*`/`sys_exit_*` tracepoints: one program each for
//! entry and exit, attached to the calls the families follow only.
//!
//! Not the raw `sys_enter`/`sys_exit`: those run a program on every syscall
//! of every process on the node (+48 % on a `dd bs=1`, untraced); a call
//! nobody follows costs a bit test here (docs/performance.md). The families
//! need the user registers (arguments at entry, the user stack pointer at
//! exit): `bpf_task_pt_regs` hands them. Anything not from a target process
//! leaves after one map lookup.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    macros::tracepoint,
    programs::TracePointContext,
};
use leaktrace_common::{
    Counter, FAMILY_FDS, FAMILY_FORKS, FAMILY_MMAP, FAMILY_THREADS, SyscallArgs, syscalls as sys,
};

use crate::{
    fd, fork,
    maps::{SYSCALLS, TARGETS, count, current_tgid_tid, take},
    mmap, thread, unwind,
};

/// Which families to follow ([`FAMILY_MMAP`], [`FAMILY_FDS`], [`FAMILY_FORKS`]):
/// set by userspace at load (leaktrace-common's `globals::FAMILIES` names it).
#[unsafe(no_mangle)]
static FAMILIES: u32 = 0;

#[inline(always)]
fn families() -> u32 {
    // SAFETY: a global userspace writes before load; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&FAMILIES) }
}

/// Where the syscall tracepoints' records hold the call's number (an `int`;
/// the events' `format` files), and the exit's return value (a `long`).
const NR_AT: usize = 8;
const RET_AT: usize = 16;

#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> i32 {
    let (tgid, tid) = current_tgid_tid();
    if TARGETS.get_ptr(tgid).is_none() {
        return 0;
    }
    let Some(nr) = call_nr(&ctx) else {
        return 0;
    };
    let families = families();
    let threads = families & FAMILY_THREADS != 0;
    // A thread ending: `exit` does not return. (The first thread's is the
    // process's end, told by other means.)
    if threads && nr == sys::EXIT && tid != tgid {
        thread::ended(tgid, tid);
        return 0;
    }
    let is_mmap = families & FAMILY_MMAP != 0 && mmap::wants(nr);
    let is_fd = families & FAMILY_FDS != 0 && fd::wants(nr);
    let is_fork = (families & FAMILY_FORKS != 0 || threads) && fork::wants(nr);
    // An exec replaces the mappings the unwinder knows, whatever is followed.
    let is_exec = fd::is_exec(nr);
    if !is_mmap && !is_fd && !is_fork && !is_exec {
        return 0;
    }
    let Some(regs) = user_regs() else {
        return 0;
    };
    let args = SyscallArgs {
        nr,
        _pad: 0,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
    };
    let keep = if is_mmap {
        mmap::keep(nr, &regs, tid)
    } else if is_fork {
        // Kept for what is followed: threads, or processes.
        match fork::makes_thread(&args) {
            Some(true) => threads,
            Some(false) => families & FAMILY_FORKS != 0,
            None => false,
        }
    } else {
        is_exec || fd::keep(&args)
    };
    if !keep {
        return 0;
    }
    if SYSCALLS.insert(tid, args, 0).is_err() {
        count(Counter::SyscallsFull);
    }
    0
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> i32 {
    let (tgid, tid) = current_tgid_tid();
    if TARGETS.get_ptr(tgid).is_none() {
        return 0;
    }
    // SAFETY: the record of a syscall exit tracepoint has its `long ret` there.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET_AT) }) else {
        return 0;
    };
    let Some(args) = take(&SYSCALLS, tid) else {
        // A new process's first return (from fork, with 0) has no entry.
        if ret == 0 && tid == tgid && families() & FAMILY_FORKS != 0 {
            fork::first_return(tgid);
        }
        return 0;
    };
    // -4095..-1 are errors; failed calls change nothing.
    if (-4095..0).contains(&ret) {
        return 0;
    }
    let Some(regs) = user_regs() else {
        return 0;
    };
    if fd::is_exec(args.nr) {
        unwind::forget(tgid);
        fork::exec(tgid);
    } else if mmap::wants(args.nr) {
        mmap::exit(tgid, &args, ret as u64, &regs);
    } else if fork::wants(args.nr) {
        // (Arguments unreadable now, though they were at entry: neither.)
        match fork::makes_thread(&args) {
            Some(true) => thread::made(tgid, ret as u32, &regs),
            Some(false) => fork::exit(tgid, ret as u32),
            None => {}
        }
    } else {
        fd::exit(tgid, &args, ret as u64, &regs);
    }
    0
}

/// The call's number: negative ones (no call) are none followed.
#[inline(always)]
fn call_nr(ctx: &TracePointContext) -> Option<u32> {
    // SAFETY: every syscall tracepoint's record has its `int __syscall_nr` there.
    let nr = unsafe { ctx.read_at::<i32>(NR_AT) }.ok()?;
    u32::try_from(nr).ok()
}

/// The calling thread's saved user registers.
#[inline(always)]
fn user_regs() -> Option<pt_regs> {
    // SAFETY: the current task is valid for the whole program; its pt_regs
    // are the user registers saved at syscall entry.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const pt_regs;
    // SAFETY: a kernel pointer, read through the helper that checks it.
    unsafe { bpf_probe_read_kernel(regs) }.ok()
}
