//! The site model: what each call site holds right now. Fed by the pump, read by
//! the views (text, JSON); never touches the kernel itself.
use std::collections::{BTreeMap, HashMap};

use leaktrace_common::{
    EventKind, MapEvent, SiteKey, SiteKind, SiteStats, StackId,
    unwind::{STACK_END_KINDS, StackEnd},
};
use serde::Serialize;

use crate::{
    handles::HandleKind,
    reach::{Reach, process::ScanStats},
    sampling::{DEFAULT_MEM_PROFILE_RATE, scale},
    series::{Point, Series},
    survival::{Survival, Sweeps, Tally},
    symbolize::Frames,
};

/// Nanoseconds of CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub type Ns = u64;

pub const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Heap,
    Mmap,
    /// Descriptors other than sockets: files, pipes, eventfds, epoll, timers…
    Fd,
    Socket,
    /// Go's heap, from the runtime's sampled allocations (scaled estimates).
    GoHeap,
    /// Goroutines alive, by creation site.
    Goroutine,
    /// Threads alive, by the site that made them.
    Thread,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Mmap => "mmap",
            Kind::Fd => "fd",
            Kind::Socket => "socket",
            Kind::GoHeap => "go_heap",
            Kind::Goroutine => "goroutine",
            Kind::Thread => "thread",
        }
    }

    /// Handles are counted, memory is measured in bytes.
    pub fn is_handle(self) -> bool {
        matches!(
            self,
            Kind::Fd | Kind::Socket | Kind::Goroutine | Kind::Thread
        )
    }

    /// Sites the kernel accounts (read from its sites map), not userspace.
    pub fn in_kernel(self) -> bool {
        matches!(self, Kind::Heap | Kind::GoHeap)
    }
}

/// The stack id of the site of descriptors found open at attach.
pub const BEFORE_ATTACH: StackId = u64::MAX;

/// Thread ends kept per process whose start has not been seen (see
/// `Model::ended_unseen`): a start comes within one drain of its end.
const MAX_ENDED_UNSEEN: usize = 1024;

/// How many details (paths, peers) a handle site keeps, most frequent first.
pub const TOP_DETAILS: usize = 5;

/// An open descriptor or a live goroutine of a target.
#[derive(Clone, Debug)]
pub struct Handle {
    pub site: SiteId,
    pub kind: HandleKind,
    /// Path of a file, protocol and addresses of a socket, name of a memfd, the
    /// function a goroutine runs.
    pub detail: String,
    pub ts: Ns,
    /// Found open or alive at attach, not made while traced.
    pub before_attach: bool,
}

/// A call site of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteId {
    pub tgid: u32,
    pub kind: Kind,
    /// A kernel stack (the hash of its return addresses), or one the pump made
    /// (a goroutine's creation stack; top bit set).
    pub stack_id: StackId,
}

impl SiteId {
    /// The site of a kernel-accounted entry (heap or Go heap).
    pub fn in_kernel(key: &SiteKey) -> Self {
        SiteId {
            tgid: key.tgid,
            kind: if key.kind == SiteKind::GoHeap as u32 {
                Kind::GoHeap
            } else {
                Kind::Heap
            },
            stack_id: key.stack_id,
        }
    }
}

/// How many objects and bytes `count` objects of `bytes` recorded at kernel
/// site `key` stand for: themselves on the C heap; on the Go heap, where only
/// samples are recorded, more, at the sampling rate of their process.
pub fn stands_for(
    key: &SiteKey,
    count: f64,
    bytes: f64,
    go_rates: &HashMap<u32, u64>,
) -> (f64, f64) {
    if key.kind != SiteKind::GoHeap as u32 {
        return (count, bytes);
    }
    let rate = go_rates
        .get(&key.tgid)
        .copied()
        .unwrap_or(DEFAULT_MEM_PROFILE_RATE);
    scale(count, u64::from(key.extra), rate)
}

#[derive(Clone, Debug)]
pub struct Site {
    pub id: SiteId,
    pub live_bytes: u64,
    pub live_count: u64,
    pub total_bytes: u64,
    pub total_count: u64,
    /// When the oldest outstanding allocation was made.
    pub oldest_ns: Option<Ns>,
    /// Outstanding bytes and count older than `--min-age` (see [`Model::min_age`]).
    pub aged_bytes: u64,
    pub aged_count: u64,
    /// Outstanding bytes and count over time, for the verdict.
    pub series: Series,
    /// Handle sites: the most frequent (kind, detail) of the open handles, with counts.
    pub details: Vec<(HandleKind, String, u64)>,
    /// Symbolized stack, innermost first; empty until symbolized or when the stack was lost.
    pub frames: Frames,
    /// Heap sites: their blocks by reachability, from their process's latest scan.
    pub reach: Option<Reach>,
    /// Goroutine sites: where their goroutines wait, most first, as last read.
    pub waiting: Vec<Waiting>,
    /// Handle sites: how many of those open or alive were so at attach.
    pub before_attach: u64,
    /// Go heap sites: sampled objects made over time (unscaled), and how
    /// many of the early ones are still in use (see survival.rs).
    pub sampled: Tally,
    pub survival: Option<Survival>,
    /// Its process has exited: what it held then, kept as it was.
    pub ended: bool,
}

impl Site {
    fn new(id: SiteId) -> Self {
        Self {
            id,
            live_bytes: 0,
            live_count: 0,
            total_bytes: 0,
            total_count: 0,
            oldest_ns: None,
            aged_bytes: 0,
            aged_count: 0,
            series: Series::default(),
            details: Vec::new(),
            frames: Frames::from([]),
            reach: None,
            waiting: Vec::new(),
            before_attach: 0,
            sampled: Tally::default(),
            survival: None,
            ended: false,
        }
    }
}

/// Goroutines of a site waiting for one reason at one place.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Waiting {
    /// As Go's goroutine profile says it: "chan send", "select", "sleep"…
    pub reason: &'static str,
    /// The function they wait in: the first of the program's own code.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub count: u64,
}

/// What could not be accounted, by cause. Reported with every report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// Allocations not recorded because the outstanding-allocations map was full.
    pub allocs_map_full: u64,
    /// Allocations not recorded because the sites map was full.
    pub sites_map_full: u64,
    /// Stacks that could not be recorded (stack map full, or the unwinder busy).
    pub stacks_lost: u64,
    /// Events dropped because the ring buffer was full.
    pub ring_buffer_overruns: u64,
    /// Syscalls not followed because the per-thread syscall map was full.
    pub syscalls_map_full: u64,
    /// Forked processes whose allocator probes could not be attached (their
    /// heap is missing from the report; the warning names the cause).
    pub untraced_heaps: u64,
    /// Processes targets forked that could not be followed (the kernel's
    /// target map was full).
    pub unfollowed_forks: u64,
}

impl Lost {
    pub fn total(&self) -> u64 {
        self.allocs_map_full
            + self.sites_map_full
            + self.stacks_lost
            + self.ring_buffer_overruns
            + self.syscalls_map_full
            + self.untraced_heaps
            + self.unfollowed_forks
    }
}

/// How the kernel's stack walks ended: a truncated stack is never silent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StackWalks {
    pub walks: u64,
    pub frames: u64,
    /// Reached the outermost frame.
    pub complete: u64,
    /// Stopped at `--max-depth`.
    pub depth_limit: u64,
    /// Stopped at an address in no executable mapping leaktrace knew of yet.
    pub no_mapping: u64,
    /// Stopped at an unwind rule the walk cannot follow.
    pub unsupported_rule: u64,
    /// Stopped at stack memory that could not be read.
    pub unreadable: u64,
    /// Stopped where the frame address did not move up the stack.
    pub not_advancing: u64,
    /// Stopped in a module whose unwind table could not be loaded.
    pub no_table: u64,
}

impl StackWalks {
    /// From the kernel's counters: walks, frames, then one per [`StackEnd`].
    pub fn from_counters(walks: u64, frames: u64, ends: &[u64]) -> Self {
        let mut s = StackWalks {
            walks,
            frames,
            ..Self::default()
        };
        for (end, &n) in StackEnd::ALL
            .iter()
            .zip(ends.iter().take(STACK_END_KINDS as usize))
        {
            *match end {
                StackEnd::Complete => &mut s.complete,
                StackEnd::Depth => &mut s.depth_limit,
                StackEnd::NoMapping => &mut s.no_mapping,
                StackEnd::Unsupported => &mut s.unsupported_rule,
                StackEnd::Unreadable => &mut s.unreadable,
                StackEnd::NotAdvancing => &mut s.not_advancing,
                StackEnd::NoTable => &mut s.no_table,
            } += n;
        }
        s
    }
}

#[derive(Clone, Copy, Debug)]
struct Region {
    end: u64,
    site: SiteId,
    ts: Ns,
}

/// The anonymous mappings of one process that leaktrace saw created.
#[derive(Default, Debug)]
struct Regions {
    by_start: BTreeMap<u64, Region>,
}

impl Regions {
    /// Removes `[start, end)`, splitting mappings it cuts; returns the first removed piece.
    fn remove(&mut self, start: u64, end: u64) -> Option<Region> {
        let hit: Vec<(u64, Region)> = self
            .by_start
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(s, r)| (*s, *r))
            .collect();
        for &(s, r) in &hit {
            self.by_start.remove(&s);
            if s < start {
                self.by_start.insert(s, Region { end: start, ..r });
            }
            if r.end > end {
                self.by_start.insert(end, r);
            }
        }
        hit.last().map(|&(_, r)| r)
    }

    fn insert(&mut self, start: u64, region: Region) {
        self.remove(start, region.end);
        self.by_start.insert(start, region);
    }
}

/// Per kernel-accounted site, from a walk of the outstanding allocations.
#[derive(Clone, Copy, Debug)]
pub struct HeapAges {
    pub oldest_ns: Ns,
    /// Go heap objects stand for a fraction of objects and bytes each: sums are real.
    pub aged_bytes: f64,
    pub aged_count: f64,
}

#[derive(Default)]
pub struct Model {
    pub sites: HashMap<SiteId, Site>,
    /// Allocations younger than this are left out of what reports show (`--min-age`).
    pub min_age: Ns,
    regions: HashMap<u32, Regions>,
    /// Open descriptors per process.
    fds: HashMap<u32, BTreeMap<i32, Handle>>,
    /// Live goroutines per process, by the address of their `runtime.g`.
    goroutines: HashMap<u32, HashMap<u64, Handle>>,
    /// Live threads per process (but the first), by thread id.
    threads: HashMap<u32, HashMap<u32, Handle>>,
    /// Threads whose end came before their start (the new thread can run and
    /// exit before its maker's clone returns), per process: their start,
    /// when it comes, is not kept alive.
    ended_unseen: HashMap<u32, Vec<u32>>,
    pub lost: Lost,
    pub stack_walks: StackWalks,
    pub allocs: u64,
    pub frees: u64,
    /// Heap of images replaced by an exec, per site (count, bytes): taken out
    /// of the kernel's outstanding allocations, so never freed there, and
    /// taken off the kernel's live totals here.
    gone: HashMap<SiteId, [u64; 2]>,
    /// Reachability scans made, and the latest's cost.
    pub scans: Scans,
    /// Go processes: when their GC last freed sampled objects.
    sweeps: HashMap<u32, Sweeps>,
}

/// The reachability scans of the session (see reach.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Scans {
    /// Scans of processes stopped as they exited.
    pub at_exit: u64,
    /// Scans of running processes (--scan-every).
    pub running: u64,
    /// Scans that could not complete (process gone, --scan-max-bytes): their
    /// process's blocks stay unclassified.
    pub failed: u64,
    /// The longest a process waited, stopped at exit, for its scan.
    pub longest_pause_ms: f64,
    pub latest: Option<ScanStats>,
}

fn page_up(len: u64) -> u64 {
    len.div_ceil(PAGE) * PAGE
}

impl Model {
    pub fn new(min_age: Ns) -> Self {
        Self {
            min_age,
            ..Self::default()
        }
    }

    /// Replaces the kernel-accounted sites' totals with the kernel's. Go heap
    /// entries (one per object size) stand for `1/(1-e^(-size/rate))` objects
    /// each, at the sampling rate of their process (`go_rates`), and add up into
    /// one site per stack.
    pub fn set_kernel_sites(
        &mut self,
        entries: &[(SiteKey, SiteStats)],
        go_rates: &HashMap<u32, u64>,
        now: Ns,
    ) {
        // (live count, live bytes, total count, total bytes)
        let mut sums: HashMap<SiteId, [f64; 4]> = HashMap::new();
        // Go heap, unscaled: sampled objects made per site, freed per process.
        let mut sampled: HashMap<SiteId, u64> = HashMap::new();
        let mut freed: HashMap<u32, u64> = HashMap::new();
        for (key, stats) in entries {
            if key.kind == SiteKind::GoHeap as u32 && stats.total_count > 0 {
                *sampled.entry(SiteId::in_kernel(key)).or_default() += stats.total_count;
                *freed.entry(key.tgid).or_default() += stats
                    .total_count
                    .saturating_sub(stats.live_count.max(0) as u64);
            }
            let (live_count, live_bytes) = stands_for(
                key,
                stats.live_count.max(0) as f64,
                stats.live_bytes.max(0) as f64,
                go_rates,
            );
            let (total_count, total_bytes) = stands_for(
                key,
                stats.total_count as f64,
                stats.total_bytes as f64,
                go_rates,
            );
            let sum = sums.entry(SiteId::in_kernel(key)).or_default();
            for (s, v) in sum
                .iter_mut()
                .zip([live_count, live_bytes, total_count, total_bytes])
            {
                *s += v;
            }
        }
        for (id, [live_count, live_bytes, total_count, total_bytes]) in sums {
            let site = self.sites.entry(id).or_insert_with(|| Site::new(id));
            if site.ended {
                continue;
            }
            let [gone_count, gone_bytes] = self.gone.get(&id).copied().unwrap_or_default();
            site.live_count = (live_count.round() as u64).saturating_sub(gone_count);
            site.live_bytes = (live_bytes.round() as u64).saturating_sub(gone_bytes);
            site.total_count = total_count.round() as u64;
            site.total_bytes = total_bytes.round() as u64;
            if site.live_count == 0 {
                site.oldest_ns = None;
            }
            if let Some(&n) = sampled.get(&id) {
                site.sampled.push(now, n);
            }
        }
        for (tgid, freed) in freed {
            self.sweeps.entry(tgid).or_default().update(freed, now);
        }
    }

    /// Site `from` (Go heap in use at attach, from the runtime's buckets)
    /// joins site `to` (allocating at the same place since): one row, their
    /// histories added up.
    pub fn join_go_heap(&mut self, from: SiteId, to: SiteId) {
        let Some(before) = self.sites.remove(&from) else {
            return;
        };
        if let Some(site) = self.sites.get_mut(&to) {
            site.series = before.series.plus(&site.series);
        }
    }

    /// How many objects each Go heap site holds from before attach.
    pub fn set_go_heap_before(&mut self, before: &HashMap<SiteId, f64>) {
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.kind == Kind::GoHeap && !s.ended)
        {
            site.before_attach = before.get(&site.id).map_or(0, |n| n.round() as u64);
        }
    }

    /// Go heap sites whose survival can be judged at `now`, with their cutoffs.
    pub fn survival_cutoffs(&self, now: Ns) -> HashMap<SiteId, Ns> {
        self.sites
            .values()
            .filter(|s| s.id.kind == Kind::GoHeap && !s.ended)
            .filter_map(|s| {
                let cutoff = Survival::cutoff(&s.sampled, self.sweeps.get(&s.id.tgid), now)?;
                Some((s.id, cutoff))
            })
            .collect()
    }

    /// Sets the survival of Go heap sites: `alive` sampled objects made up
    /// to each site's cutoff and `outstanding` in all are in use.
    pub fn set_survival(
        &mut self,
        cutoffs: &HashMap<SiteId, Ns>,
        alive: &HashMap<SiteId, [u64; 2]>,
        now: Ns,
    ) {
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.kind == Kind::GoHeap && !s.ended)
        {
            site.survival = cutoffs.get(&site.id).map(|&cutoff| {
                let [alive, outstanding] = alive.get(&site.id).copied().unwrap_or_default();
                Survival::new(&site.sampled, cutoff, alive, outstanding, now)
            });
        }
    }

    /// An exec took `bytes` in one allocation of site `id` away with the old image.
    pub fn heap_gone(&mut self, id: SiteId, bytes: u64) {
        let gone = self.gone.entry(id).or_default();
        gone[0] += 1;
        gone[1] += bytes;
    }

    /// Sets the oldest outstanding allocation of each kernel-accounted site and
    /// what is older than `--min-age`, from a walk of the outstanding allocations.
    pub fn set_heap_ages(&mut self, ages: &HashMap<SiteId, HeapAges>) {
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.kind.in_kernel() && !s.ended)
        {
            let a = ages.get(&site.id);
            site.oldest_ns = a.map(|a| a.oldest_ns);
            site.aged_bytes = a.map_or(0, |a| a.aged_bytes.round() as u64);
            site.aged_count = a.map_or(0, |a| a.aged_count.round() as u64);
        }
    }

    /// Sets what each mmap and handle site holds that is older than `--min-age` at `now`.
    pub fn set_tracked_ages(&mut self, now: Ns) {
        let cutoff = now.saturating_sub(self.min_age);
        for site in self
            .sites
            .values_mut()
            .filter(|s| !s.id.kind.in_kernel() && !s.ended)
        {
            site.aged_bytes = 0;
            site.aged_count = 0;
        }
        let regions = self.regions.values().flat_map(|r| &r.by_start);
        let regions = regions.map(|(&start, r)| (r.site, r.ts, r.end - start));
        let handles = self.fds.values().flat_map(|t| t.values());
        let handles = handles.chain(self.goroutines.values().flat_map(|t| t.values()));
        let handles = handles.chain(self.threads.values().flat_map(|t| t.values()));
        let handles = handles.map(|h| (h.site, h.ts, 0));
        for (site, ts, bytes) in regions.chain(handles) {
            if ts <= cutoff
                && let Some(site) = self.sites.get_mut(&site)
            {
                site.aged_bytes += bytes;
                site.aged_count += 1;
            }
        }
    }

    /// Descriptor `fd` of `tgid` is now `handle` (one already open under that
    /// number was closed implicitly, as dup2 does). `made` counts it in its
    /// site's total: false for descriptors found open at attach.
    pub fn open_fd(&mut self, tgid: u32, fd: i32, handle: Handle, made: bool) {
        self.add_handle_site(&handle, made);
        self.fds.entry(tgid).or_default().insert(fd, handle);
    }

    /// Makes sure the site of `handle` exists; `made` counts one more in its total.
    fn add_handle_site(&mut self, handle: &Handle, made: bool) {
        let site = self
            .sites
            .entry(handle.site)
            .or_insert_with(|| Site::new(handle.site));
        if made {
            site.total_count += 1;
        }
    }

    pub fn close_fds(&mut self, tgid: u32, first: u32, last: u32) {
        let Some(table) = self.fds.get_mut(&tgid) else {
            return;
        };
        let (first, last) = (
            first.min(i32::MAX as u32) as i32,
            last.min(i32::MAX as u32) as i32,
        );
        let closed: Vec<i32> = table.range(first..=last).map(|(&fd, _)| fd).collect();
        for fd in closed {
            table.remove(&fd);
        }
    }

    /// Keeps only the descriptors in `open` (after an exec closed the close-on-exec ones).
    pub fn retain_fds(&mut self, tgid: u32, open: &[i32]) {
        if let Some(table) = self.fds.get_mut(&tgid) {
            table.retain(|fd, _| open.contains(fd));
        }
    }

    pub fn fd(&self, tgid: u32, fd: i32) -> Option<&Handle> {
        self.fds.get(&tgid)?.get(&fd)
    }

    /// The open descriptors of `tgid`, for filling in details.
    pub fn fds_mut(&mut self, tgid: u32) -> impl Iterator<Item = (&i32, &mut Handle)> {
        self.fds
            .get_mut(&tgid)
            .into_iter()
            .flat_map(|t| t.iter_mut())
    }

    /// A goroutine started: its `g` and what it is. `made` counts it in its
    /// site's total: false for goroutines found alive at attach.
    pub fn start_goroutine(&mut self, tgid: u32, g: u64, handle: Handle, made: bool) {
        self.add_handle_site(&handle, made);
        self.goroutines.entry(tgid).or_default().insert(g, handle);
    }

    /// The goroutines of `tgid` under site `from` (found alive at attach,
    /// known by their `go` statement alone) go to site `to`, of the same
    /// statement: one row for the site, before attach and after.
    pub fn move_goroutines(&mut self, tgid: u32, from: SiteId, to: SiteId) {
        if let Some(table) = self.goroutines.get_mut(&tgid) {
            for handle in table.values_mut().filter(|h| h.site == from) {
                handle.site = to;
            }
        }
        self.sites.remove(&from);
        self.sites.entry(to).or_insert_with(|| Site::new(to));
    }

    /// `n` more handles were made at `site` than were seen (goroutines that
    /// started and ended between two reads, unannounced): its total only.
    pub fn count_made(&mut self, site: SiteId, n: u64) {
        self.sites
            .entry(site)
            .or_insert_with(|| Site::new(site))
            .total_count += n;
    }

    /// A goroutine exited (one started before attach is not ours: ignored).
    pub fn end_goroutine(&mut self, tgid: u32, g: u64) {
        if let Some(table) = self.goroutines.get_mut(&tgid) {
            table.remove(&g);
        }
    }

    /// A thread started: `tid` and its site. `made` counts it in its site's
    /// total: false for threads found alive at attach.
    pub fn start_thread(&mut self, tgid: u32, tid: u32, handle: Handle, made: bool) {
        self.add_handle_site(&handle, made);
        if let Some(ended) = self.ended_unseen.get_mut(&tgid)
            && let Some(at) = ended.iter().position(|&t| t == tid)
        {
            ended.swap_remove(at);
            return;
        }
        self.threads.entry(tgid).or_default().insert(tid, handle);
    }

    /// A thread ended (one leaktrace never saw start is ignored); `None`:
    /// all of them, as an exec ends every thread but the one calling it.
    pub fn end_thread(&mut self, tgid: u32, tid: Option<u32>) {
        match tid {
            Some(tid) => {
                let known = self
                    .threads
                    .get_mut(&tgid)
                    .is_some_and(|table| table.remove(&tid).is_some());
                if !known {
                    // Its start may still be on its way; a few are kept.
                    let ended = self.ended_unseen.entry(tgid).or_default();
                    if ended.len() >= MAX_ENDED_UNSEEN {
                        ended.remove(0);
                    }
                    ended.push(tid);
                }
            }
            None => {
                self.threads.remove(&tgid);
                self.ended_unseen.remove(&tgid);
            }
        }
    }

    /// Recomputes the handle, goroutine and thread sites of `tgid` from its tables.
    pub fn refresh_handles(&mut self, tgid: u32) {
        let mut details: HashMap<SiteId, HashMap<(HandleKind, &str), u64>> = HashMap::new();
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.kind.is_handle() && s.id.tgid == tgid)
        {
            site.live_count = 0;
            site.before_attach = 0;
            site.oldest_ns = None;
        }
        let fds = self.fds.get(&tgid).into_iter().flat_map(|t| t.values());
        let goroutines = self
            .goroutines
            .get(&tgid)
            .into_iter()
            .flat_map(|t| t.values());
        let threads = self.threads.get(&tgid).into_iter().flat_map(|t| t.values());
        for handle in fds.chain(goroutines).chain(threads) {
            if let Some(site) = self.sites.get_mut(&handle.site) {
                site.live_count += 1;
                site.before_attach += u64::from(handle.before_attach);
                site.oldest_ns = Some(site.oldest_ns.map_or(handle.ts, |t| t.min(handle.ts)));
                *details
                    .entry(handle.site)
                    .or_default()
                    .entry((handle.kind, &handle.detail))
                    .or_default() += 1;
            }
        }
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.kind.is_handle() && s.id.tgid == tgid)
        {
            let mut top: Vec<(HandleKind, String, u64)> = details
                .remove(&site.id)
                .unwrap_or_default()
                .into_iter()
                .map(|((kind, detail), n)| (kind, detail.to_string(), n))
                .collect();
            top.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (a.0, &a.1).cmp(&(b.0, &b.1))));
            top.truncate(TOP_DETAILS);
            site.details = top;
        }
    }

    pub fn open_handles(&self, kind: Kind) -> u64 {
        self.sites
            .values()
            .filter(|s| s.id.kind == kind)
            .map(|s| s.live_count)
            .sum()
    }

    /// The site of goroutine `g` of `tgid`, if leaktrace counts it.
    /// The live goroutines of `tgid`, as (`g`, site).
    pub fn goroutine_sites(&self, tgid: u32) -> impl Iterator<Item = (u64, SiteId)> + '_ {
        self.goroutines
            .get(&tgid)
            .into_iter()
            .flat_map(|t| t.iter().map(|(&g, h)| (g, h.site)))
    }

    pub fn goroutine_site(&self, tgid: u32, g: u64) -> Option<SiteId> {
        Some(self.goroutines.get(&tgid)?.get(&g)?.site)
    }

    /// Where `tgid`'s goroutines wait, by site: replaces what was read before.
    pub fn set_waiting(&mut self, tgid: u32, mut waiting: HashMap<SiteId, Vec<Waiting>>) {
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.tgid == tgid && s.id.kind == Kind::Goroutine && !s.ended)
        {
            site.waiting = waiting.remove(&site.id).unwrap_or_default();
        }
    }

    /// Adds a point to every site's series; `t` is seconds since tracing began.
    /// The blocks of process `tgid` by site and class, from a scan: replaces
    /// what its previous scan said.
    pub fn set_reach(&mut self, tgid: u32, reach: HashMap<SiteId, Reach>) {
        for site in self.sites.values_mut().filter(|s| s.id.tgid == tgid) {
            site.reach = None;
        }
        for (id, r) in reach {
            self.sites.entry(id).or_insert_with(|| Site::new(id)).reach = Some(r);
        }
    }

    pub fn sample(&mut self, t: f64) {
        for site in self.sites.values_mut() {
            site.series.push(Point {
                t: t as f32,
                bytes: site.live_bytes as f32,
                count: site.live_count as f32,
            });
        }
    }

    /// Applies anonymous mmap/munmap/mremap events (a new mapping's site is its
    /// event's stack); the sites of each process touched are recomputed once
    /// per batch.
    pub fn apply_map_events(&mut self, events: &[MapEvent]) {
        let mut touched: Vec<u32> = Vec::new();
        for ev in events {
            self.apply_map_event(ev);
            if !touched.contains(&ev.tgid) {
                touched.push(ev.tgid);
            }
        }
        for tgid in touched {
            self.refresh_mmap(tgid);
        }
    }

    fn apply_map_event(&mut self, ev: &MapEvent) {
        let regions = self.regions.entry(ev.tgid).or_default();
        let end = |addr: u64, len: u64| addr.saturating_add(page_up(len));
        match ev.event_kind() {
            Some(EventKind::Mmap) => {
                let id = SiteId {
                    tgid: ev.tgid,
                    kind: Kind::Mmap,
                    stack_id: ev.stack_id,
                };
                regions.insert(
                    ev.addr,
                    Region {
                        end: end(ev.addr, ev.len),
                        site: id,
                        ts: ev.ts_ns,
                    },
                );
                let site = self.sites.entry(id).or_insert_with(|| Site::new(id));
                site.total_bytes += page_up(ev.len);
                site.total_count += 1;
            }
            Some(EventKind::Munmap) => {
                regions.remove(ev.addr, end(ev.addr, ev.len));
            }
            Some(EventKind::Mremap) => {
                // mremap moves (and resizes) a mapping we know; others are not ours.
                if let Some(old) = regions.remove(ev.old_addr, end(ev.old_addr, ev.old_len)) {
                    let moved = Region {
                        end: end(ev.addr, ev.len),
                        ..old
                    };
                    regions.insert(ev.addr, moved);
                }
            }
            _ => {}
        }
    }

    /// `child` was forked from `parent`: it holds copies of the parent's
    /// descriptors and mappings, under sites of its own.
    pub fn fork(&mut self, parent: u32, child: u32) {
        let rekey = |id: SiteId| SiteId { tgid: child, ..id };
        let mut sites: Vec<(SiteId, Frames)> = Vec::new();
        let fds: BTreeMap<i32, Handle> = self
            .fds
            .get(&parent)
            .map(|t| {
                t.iter()
                    .map(|(&fd, h)| {
                        (
                            fd,
                            Handle {
                                site: rekey(h.site),
                                ..h.clone()
                            },
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let regions = self.regions.get(&parent).map(|r| Regions {
            by_start: r
                .by_start
                .iter()
                .map(|(&s, r)| {
                    (
                        s,
                        Region {
                            site: rekey(r.site),
                            ..*r
                        },
                    )
                })
                .collect(),
        });
        let used = fds.values().map(|h| h.site);
        let used = used.chain(
            regions
                .iter()
                .flat_map(|r| r.by_start.values().map(|r| r.site)),
        );
        for id in used {
            let frames = self
                .sites
                .get(&SiteId { tgid: parent, ..id })
                .map(|s| s.frames.clone())
                .unwrap_or_default();
            sites.push((id, frames));
        }
        for (id, frames) in sites {
            let site = self.sites.entry(id).or_insert_with(|| Site::new(id));
            if site.frames.is_empty() {
                site.frames = frames;
            }
        }
        self.fds.insert(child, fds);
        if let Some(regions) = regions {
            self.regions.insert(child, regions);
        }
        self.refresh_handles(child);
        self.refresh_mmap(child);
    }

    /// `tgid` has exited: its descriptor, goroutine and mapping tables go, and
    /// its sites stop changing. With `keep`, they all stay as the record of
    /// what it held at exit; without, only those that say something once it
    /// is gone: outstanding heap that no scan found reachable, Go heap and
    /// goroutines — exit itself closed its descriptors, unmapped its memory
    /// and ended its threads. Returns whether any site of it stayed.
    pub fn end_process(&mut self, tgid: u32, keep: bool) -> bool {
        self.fds.remove(&tgid);
        self.goroutines.remove(&tgid);
        self.threads.remove(&tgid);
        self.ended_unseen.remove(&tgid);
        self.regions.remove(&tgid);
        let says_something = |s: &Site| {
            s.live_count > 0
                && match s.id.kind {
                    Kind::Heap => s.reach.is_none_or(|r| r.lost_count() > 0),
                    Kind::GoHeap | Kind::Goroutine => true,
                    _ => false,
                }
        };
        self.sites
            .retain(|id, s| id.tgid != tgid || keep || says_something(s));
        self.gone.retain(|id, _| id.tgid != tgid);
        self.sweeps.remove(&tgid);
        let mut kept = false;
        for site in self.sites.values_mut().filter(|s| s.id.tgid == tgid) {
            site.ended = true;
            kept = true;
        }
        kept
    }

    /// Drops the sites an ended process left (see [`Model::end_process`]).
    pub fn forget_sites(&mut self, tgid: u32) {
        self.sites.retain(|id, _| id.tgid != tgid);
    }

    /// Gives back the room of tables that ended processes emptied: a burst
    /// of short processes leaves them far larger than what stays.
    pub fn compact(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
            if map.len() * 4 < map.capacity() {
                map.shrink_to_fit();
            }
        }
        shrink(&mut self.sites);
        shrink(&mut self.regions);
        shrink(&mut self.fds);
        shrink(&mut self.goroutines);
        shrink(&mut self.threads);
        shrink(&mut self.ended_unseen);
        shrink(&mut self.gone);
        shrink(&mut self.sweeps);
    }

    /// Drops an mmap site and its mappings: memory another site accounts for.
    pub fn forget_mmap_site(&mut self, id: SiteId) {
        if let Some(regions) = self.regions.get_mut(&id.tgid) {
            regions.by_start.retain(|_, r| r.site != id);
        }
        self.sites.remove(&id);
    }

    /// An exec replaced every mapping of `tgid`.
    pub fn forget_mappings(&mut self, tgid: u32) {
        self.regions.remove(&tgid);
        self.refresh_mmap(tgid);
    }

    /// Recomputes the mmap sites of `tgid` from its mappings.
    fn refresh_mmap(&mut self, tgid: u32) {
        for site in self
            .sites
            .values_mut()
            .filter(|s| s.id.kind == Kind::Mmap && s.id.tgid == tgid)
        {
            site.live_bytes = 0;
            site.live_count = 0;
            site.oldest_ns = None;
        }
        let Some(regions) = self.regions.get(&tgid) else {
            return;
        };
        for (&start, region) in &regions.by_start {
            if let Some(site) = self.sites.get_mut(&region.site) {
                site.live_bytes += region.end - start;
                site.live_count += 1;
                site.oldest_ns = Some(site.oldest_ns.map_or(region.ts, |t| t.min(region.ts)));
            }
        }
    }

    pub fn live_bytes(&self, kind: Kind) -> u64 {
        self.sites
            .values()
            .filter(|s| s.id.kind == kind)
            .map(|s| s.live_bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, addr: u64, len: u64, old_addr: u64, old_len: u64) -> MapEvent {
        MapEvent {
            kind: kind as u32,
            tgid: 7,
            ts_ns: 1,
            addr,
            len,
            old_addr,
            old_len,
            stack_id: 3,
        }
    }

    fn apply(model: &mut Model, ev: MapEvent, _: u64) {
        model.apply_map_events(&[ev]);
    }

    fn mmap_site(model: &Model) -> &Site {
        model
            .sites
            .values()
            .find(|s| s.id.kind == Kind::Mmap)
            .unwrap()
    }

    #[test]
    fn partial_munmap_splits_a_mapping() {
        let mut m = Model::default();
        apply(&mut m, event(EventKind::Mmap, 0x10000, 10 * PAGE, 0, 0), 0);
        apply(
            &mut m,
            event(EventKind::Munmap, 0x10000 + 2 * PAGE, 3 * PAGE, 0, 0),
            0,
        );
        let s = mmap_site(&m);
        assert_eq!((s.live_bytes, s.live_count), (7 * PAGE, 2));
        apply(&mut m, event(EventKind::Munmap, 0x10000, 2 * PAGE, 0, 0), 0);
        apply(
            &mut m,
            event(EventKind::Munmap, 0x10000 + 9 * PAGE, 100, 0, 0),
            0,
        );
        let s = mmap_site(&m);
        assert_eq!(
            (s.live_bytes, s.live_count, s.total_bytes),
            (4 * PAGE, 1, 10 * PAGE)
        );
    }

    #[test]
    fn mremap_moves_and_resizes() {
        let mut m = Model::default();
        apply(&mut m, event(EventKind::Mmap, 0x10000, 2 * PAGE, 0, 0), 0);
        apply(
            &mut m,
            event(EventKind::Mremap, 0x90000, 5 * PAGE, 0x10000, 2 * PAGE),
            0,
        );
        assert_eq!(mmap_site(&m).live_bytes, 5 * PAGE);
        // Not ours: ignored.
        apply(
            &mut m,
            event(EventKind::Mremap, 0xa0000, PAGE, 0x50000, PAGE),
            0,
        );
        assert_eq!(mmap_site(&m).live_bytes, 5 * PAGE);
        apply(&mut m, event(EventKind::Munmap, 0x90000, 5 * PAGE, 0, 0), 0);
        assert_eq!((mmap_site(&m).live_bytes, mmap_site(&m).live_count), (0, 0));
    }

    #[test]
    fn map_fixed_over_a_mapping_replaces_it() {
        let mut m = Model::default();
        apply(&mut m, event(EventKind::Mmap, 0x10000, 4 * PAGE, 0, 0), 0);
        apply(
            &mut m,
            event(EventKind::Mmap, 0x10000 + PAGE, PAGE, 0, 0),
            0,
        );
        let s = mmap_site(&m);
        assert_eq!((s.live_bytes, s.live_count), (4 * PAGE, 3));
    }
}
