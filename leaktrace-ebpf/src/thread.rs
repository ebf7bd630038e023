//! Threads: each one a target makes (clone with `CLONE_THREAD`, seen as the
//! call returns in the maker, with its stack) and each one that ends (the
//! `exit` syscall, which a thread returning from its start function or
//! calling pthread_exit makes; `exit_group` ends the whole process instead).
//! Userspace keeps the table per process, like descriptors.
use aya_ebpf::{bindings::pt_regs, helpers::bpf_ktime_get_ns};
use leaktrace_common::{Counter, EventKind, NO_STACK, StackId, ThreadEvent};

use crate::{
    maps::{EVENTS, count, wakeup},
    unwind,
};

/// The maker's clone returned `tid`, a new thread of `tgid`.
#[inline(always)]
pub fn made(tgid: u32, tid: u32, regs: &pt_regs) {
    if tid == 0 {
        return; // the new thread's own return
    }
    send(
        EventKind::ThreadNew,
        tgid,
        tid,
        unwind::stack_id(regs.rip, regs.rsp, regs.rbp),
    );
}

/// Thread `tid` of `tgid` is ending (its `exit`).
#[inline(always)]
pub fn ended(tgid: u32, tid: u32) {
    send(EventKind::ThreadExit, tgid, tid, NO_STACK);
}

#[inline(always)]
fn send(kind: EventKind, tgid: u32, tid: u32, stack_id: StackId) {
    let Some(mut entry) = EVENTS.reserve::<ThreadEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    entry.write(ThreadEvent {
        kind: kind as u32,
        tgid,
        // SAFETY: reads no memory of ours.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tid,
        _pad: 0,
        stack_id,
    });
    entry.submit(wakeup(false));
}
