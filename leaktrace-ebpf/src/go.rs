//! Go runtime probes: the sampled Go heap and goroutines, out of process.
//!
//! Entry uprobes only: a uretprobe rewrites the return address on the goroutine
//! stack, and the runtime, which copies and scans those stacks, crashes on it.
//! A new goroutine is seen where newproc passes newproc1's result on to
//! `runqput`, or else at each of newproc1's RET instructions (userspace decodes
//! the code to find them): one probe per goroutine. Its end is read by
//! userspace from the `g`. Walking the creating stack costs more than the
//! probe hit itself, so a busy `go` statement (over `GO_EXACT_PER_SECOND` in a
//! second on a CPU) has only one goroutine in `GO_SAMPLE` announced; the probe
//! counts all of them, and userspace finds the rest alive in the runtime's
//! list of goroutines. Registers follow Go's ABIInternal on amd64: arguments
//! in RAX, RBX, RCX…, the current `g` in R14.
//!
//! Go heap: the runtime samples allocations for its own heap profile (one per
//! `MemProfileRate` bytes). `mProf_Malloc` runs for each sampled object on the
//! allocating goroutine (its stack is the site), then `setprofilebucket(p, b)`
//! ties the object to its profile bucket on the same thread. When the sweeper
//! frees a sampled object, `freeSpecial(s, p, size)` calls `mProf_Free(b)`:
//! freeSpecial gives the object, mProf_Free says it was the profile's record.
use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, LruPerCpuHashMap},
    programs::ProbeContext,
};
use leaktrace_common::{
    AllocKey, Counter, EventKind, GO_EXACT_PER_SECOND, GO_SAMPLE, GoCreator, GoLayout,
    GoroutineEvent, SiteKey, SiteKind, StackId,
};

use crate::{
    alloc::{release, track, user_regs},
    maps::{EVENTS, atomic_add, count, current_tgid_tid, take, wakeup},
    unwind,
};

/// Offset of `size` in `runtime.bucket` (Go 1.21–1.27).
const BUCKET_SIZE: u64 = 32;

/// Stack id at mProf_Malloc, per thread, until setprofilebucket.
#[map]
static GO_SAMPLED: LruHashMap<u32, StackId> = LruHashMap::with_max_entries(4096, 0);

/// The object freeSpecial is releasing, per thread, until mProf_Free.
#[map]
static GO_FREEING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Go heap objects sampled before attach and still in use, per (tgid, profile
/// bucket): userspace seeds it from the runtime's buckets at attach; frees of
/// objects leaktrace did not see allocated count it down.
#[map]
static GO_BEFORE_ATTACH: HashMap<AllocKey, i64> = HashMap::with_max_entries(1 << 16, 0);

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    user_regs(ctx)
}

#[inline(always)]
fn stack_id(ctx: &ProbeContext) -> StackId {
    let r = regs(ctx);
    unwind::stack_id(r.rip, r.rsp, r.rbp)
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: reads the target's memory; a fault returns Err.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[uprobe]
pub fn go_mprof_malloc(ctx: ProbeContext) -> u32 {
    let (_, tid) = current_tgid_tid();
    let _ = GO_SAMPLED.insert(tid, stack_id(&ctx), 0);
    0
}

#[uprobe]
pub fn go_set_profile_bucket(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    let Some(stack_id) = take(&GO_SAMPLED, tid) else {
        return 0;
    };
    let (object, bucket) = (regs(&ctx).rax, regs(&ctx).rbx);
    let Some(size) = read_u64(bucket + BUCKET_SIZE) else {
        return 0;
    };
    let site = SiteKey {
        tgid,
        kind: SiteKind::GoHeap as u32,
        stack_id,
        extra: size.min(u32::MAX as u64) as u32,
        _pad: 0,
    };
    track(tgid, object, size, None, site);
    0
}

#[uprobe]
pub fn go_free_special(ctx: ProbeContext) -> u32 {
    let (_, tid) = current_tgid_tid();
    let _ = GO_FREEING.insert(tid, regs(&ctx).rbx, 0);
    0
}

/// `runtime.mProf_Free(b)`: the object freeSpecial named was a sampled one of bucket `b`.
#[uprobe]
pub fn go_mprof_free(ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current_tgid_tid();
    let Some(object) = take(&GO_FREEING, tid) else {
        return 0;
    };
    if release(tgid, object).is_some() {
        return 0;
    }
    // Sampled before attach: one fewer of its bucket's objects in use.
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr: regs(&ctx).rax,
    };
    if let Some(left) = GO_BEFORE_ATTACH.get_ptr_mut(key) {
        // SAFETY: a map value, alive while the program runs; naturally aligned.
        unsafe {
            if *left > 0 {
                atomic_add(left, -1);
            }
        }
    }
    0
}

/// Each Go target whose goroutines are followed, with its `runtime.g`
/// layout, set by userspace at attach (image_exit stops such a process at
/// its exit; the goroutine probes have the layout in their cookie).
#[map]
pub static GO_LAYOUT: HashMap<u32, GoLayout> = HashMap::with_max_entries(1024, 0);

/// At newproc's call of `runqput(pp, newg, next)`: RBX is the new goroutine's g.
#[uprobe]
pub fn go_newproc_queued(ctx: ProbeContext) -> u32 {
    created(&ctx, regs(&ctx).rbx);
    0
}

/// At each RET of newproc1 (where the call above is not found): RAX is the new g.
#[uprobe]
pub fn go_newproc1_ret(ctx: ProbeContext) -> u32 {
    created(&ctx, regs(&ctx).rax);
    0
}

/// Goroutines made per `go` statement, per process and CPU (no cache line
/// bouncing between CPUs; userspace adds them up).
#[map]
pub static GO_CREATORS: LruPerCpuHashMap<AllocKey, GoCreator> =
    LruPerCpuHashMap::with_max_entries(1 << 14, 0);

/// A goroutine was made, `g`, not running yet: counted at its `go`
/// statement, and, when announced, what the runtime recorded of its making
/// and the creating goroutine's stack.
#[inline(always)]
fn created(ctx: &ProbeContext, g: u64) {
    let (tgid, _) = current_tgid_tid();
    // The layout is the attachment's cookie: no map lookup on this path.
    // SAFETY: the helper reads only the attachment's cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let layout = GoLayout {
        goid: cookie as u32,
        gopc: (cookie >> 32) as u32,
    };
    let Some(gopc) = read_u64(g + layout.gopc as u64) else {
        count(Counter::EventsLost);
        return;
    };
    if !announced(tgid, gopc) {
        return;
    }
    // parentGoid, gopc, ancestors, startpc; a goroutine's id is never 0.
    // SAFETY: reads the target's memory; a fault returns Err.
    let made = unsafe { bpf_probe_read_user((g + layout.gopc as u64 - 8) as *const [u64; 4]) };
    let (Ok(made), Some(goid)) = (made, read_u64(g + layout.goid as u64).filter(|&id| id != 0))
    else {
        count(Counter::EventsLost);
        return;
    };
    send(GoroutineEvent {
        kind: EventKind::GoroutineNew as u32,
        tgid,
        // SAFETY: the helper reads no memory of ours.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        g,
        goid,
        stack_id: creator_stack(ctx, made[1]),
        caller: made[1],
        start_pc: made[3],
        parent_goid: made[0],
    });
}

/// Counts a goroutine made at `gopc`; whether it is announced with its
/// stack. Walking the creating stack costs more than the probe itself: a
/// statement making goroutines faster than [`GO_EXACT_PER_SECOND`] on a CPU
/// has one in [`GO_SAMPLE`] announced for the rest of the second.
#[inline(always)]
fn announced(tgid: u32, gopc: u64) -> bool {
    let key = AllocKey {
        tgid,
        _pad: 0,
        addr: gopc,
    };
    // SAFETY: the helper reads no memory of ours.
    let second = unsafe { bpf_ktime_get_ns() } >> 30;
    let made = match GO_CREATORS.get_ptr_mut(key) {
        Some(made) => made,
        None => {
            // Not over another thread's first: its count stays.
            let _ = GO_CREATORS.insert(key, GoCreator::default(), BPF_NOEXIST as u64);
            let Some(made) = GO_CREATORS.get_ptr_mut(key) else {
                return true;
            };
            made
        }
    };
    // SAFETY: this CPU's value, alive while the program runs. The program
    // can be preempted by another thread hitting it on the same CPU: the
    // count is added atomically; which ones are announced may race.
    unsafe {
        atomic_add((&raw mut (*made).made).cast(), 1);
        if (*made).second != second {
            (*made).second = second;
            (*made).in_second = 0;
        }
        (*made).in_second += 1;
        (*made).in_second <= GO_EXACT_PER_SECOND || (*made).made % GO_SAMPLE == 0
    }
}

/// Frames to follow from the probe to the creating goroutine's.
const TO_CREATOR: usize = 4;

/// The creating goroutine's stack. Both probes run on the thread's system
/// stack, inside `systemstack`, which leaves the goroutine's frame pointer in
/// RBP: within a few frames the frame-pointer chain reaches the frame whose
/// return address is the `go` statement (`gopc`), on the goroutine's own
/// stack; the walk starts there, by frame pointers. Where that frame is not
/// found (a goroutine made on the system stack itself), the stack at the probe.
#[inline(always)]
fn creator_stack(ctx: &ProbeContext, gopc: u64) -> StackId {
    let r = regs(ctx);
    let mut bp = r.rbp;
    for _ in 0..TO_CREATOR {
        // The saved frame pointer and the return address, in one read.
        // SAFETY: reads the target's memory; a fault returns Err.
        let Ok([next, ret]) = (unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }) else {
            break;
        };
        if ret == gopc && gopc != 0 {
            return unwind::go_stack_id(gopc, next);
        }
        bp = next;
    }
    unwind::stack_id(r.rip, r.rsp, r.rbp)
}

#[inline(always)]
fn send(event: GoroutineEvent) {
    let Some(mut entry) = EVENTS.reserve::<GoroutineEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    entry.write(event);
    entry.submit(wakeup(false));
}
