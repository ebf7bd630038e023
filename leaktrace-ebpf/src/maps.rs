//! Maps shared by the probe families, and the small helpers every probe uses on them.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use leaktrace_common::{
    AllocInfo, AllocKey, COUNTER_SLOTS, Counter, Inflight, SiteKey, SiteStats, SyscallArgs, pause,
};

/// Outstanding heap allocations. Userspace sets the real size before loading.
#[map]
pub static ALLOCS: HashMap<AllocKey, AllocInfo> = HashMap::with_max_entries(1 << 20, 0);

/// Per-site totals: what userspace reads every tick instead of walking `ALLOCS`.
#[map]
pub static SITES: HashMap<SiteKey, SiteStats> = HashMap::with_max_entries(1 << 16, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Target processes (tgid → 1): the syscall tracepoints see every process.
/// Userspace removes each once it has exited.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(1 << 14, 0);

/// Per-thread allocator call state (tid → state). LRU so exited threads age out.
#[map]
pub static INFLIGHT: LruHashMap<u32, Inflight> = LruHashMap::with_max_entries(1 << 16, 0);

/// Per-thread syscall arguments between entry and exit (tid → args).
#[map]
pub static SYSCALLS: LruHashMap<u32, SyscallArgs> = LruHashMap::with_max_entries(1 << 16, 0);

/// Processes a target forked that have not yet returned to user space
/// (child tgid → parent tgid). As large as `TARGETS`: every child in it is
/// one there.
#[map]
pub static FORKED: HashMap<u32, u32> = HashMap::with_max_entries(1 << 14, 0);

/// Heap blocks (C heap, not Go's) each process has outstanding: a process
/// with none is not stopped at exit (exit.rs). Removed by userspace with the
/// process's other entries.
#[map]
pub static LIVE_BLOCKS: HashMap<u32, i64> = HashMap::with_max_entries(1 << 14, 0);

/// Adds `n` to `tgid`'s outstanding heap blocks.
#[inline(always)]
pub fn live_blocks_add(tgid: u32, n: i64) {
    if LIVE_BLOCKS.get_ptr_mut(tgid).is_none() {
        // Full: the process is stopped at exit as if it had blocks.
        let _ = LIVE_BLOCKS.insert(tgid, 0, BPF_NOEXIST as u64);
    }
    if let Some(live) = LIVE_BLOCKS.get_ptr_mut(tgid) {
        // SAFETY: a map value, alive for the program's run, naturally aligned.
        unsafe { atomic_add(live, n) };
    }
}

/// Processes stopped at `_exit` once already (exit.rs): a process calls it
/// once, but its probe may fire again as it goes on. Removed by userspace
/// with the process's other entries.
#[map]
pub static EXITING: HashMap<u32, u32> = HashMap::with_max_entries(1 << 14, 0);

/// Slot [`pause::NEW`] nonzero: a new process or image stops itself (SIGSTOP)
/// until userspace has attached its probes (see fork.rs); slot
/// [`pause::EXIT`]: an exiting one, until its heap is scanned (exit.rs).
/// Userspace clears them before it lets go of the targets.
#[map]
pub static PAUSE: Array<u32> = Array::with_max_entries(pause::SLOTS, 0);

/// Whether slot `slot` of [`PAUSE`] is set.
#[inline(always)]
pub fn pausing(slot: u32) -> bool {
    PAUSE.get(slot).is_some_and(|&p| p != 0)
}

const EVENTS_BYTES: u64 = 16 << 20;

/// Events for userspace, drained every 100 ms, or at once when [`wakeup`] says.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES as u32, 0);

/// The flags to submit an event with: userspace is woken only once a quarter
/// of the ring waits (a burst of descriptors: 200k opens a second fill it in
/// 0.25 s), or when `now`, not at every event (a wakeup costs more than one).
#[inline(always)]
pub fn wakeup(now: bool) -> u64 {
    if now || EVENTS.query(BPF_RB_AVAIL_DATA as u64) > EVENTS_BYTES / 4 {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    count_by(counter as u32, 1);
}

/// Adds `n` to counter slot `index` (a [`Counter`], or one past it for the
/// counters that have several slots).
#[inline(always)]
pub fn count_by(index: u32, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *slot += n };
    }
}

/// The stats of `site`, created empty on first use.
#[inline(always)]
pub fn site_stats(site: &SiteKey) -> Option<*mut SiteStats> {
    if let Some(stats) = SITES.get_ptr_mut(site) {
        return Some(stats);
    }
    // EEXIST from a racing thread is fine: the lookup below finds its entry.
    let _ = SITES.insert(site, SiteStats::default(), BPF_NOEXIST as u64);
    let stats = SITES.get_ptr_mut(site);
    if stats.is_none() {
        count(Counter::SitesFull);
    }
    stats
}

/// Adds one allocation of `bytes` (negative: removes one) to a site's totals.
#[inline(always)]
pub fn site_add(stats: *mut SiteStats, bytes: i64, count: i64) {
    // SAFETY: `stats` points into a map value, alive for the program's run;
    // the fields are naturally aligned.
    unsafe {
        atomic_add(&raw mut (*stats).live_bytes, bytes);
        atomic_add(&raw mut (*stats).live_count, count);
        if count > 0 {
            atomic_add((&raw mut (*stats).total_bytes).cast(), bytes);
            atomic_add((&raw mut (*stats).total_count).cast(), 1);
        }
    }
}

/// `lock xadd`: threads of the target on other CPUs update the same site.
#[inline(always)]
pub unsafe fn atomic_add(dst: *mut i64, value: i64) {
    // core's atomics lack fetch_add on the BPF target; the intrinsic lowers to BPF_ATOMIC.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<i64, i64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            dst, value,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicI64::from_ptr(dst)
            .fetch_add(value, core::sync::atomic::Ordering::Relaxed);
    }
}

/// Removes and returns a thread's entry (state kept between two probes).
#[inline(always)]
pub fn take<V: Copy>(map: &LruHashMap<u32, V>, tid: u32) -> Option<V> {
    // SAFETY: per-thread entry, copied before it is removed.
    let value = (unsafe { map.get(tid) }).copied()?;
    let _ = map.remove(tid);
    Some(value)
}

#[inline(always)]
pub fn current_tgid_tid() -> (u32, u32) {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}
