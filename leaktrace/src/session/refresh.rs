//! What is read each second: the kernel's totals and counters, ages, the Go
//! runtimes' sampling rates, sockets' addresses — and which targets have
//! exited, whose state then goes, in userspace and in the kernel.
use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use leaktrace_common::{Counter, SiteKey, SiteKind, SiteStats, StackId, unwind::STACK_END_KINDS};
use log::{debug, warn};

use super::{Pump, now_ns, seams::Process};
use crate::{
    golang::{self, GoRuntime},
    handles,
    model::{HeapAges, Kind, Site, SiteId, StackWalks, TOP_DETAILS, Waiting, stands_for},
    report::human_bytes,
    sampling::DEFAULT_MEM_PROFILE_RATE,
};

/// Goroutines whose wait is read per process each time, at most.
const WAITING_READ: usize = 20_000;

impl Pump {
    /// Reads per-site totals and counters from the kernel.
    pub(super) fn refresh(&mut self) -> Result<()> {
        self.read_goroutines();
        self.ingest.recount();
        self.read_go_rates();
        let rates = self.go_rates();
        let mut entries = self.node.probes.sites()?;
        let mut before: HashMap<SiteId, f64> = HashMap::new();
        if !self.go_heap_before.is_empty() {
            self.join_go_heap_before();
            // Go heap from before attach: what is left of each bucket's objects.
            let left = self.node.probes.go_before_attach()?;
            for entry in left.iter() {
                let (key, count) = entry.context("reading the Go heap before attach")?;
                let Some(b) = self.go_heap_before.get(&(key.tgid, key.addr)) else {
                    continue;
                };
                let site = SiteKey {
                    tgid: key.tgid,
                    kind: SiteKind::GoHeap as u32,
                    stack_id: b.stack_id,
                    extra: b.size.min(u32::MAX as u64) as u32,
                    _pad: 0,
                };
                let count = count.max(0);
                let stats = SiteStats {
                    live_bytes: count * b.size as i64,
                    live_count: count,
                    total_bytes: 0,
                    total_count: 0,
                };
                let (objects, _) = stands_for(&site, count as f64, 0.0, &rates);
                *before.entry(SiteId::in_kernel(&site)).or_default() += objects;
                entries.push((site, stats));
            }
        }
        self.ingest
            .model
            .set_kernel_sites(&entries, &rates, now_ns());
        if !self.go_heap_before.is_empty() {
            self.ingest.model.set_go_heap_before(&before);
        }
        let c = self.node.probes.counters()?;
        let lost = &mut self.ingest.model.lost;
        lost.allocs_map_full = c[Counter::AllocsFull as usize];
        lost.sites_map_full = c[Counter::SitesFull as usize];
        lost.stacks_lost = c[Counter::StackLost as usize];
        lost.ring_buffer_overruns = c[Counter::EventsLost as usize];
        lost.syscalls_map_full = c[Counter::SyscallsFull as usize];
        lost.unfollowed_forks = c[Counter::UnfollowedForks as usize];
        let ends = Counter::StackEnds as usize;
        self.ingest.model.stack_walks = StackWalks::from_counters(
            c[Counter::StackWalks as usize],
            c[Counter::StackFrames as usize],
            &c[ends..ends + STACK_END_KINDS as usize],
        );
        self.ingest.model.allocs = c[Counter::Allocs as usize];
        self.ingest.model.frees = c[Counter::Frees as usize];
        Ok(())
    }

    /// Go heap in use at attach joins the site allocating at the same place
    /// since: one row, one verdict. The runtime's bucket stacks and the
    /// walked ones differ below the program's code (inlined frames, depth),
    /// so sites match by their first two frames of the program's code, and
    /// only where one site does.
    fn join_go_heap_before(&mut self) {
        let waiting: HashSet<(u32, StackId)> = self
            .go_heap_before
            .iter()
            .filter(|(_, b)| !b.joined)
            .map(|(&(tgid, _), b)| (tgid, b.stack_id))
            .collect();
        if waiting.is_empty() {
            return;
        }
        // Only when Go heap sites came since the last look: buckets allocated
        // at init and never since wait for good.
        let sites = self.ingest.model.sites.values();
        let go_heap = sites.filter(|s| s.id.kind == Kind::GoHeap).count();
        if go_heap == self.go_heap_sites_looked {
            return;
        }
        self.go_heap_sites_looked = go_heap;
        self.ingest.symbolize(&self.node.probes, &mut self.procfs);
        let model = &self.ingest.model;
        let mut since: HashMap<Place, Vec<SiteId>> = HashMap::new();
        for s in model.sites.values().filter(|s| {
            s.id.kind == Kind::GoHeap && !s.ended && !waiting.contains(&(s.id.tgid, s.id.stack_id))
        }) {
            if let Some(p) = place(s) {
                since.entry(p).or_default().push(s.id);
            }
        }
        let mut joins = Vec::new();
        for &(tgid, stack_id) in &waiting {
            let from = SiteId {
                tgid,
                kind: Kind::GoHeap,
                stack_id,
            };
            let matching = model
                .sites
                .get(&from)
                .and_then(place)
                .and_then(|p| since.get(&p));
            if let Some([to]) = matching.map(Vec::as_slice) {
                joins.push((from, *to));
            }
        }
        for (from, to) in joins {
            for ((tgid, _), b) in self.go_heap_before.iter_mut() {
                if *tgid == from.tgid && b.stack_id == from.stack_id {
                    b.stack_id = to.stack_id;
                    b.joined = true;
                }
            }
            self.ingest.model.join_go_heap(from, to);
        }
    }

    /// Goroutines that ended and started since the last look. No probe sees
    /// a goroutine end (one probe per goroutine: leaktrace-ebpf/src/go.rs):
    /// its `g` says so, dead or reused by a newer goroutine.
    fn read_goroutines(&mut self) {
        let pids = self.targets.live_go();
        if pids.is_empty() {
            return;
        }
        let made = self.go_made();
        for pid in pids {
            self.read_goroutines_of(pid, &made);
        }
    }

    /// The kernel's counts of goroutines made, by tgid and `go` statement
    /// (none when they cannot be read: then no goroutine is looked for).
    pub(super) fn go_made(&self) -> HashMap<u32, Vec<(u64, u64)>> {
        self.node.probes.go_creators().unwrap_or_else(|e| {
            debug!("goroutines made are not known: {e}");
            HashMap::new()
        })
    }

    /// Goroutines of Go target `pid` that ended since the last look, and
    /// those started unannounced (a busy `go` statement announces only some:
    /// leaktrace-ebpf/src/go.rs), found in the runtime's list.
    /// `made`: [`Pump::go_made`].
    pub(super) fn read_goroutines_of(&mut self, pid: u32, made: &HashMap<u32, Vec<(u64, u64)>>) {
        let Some(go) = self.targets.get(pid).and_then(|t| t.go.as_ref()) else {
            return;
        };
        let known = self.ingest.goroutines(pid);
        for g in go.runtime.ended(pid, &known) {
            self.ingest.end_goroutine(pid, g);
        }
        let Some(made) = made.get(&pid) else {
            return;
        };
        if !self.ingest.goroutines_unannounced(pid, made) {
            return;
        }
        match go.runtime.goroutines(pid) {
            Ok(live) => self
                .ingest
                .goroutines_found(pid, now_ns(), &live, made, &mut self.procfs),
            Err(e) => debug!("PID {pid}: goroutines started unannounced are not known: {e}"),
        }
    }

    /// Oldest outstanding allocation per site, and what is older than --min-age:
    /// one walk of the heap allocations map, and the mmap regions.
    pub(super) fn update_ages(&mut self) -> Result<()> {
        let now = now_ns();
        self.ages_at = now;
        let cutoff = now.saturating_sub(self.ingest.model.min_age);
        let rates = self.go_rates();
        let mut ages: HashMap<SiteId, HeapAges> = HashMap::new();
        let cutoffs = self.ingest.model.survival_cutoffs(now);
        // Per Go heap site with a cutoff: sampled objects in use made up to
        // it, and in all.
        let mut alive: HashMap<SiteId, [u64; 2]> = HashMap::new();
        self.node.probes.each_alloc(|_, info| {
            let id = SiteId::in_kernel(&info.site);
            if let Some(&cutoff) = cutoffs.get(&id) {
                let a = alive.entry(id).or_default();
                a[0] += u64::from(info.ts_ns <= cutoff);
                a[1] += 1;
            }
            let a = ages.entry(id).or_insert(HeapAges {
                oldest_ns: info.ts_ns,
                aged_bytes: 0.0,
                aged_count: 0.0,
            });
            a.oldest_ns = a.oldest_ns.min(info.ts_ns);
            if info.ts_ns <= cutoff {
                let (count, bytes) = stands_for(&info.site, 1.0, info.size as f64, &rates);
                a.aged_bytes += bytes;
                a.aged_count += count;
            }
        })?;
        self.ingest.model.set_heap_ages(&ages);
        self.ingest.model.set_survival(&cutoffs, &alive, now);
        self.ingest.model.set_tracked_ages(now);
        Ok(())
    }

    /// Reads each live Go target's heap sampling rate, turning sampling on
    /// where it is off (unless --no-go-heap-sampling).
    pub(super) fn read_go_rates(&mut self) {
        for t in self.targets.live_mut() {
            let Some(go) = &mut t.go else { continue };
            let pid = t.target.pid;
            match go.runtime.mem_profile_rate(pid) {
                Ok(0) if self.go_sample_rate.is_some() && !go.sampling_set => {
                    let rate = self.go_sample_rate.unwrap_or(DEFAULT_MEM_PROFILE_RATE);
                    match go.runtime.set_mem_profile_rate(pid, rate) {
                        Ok(()) => {
                            warn!(
                                "PID {pid}: Go heap sampling was off (runtime.MemProfileRate 0: \
                                 no pprof in this binary): turned on, one sample per {} \
                                 (--no-go-heap-sampling leaves it off)",
                                human_bytes(rate)
                            );
                            go.rate = Some(rate);
                        }
                        Err(e) => warn!("PID {pid}: Go heap sampling left off: {e}"),
                    }
                    // Once: a program that turns it off again is left so.
                    go.sampling_set = true;
                }
                Ok(rate) => go.rate = Some(rate),
                Err(e) => debug!("{e}"),
            }
        }
    }

    /// Where each live Go target's goroutines wait, by site: read from the
    /// runtime (each goroutine's status and parked stack, `golang.rs`),
    /// grouped by reason and the function of the program's own they wait
    /// in. A goroutine-heavy service has tens of thousands: at most
    /// [`WAITING_READ`] are read per process each time.
    pub(super) fn read_waiting(&mut self) {
        for pid in self.targets.live_go() {
            let Some(runtime) = self.targets.get(pid).and_then(|t| t.go.as_ref()) else {
                continue;
            };
            let live = match runtime.runtime.goroutines(pid) {
                Ok(live) => live,
                Err(e) => {
                    debug!("PID {pid}: where goroutines wait is not known: {e}");
                    continue;
                }
            };
            let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
                continue;
            };
            let mut groups: HashMap<SiteId, HashMap<Waiting, u64>> = HashMap::new();
            for g in live.iter().take(WAITING_READ) {
                let Some(site) = self.ingest.model.goroutine_site(pid, g.g) else {
                    continue;
                };
                let pcs = GoRuntime::parked_stack(&mem, g);
                let frames: Vec<_> = pcs
                    .iter()
                    .flat_map(|&pc| self.procfs.frames(pid, pc))
                    .collect();
                let names = frames.iter().filter_map(|f| f.function.as_deref());
                let reason = golang::wait_reason(g.status, names);
                let named = |f: &&std::sync::Arc<crate::symbolize::Frame>| {
                    f.function
                        .as_deref()
                        .is_some_and(|n| !n.starts_with("runtime."))
                };
                let at = frames
                    .iter()
                    .find(|f| f.is_own_code())
                    .or_else(|| frames.iter().find(named));
                let key = Waiting {
                    reason,
                    function: at.and_then(|f| f.function.clone()),
                    file: at.and_then(|f| f.file.clone()),
                    line: at.and_then(|f| f.line),
                    count: 0,
                };
                *groups.entry(site).or_default().entry(key).or_default() += 1;
            }
            let waiting = groups
                .into_iter()
                .map(|(site, group)| {
                    let mut list: Vec<Waiting> = group
                        .into_iter()
                        .map(|(w, count)| Waiting { count, ..w })
                        .collect();
                    list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(b.reason)));
                    list.truncate(TOP_DETAILS);
                    (site, list)
                })
                .collect();
            self.ingest.model.set_waiting(pid, waiting);
        }
    }

    /// The Go heap sampling rates known, by PID.
    pub(super) fn go_rates(&self) -> HashMap<u32, u64> {
        self.targets
            .live()
            .filter_map(|t| Some((t.target.pid, t.go.as_ref()?.rate?)))
            .collect()
    }

    /// Fills in sockets' protocol and addresses from /proc/PID/net, once they
    /// are connected or listening.
    pub(super) fn resolve_sockets(&mut self) {
        let live: Vec<u32> = self.targets.live().map(|t| t.target.pid).collect();
        for pid in live {
            let mut sockets = None;
            for (&fd, handle) in self.ingest.model.fds_mut(pid) {
                if handle.kind != handles::HandleKind::Socket {
                    continue;
                }
                let Some(inode) = handles::link(pid, fd).and_then(|l| handles::socket_inode(&l))
                else {
                    continue;
                };
                let table = sockets.get_or_insert_with(|| handles::Sockets::read(pid));
                if let Some(detail) = table.describe(inode) {
                    handle.detail = detail.to_string();
                }
            }
            self.ingest.model.refresh_handles(pid);
        }
    }

    /// Ends the targets that have exited: their last events applied and sites
    /// symbolized, then their state goes — the core's tables, their memory
    /// map unless their sites need it, the kernel's entries; the report keeps
    /// what they leaked. True when no target is left.
    /// Ends `pid`'s state; whether some of its sites stay in the report
    /// (`root`: all of them; see [`Ingest::end`]). None stay when exited
    /// processes are forgotten.
    pub(super) fn end_process(&mut self, pid: u32, root: bool) -> bool {
        let kept = self.ingest.end(pid, root && !self.forget_exited);
        if self.forget_exited && kept {
            self.ingest.model.forget_sites(pid);
            return false;
        }
        kept
    }

    pub(super) fn check_exits(&mut self) -> bool {
        let pids = self.targets.exited();
        if pids.is_empty() {
            return self.targets.is_empty();
        }
        self.drain_events();
        // What their sites will say from now on: totals, ages, symbols.
        if let Err(e) = self.refresh().and_then(|()| self.update_ages()) {
            warn!("the totals of exited processes may be a second old: {e:#}");
        }
        self.ingest.symbolize(&self.node.probes, &mut self.procfs);
        let (mut probed, mut go) = (false, false);
        for &pid in &pids {
            let Some(t) = self.targets.take(pid) else {
                continue;
            };
            debug!("PID {pid} exited");
            go |= t.go.is_some();
            probed |= !t.allocators.allocators.is_empty();
            self.confirmations.remove(&pid);
            self.node.unwinder.remove(&mut self.node.probes, pid);
            self.go_heap_before.retain(|&(tgid, _), _| tgid != pid);
            let kept = self.end_process(pid, t.root);
            if !kept {
                self.procfs.maps.remove(&pid);
            }
            if !self.forget_exited {
                self.targets.ended(&t, kept);
            }
        }
        self.compact_due = true;
        // Their PIDs may be other processes' next.
        self.node.probes.forget(&pids, probed || go, go);
        self.targets.is_empty()
    }
}

/// Where a site allocates: process, the first frame of the program's own
/// code (function, file, line) and the next one's function.
type Place<'a> = (u32, &'a str, Option<&'a str>, Option<u32>, Option<&'a str>);

fn place(s: &Site) -> Option<Place<'_>> {
    let mut own = s.frames.iter().filter(|f| f.is_own_code());
    let first = own.next()?;
    Some((
        s.id.tgid,
        first.function.as_deref()?,
        first.file.as_deref(),
        first.line,
        own.next().and_then(|f| f.function.as_deref()),
    ))
}
