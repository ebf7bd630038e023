//! Following targets into the processes they fork: a successful fork, vfork, or
//! clone/clone3 without CLONE_THREAD makes the child a target at once, in the
//! kernel, so its first syscalls are already seen; userspace hears of it to copy
//! the parent's descriptors and mappings and to attach the allocator probes.
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
};
use leaktrace_common::{Counter, EventKind, ForkEvent, SyscallArgs};

use crate::{
    maps::{EVENTS, TARGETS, count},
    unwind,
};

const CLONE: u64 = 56;
const FORK: u64 = 57;
const VFORK: u64 = 58;
const CLONE3: u64 = 435;
const CLONE_THREAD: u64 = 0x10000;

#[inline(always)]
pub fn wants(nr: u64) -> bool {
    matches!(nr, CLONE | FORK | VFORK | CLONE3)
}

/// Threads share the process: only calls that make a process are followed.
#[inline(always)]
pub fn keep(call: &SyscallArgs) -> bool {
    let flags = match call.nr {
        CLONE => call.args[0],
        // clone3's flags are the first field of its struct clone_args.
        // SAFETY: reads the target's memory; a fault returns Err.
        CLONE3 => match unsafe { bpf_probe_read_user(call.args[0] as *const u64) } {
            Ok(flags) => flags,
            Err(_) => return false,
        },
        _ => 0,
    };
    flags & CLONE_THREAD == 0
}

/// In the parent, a fork returns the child's PID.
#[inline(always)]
pub fn exit(tgid: u32, child: u32) {
    if child == 0 {
        return;
    }
    if TARGETS.insert(child, 1, 0).is_err() {
        return;
    }
    // Its first allocations unwind like the parent's, before userspace hears of it.
    unwind::inherit(tgid, child);
    let Some(mut entry) = EVENTS.reserve::<ForkEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    entry.write(ForkEvent {
        kind: EventKind::Fork as u32,
        tgid,
        // SAFETY: reads no memory of ours.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        child,
        _pad: 0,
    });
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}
