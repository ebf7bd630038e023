//! Allocator probes: malloc and friends at entry (arguments) and return (result),
//! free at entry. Outstanding allocations and per-site totals live in the kernel.
//!
//! Userspace attaches these only to the target processes (perf's pid filter), so
//! other processes sharing the same libc never hit a breakpoint.
use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use leaktrace_common::{AllocFn, AllocInfo, AllocKey, Counter, Inflight, SiteKey, SiteKind, args};

use crate::{
    maps::{ALLOCS, INFLIGHT, count, current_tgid_tid, live_blocks_add, site_add, site_stats},
    unwind,
};

/// The probed call's arguments, where this attachment's cookie says they are
/// (the probe may sit past a copy of one: leaktrace-common's `args`): the
/// cookie and the registers read once per call.
struct Args {
    cookie: u64,
    /// Indexed by `Reg` code; an array, not a match: BPF has no jump tables.
    by_code: [u64; 16],
}

impl Args {
    #[inline(always)]
    fn of(ctx: &ProbeContext) -> Self {
        let r = user_regs(ctx);
        Args {
            // SAFETY: the helper reads only the attachment's cookie.
            cookie: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) },
            by_code: [
                0, r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9, r.rax, r.rbx, r.rbp, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
        }
    }

    /// Argument `slot`.
    #[inline(always)]
    fn get(&self, slot: usize) -> u64 {
        self.by_code[args::reg(self.cookie, slot) as usize & 15]
    }
}

#[inline(always)]
fn user_sp(ctx: &ProbeContext) -> u64 {
    user_regs(ctx).rsp
}

/// The user registers a uprobe or uretprobe program runs with.
#[inline(always)]
pub fn user_regs<C: EbpfContext>(ctx: &C) -> &pt_regs {
    // SAFETY: a uprobe's context is the user register set.
    unsafe { &*(ctx.as_ptr() as *const pt_regs) }
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocFn::Malloc, Args::of(&ctx).get(0), 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    let a = Args::of(&ctx);
    enter(&ctx, AllocFn::Calloc, a.get(0).wrapping_mul(a.get(1)), 0);
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    let a = Args::of(&ctx);
    enter(&ctx, AllocFn::Realloc, a.get(1), a.get(0));
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let a = Args::of(&ctx);
    enter(
        &ctx,
        AllocFn::Realloc,
        a.get(1).wrapping_mul(a.get(2)),
        a.get(0),
    );
    0
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocFn::Memalign, Args::of(&ctx).get(1), 0);
    0
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    let a = Args::of(&ctx);
    enter(&ctx, AllocFn::PosixMemalign, a.get(2), a.get(0));
    0
}

/// Remembers the outermost allocator call of this thread; nested ones only deepen.
#[inline(always)]
fn enter(ctx: &ProbeContext, func: AllocFn, size: u64, ptr: u64) {
    let (_, tid) = current_tgid_tid();
    let sp = user_sp(ctx);
    let outer = Inflight {
        depth: 1,
        func: func as u32,
        size,
        ptr,
        sp,
        // SAFETY: reads the target's stack; a fault leaves 0 (the walk then
        // stops at the trampoline, counted).
        ret: unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0),
    };
    match INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: per-thread entry; only this thread writes it.
        Some(state) => unsafe {
            // A call that never returned (its uretprobe was not armed) leaves depth
            // behind; a real nested call runs deeper in the stack than the outer one.
            if (*state).depth == 0 || sp >= (*state).sp {
                *state = outer;
            } else {
                (*state).depth += 1;
            }
        },
        None => {
            let _ = INFLIGHT.insert(tid, outer, 0);
        }
    }
}

/// One return program for every allocator entry point: `Inflight::func` says which.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    let Some(state) = INFLIGHT.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: per-thread entry; only this thread writes it.
    let call = unsafe {
        if (*state).depth == 0 {
            return 0;
        }
        (*state).depth -= 1;
        if (*state).depth != 0 {
            return 0;
        }
        *state
    };
    let ret: u64 = ctx.ret();
    if call.func == AllocFn::Realloc as u32 {
        // realloc(p, 0) frees p and may return NULL; a failed realloc keeps p.
        // The resized block keeps p's birth time: a buffer grown forever is as old
        // as its first allocation, which is what the leak verdict needs to see.
        let mut born = None;
        if call.ptr != 0 && (ret != 0 || call.size == 0) {
            born = release(tgid, call.ptr);
        }
        if ret != 0 {
            record(&ctx, tgid, ret, call.size, born);
        }
    } else if call.func == AllocFn::PosixMemalign as u32 {
        if ret as u32 == 0 {
            // SAFETY: reads the target's out-pointer; a fault returns Err.
            if let Ok(addr) = unsafe { bpf_probe_read_user(call.ptr as *const u64) } {
                record(&ctx, tgid, addr, call.size, None);
            }
        }
    } else if ret != 0 {
        record(&ctx, tgid, ret, call.size, None);
    }
    0
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let addr = Args::of(&ctx).get(0);
    if addr == 0 {
        return 0;
    }
    let (tgid, tid) = current_tgid_tid();
    // Frees inside realloc & co. belong to that call, accounted at its return.
    if inside_allocator(tid, user_sp(&ctx)) {
        return 0;
    }
    let _ = release(tgid, addr);
    0
}

/// Whether thread `tid`, with stack pointer `sp`, is inside an allocator call
/// (nested calls run below the outermost call's stack pointer).
#[inline(always)]
pub fn inside_allocator(tid: u32, sp: u64) -> bool {
    // SAFETY: per-thread entry, read by its own thread.
    unsafe { INFLIGHT.get(tid) }.is_some_and(|state| state.depth != 0 && sp < state.sp)
}

#[inline(always)]
fn record(ctx: &RetProbeContext, tgid: u32, addr: u64, size: u64, born: Option<u64>) {
    // At a uretprobe the registers are the caller's, just after the call.
    let regs = user_regs(ctx);
    let site = SiteKey {
        tgid,
        kind: SiteKind::Heap as u32,
        stack_id: unwind::stack_id(regs.rip, regs.rsp, regs.rbp),
        extra: 0,
        _pad: 0,
    };
    track(tgid, addr, size, born, site);
}

/// Records the object at `addr` as outstanding at `site`.
#[inline(always)]
pub fn track(tgid: u32, addr: u64, size: u64, born: Option<u64>, site: SiteKey) {
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    // An entry already at this address was freed behind our back (a path we do not
    // probe): settle it before it is overwritten. Costs one lookup when there is none.
    let _ = release(tgid, addr);
    let Some(stats) = site_stats(&site) else {
        return;
    };
    let info = AllocInfo {
        size,
        // SAFETY: the helper reads no memory of ours.
        ts_ns: born.unwrap_or_else(|| unsafe { bpf_ktime_get_ns() }),
        site,
    };
    if ALLOCS.insert(key, info, 0).is_err() {
        count(Counter::AllocsFull);
        return;
    }
    site_add(stats, size as i64, 1);
    if site.kind == SiteKind::Heap as u32 {
        live_blocks_add(tgid, 1);
    }
    count(Counter::Allocs);
}

/// Settles the allocation at `addr`, if it is ours; returns when it was made.
#[inline(always)]
pub fn release(tgid: u32, addr: u64) -> Option<u64> {
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr,
    };
    // SAFETY: the value is copied out before the entry is removed.
    // Allocated before attach, or not ours: None.
    let info = (unsafe { ALLOCS.get(key) }).copied()?;
    // Only the thread whose remove succeeds settles the site (double frees race).
    ALLOCS.remove(key).ok()?;
    if let Some(stats) = crate::maps::SITES.get_ptr_mut(info.site) {
        site_add(stats, -(info.size as i64), -1);
    }
    if info.site.kind == SiteKind::Heap as u32 {
        live_blocks_add(tgid, -1);
    }
    count(Counter::Frees);
    Some(info.ts_ns)
}
