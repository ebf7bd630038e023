//! Following targets into the processes they fork and the images they exec.
//!
//! A successful fork, vfork, or clone/clone3 without CLONE_THREAD makes the
//! child a target before it first runs (`sched_process_fork` fires in the
//! parent before the child is woken), so its first syscalls are seen. The
//! allocator probes, though, are attached by userspace, per process: a child
//! running before then would allocate unseen. So, while userspace asks for it
//! (`PAUSE`), a new process stops itself at its first return to user space, and
//! a new image at exec's return, before running an instruction: it sends
//! itself SIGSTOP and tells userspace, which attaches and sends SIGCONT. A new
//! image stops again at its entry point (`image_entry`), once its loader has
//! mapped the libraries, for their unwind tables.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_send_signal},
    macros::{raw_tracepoint, uprobe},
    programs::{ProbeContext, RawTracePointContext},
};
use leaktrace_common::{Counter, EventKind, ProcEvent, SyscallArgs, pause, syscalls as sys};

use crate::{
    maps::{
        EVENTS, FORKED, LIVE_BLOCKS, SYSCALLS, TARGETS, count, current_tgid_tid, pausing, wakeup,
    },
    unwind,
};

const CLONE_THREAD: u64 = 0x10000;
pub const SIGSTOP: u32 = 19;
/// What a full hash map answers an insert with.
const E2BIG: i32 = -7;

/// `offsetof(struct task_struct, tgid)` in the running kernel, from its BTF:
/// set by userspace at load, 0 when unknown (`sched_process_fork` is then not
/// attached and the parent's return adopts the child). leaktrace-common's
/// `globals::TASK_TGID` names it.
#[unsafe(no_mangle)]
static TASK_TGID: u32 = 0;

#[inline(always)]
pub fn wants(nr: u32) -> bool {
    matches!(nr, sys::CLONE | sys::FORK | sys::VFORK | sys::CLONE3)
}

/// Whether a clone-family call makes a thread (else a process); `None` when
/// clone3's arguments cannot be read.
#[inline(always)]
pub fn makes_thread(call: &SyscallArgs) -> Option<bool> {
    let flags = match call.nr {
        sys::CLONE => call.args[0],
        // clone3's flags are the first field of its struct clone_args.
        // SAFETY: reads the target's memory; a fault returns Err.
        sys::CLONE3 => unsafe { bpf_probe_read_user(call.args[0] as *const u64) }.ok()?,
        _ => 0,
    };
    Some(flags & CLONE_THREAD != 0)
}

/// In the parent, after the child is made and before it is woken.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let (tgid, tid) = current_tgid_tid();
    if TARGETS.get_ptr(tgid).is_none() {
        return 0;
    }
    // The parent's call was kept at entry if it makes a process (or, when
    // threads are followed, a thread: not one to adopt).
    // SAFETY: per-thread entry, read by its own thread.
    let call = unsafe { SYSCALLS.get(tid) };
    if !call.is_some_and(|call| wants(call.nr) && makes_thread(call) == Some(false)) {
        return 0;
    }
    // SAFETY: a global userspace writes before load; volatile so it is not folded.
    let offset = unsafe { core::ptr::read_volatile(&TASK_TGID) } as usize;
    let task: *const u8 = ctx.arg(1);
    // SAFETY: reads kernel memory; a fault returns Err.
    if let Ok(child) = unsafe { bpf_probe_read_kernel(task.wrapping_add(offset) as *const u32) } {
        adopt(tgid, child);
    }
    0
}

/// In the parent, a fork returns the child's PID: where the child is adopted
/// when `sched_process_fork` could not do it first.
#[inline(always)]
pub fn exit(tgid: u32, child: u32) {
    if child != 0 {
        adopt(tgid, child);
    }
}

#[inline(always)]
fn adopt(parent: u32, child: u32) {
    match TARGETS.insert(child, 1, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Full: counted, never silent. (Otherwise it is a target already.)
        Err(E2BIG) => {
            count(Counter::UnfollowedForks);
            return;
        }
        Err(_) => return,
    }
    // Its first allocations unwind like the parent's, before userspace hears of it.
    unwind::inherit(parent, child);
    let _ = FORKED.insert(child, parent, 0);
}

/// A target's syscall returned without its arguments kept: for a new process,
/// that is its first return to user space.
#[inline(always)]
pub fn first_return(tgid: u32) {
    // SAFETY: copied before the entry is removed.
    let Some(parent) = (unsafe { FORKED.get(tgid) }).copied() else {
        return;
    };
    if FORKED.remove(tgid).is_ok() {
        announce(EventKind::Fork, parent, tgid);
    }
}

/// An exec by a target returned: a new image, not yet probed, whose heap
/// starts empty (userspace takes the old image's blocks out of `ALLOCS`).
#[inline(always)]
pub fn exec(tgid: u32) {
    let _ = LIVE_BLOCKS.remove(tgid);
    announce(EventKind::Exec, tgid, 0);
}

/// At a new image's entry point, attached by userspace for that process
/// alone: the libraries are mapped, `main` has not run; userspace learns
/// their code before the first stack goes through it.
#[uprobe]
pub fn image_entry(_ctx: ProbeContext) -> u32 {
    let (tgid, _) = current_tgid_tid();
    announce(EventKind::Entry, tgid, 0);
    0
}

/// Tells userspace, stopping the current process first if userspace asks for it.
#[inline(always)]
fn announce(kind: EventKind, tgid: u32, child: u32) {
    // Reserved first: a process stops only when userspace will hear of it.
    let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let pausing = pausing(pause::NEW);
    // SAFETY: signals the current process; delivered before it returns to user space.
    let paused = pausing && unsafe { bpf_send_signal(SIGSTOP) } == 0;
    entry.write(ProcEvent {
        kind: kind as u32,
        tgid,
        // SAFETY: reads no memory of ours.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        child,
        paused: paused as u32,
    });
    // A stopped process waits for userspace: wake it now.
    entry.submit(wakeup(paused));
}
