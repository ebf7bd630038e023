//! Stopping a target on its way out, for the reachability scan of its heap
//! and the last read of its goroutines.
//!
//! A signal sent inside `exit_group` is never delivered: the process is gone
//! before it returns to user space. So the probe sits on the C library's
//! `_exit`, or the Go runtime's `runtime.exit` (attached by userspace per
//! process, where it finds one): the process stops itself there, with its
//! heap, stacks and globals whole, and userspace reads them and sends SIGCONT.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_send_signal},
    macros::uprobe,
    programs::ProbeContext,
};
use leaktrace_common::{Counter, EventKind, ExitEvent, pause};

use crate::{
    alloc::user_regs,
    fork::SIGSTOP,
    go::GO_LAYOUT,
    maps::{EVENTS, EXITING, LIVE_BLOCKS, count, current_tgid_tid, pausing, wakeup},
};

#[uprobe]
pub fn image_exit(ctx: ProbeContext) -> u32 {
    if !pausing(pause::EXIT) {
        return 0;
    }
    let (tgid, tid) = current_tgid_tid();
    // Nothing outstanding on its heap and no goroutines followed (whose
    // ends userspace reads): no reason to stop it.
    // SAFETY: read-only uses of map values.
    let heap = (unsafe { LIVE_BLOCKS.get(tgid) }).is_some_and(|&n| n > 0);
    if !heap && (unsafe { GO_LAYOUT.get(tgid) }).is_none() {
        return 0;
    }
    if EXITING.insert(tgid, 1, BPF_NOEXIST as u64).is_err() {
        return 0; // stopped once already (or too many exiting at once)
    }
    // Reserved first: a process stops only when userspace will hear of it.
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count(Counter::EventsLost);
        return 0;
    };
    let r = user_regs(&ctx);
    // SAFETY: signals the current process; delivered before it returns to user space.
    let paused = unsafe { bpf_send_signal(SIGSTOP) } == 0;
    entry.write(ExitEvent {
        kind: EventKind::Exit as u32,
        tgid,
        // SAFETY: reads no memory of ours.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tid,
        paused: paused as u32,
        regs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
    });
    entry.submit(wakeup(paused));
    0
}
