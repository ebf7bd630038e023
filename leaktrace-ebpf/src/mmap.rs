//! Anonymous mappings: mmap, munmap, mremap.
//!
//! A munmap may cut any part out of one or several mappings, which a hash map
//! cannot look up by range; these calls are rare, so each successful one goes to
//! userspace, which keeps the mappings as intervals.
use aya_ebpf::{bindings::pt_regs, helpers::bpf_ktime_get_ns};
use leaktrace_common::{Counter, EventKind, MapEvent, NO_STACK, SyscallArgs, syscalls as sys};

use crate::{
    alloc,
    maps::{EVENTS, count, wakeup},
    unwind,
};

const MAP_ANONYMOUS: u64 = 0x20;
const PROT_NONE: u64 = 0;

#[inline(always)]
pub fn wants(nr: u32) -> bool {
    matches!(nr, sys::MMAP | sys::MUNMAP | sys::MREMAP)
}

/// Whether to follow this call to its exit.
#[inline(always)]
pub fn keep(nr: u32, regs: &pt_regs, tid: u32) -> bool {
    // The allocator maps and unmaps its own arenas and large chunks: those bytes are
    // already counted as heap allocations.
    if alloc::inside_allocator(tid, regs.rsp) {
        return false;
    }
    // PROT_NONE reserves address space, not memory (Go's heap arenas, guard
    // regions); what is later mapped over it with MAP_FIXED is counted.
    nr != sys::MMAP || (regs.r10 & MAP_ANONYMOUS != 0 && regs.rdx != PROT_NONE)
}

#[inline(always)]
pub fn exit(tgid: u32, call: &SyscallArgs, ret: u64, regs: &pt_regs) {
    let [a0, a1, a2, ..] = call.args;
    let (kind, addr, len, old_addr, old_len) = match call.nr {
        sys::MMAP => (EventKind::Mmap, ret, a1, 0, 0),
        sys::MUNMAP => (EventKind::Munmap, a0, a1, 0, 0),
        _ => (EventKind::Mremap, ret, a2, a0, a1),
    };
    let Some(mut entry) = EVENTS.reserve::<MapEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is our reserved ring-buffer slot.
    unsafe {
        (*event).kind = kind as u32;
        (*event).tgid = tgid;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).addr = addr;
        (*event).len = len;
        (*event).old_addr = old_addr;
        (*event).old_len = old_len;
        (*event).stack_id = if kind == EventKind::Munmap {
            NO_STACK
        } else {
            unwind::stack_id(regs.rip, regs.rsp, regs.rbp)
        };
    }
    entry.submit(wakeup(false));
}
