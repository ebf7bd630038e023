//! One tracing session: find the targets, attach, pump the kernel's data into the
//! model, print tables, and produce the final report.
use std::{
    collections::HashMap,
    ffi::OsString,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use leaktrace_common::{Counter, MapEvent, NO_STACK, USER_STACK_WORDS};
use log::{debug, info, warn};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    allocator::{self, Allocator},
    limits::MemoryLimit,
    model::{HeapAges, Kind, Model, Ns, SiteId},
    output::Output,
    preflight,
    probes::{Families, Limits, Probes},
    procmaps::ProcMaps,
    report::{ModuleMap, Report, TargetInfo},
    symbolize::Symbolizer,
    target::{Child, Launched, Target},
};

/// Everything a session needs to know, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub pids: Vec<u32>,
    pub command: Vec<OsString>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
    pub outputs: Vec<Output>,
    pub snapshot_every: Option<Duration>,
    pub quiet: bool,
    /// Leave allocations younger than this out of reports.
    pub min_age: Duration,
    pub families: Families,
    pub limits: Limits,
}

/// How often the ring buffer is drained (no wakeup per event: see docs/design.md).
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often per-site totals are read and targets checked.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

struct Traced {
    target: Target,
    allocator: Option<Allocator>,
    child: Option<Child>,
    exited: bool,
}

pub async fn run(opts: Options) -> Result<Report> {
    preflight::check()?;
    let mut probes = Probes::load(opts.limits, opts.families)?;
    let events = probes.take_events()?;
    let mut traced = Vec::new();
    for &pid in &opts.pids {
        let target = Target::existing(pid)?;
        let allocator = if opts.families.heap {
            let alloc = target.allocator().with_context(|| format!("PID {pid}"))?;
            probes.attach_allocator(&target, &alloc)?;
            Some(alloc)
        } else {
            None
        };
        probes.add_target(pid)?;
        info!(
            "tracing PID {pid} ({}): allocator {:?}",
            target.comm, allocator
        );
        traced.push(Traced {
            target,
            allocator,
            child: None,
            exited: false,
        });
    }
    if !opts.command.is_empty() {
        let launched = Launched::spawn(&opts.command)?;
        let target = launched.target();
        let allocator = if opts.families.heap {
            let alloc = allocator::find(
                &launched.exe,
                &preload_from_env(),
                &allocator::search_library,
            )?;
            probes.attach_allocator(&target, &alloc)?;
            Some(alloc)
        } else {
            None
        };
        probes.add_target(target.pid)?;
        info!("started {} as PID {}", launched.exe.display(), target.pid);
        let child = launched.release();
        traced.push(Traced {
            target,
            allocator,
            child: Some(child),
            exited: false,
        });
    }
    let mut pump = Pump {
        probes,
        events,
        model: Model::new(opts.min_age.as_nanos() as Ns),
        symbolizer: Symbolizer::new(),
        maps: HashMap::new(),
        stacks: HashMap::new(),
        traced,
        started: now_ns(),
    };
    pump.trace(&opts).await?;
    Ok(pump.finish())
}

fn preload_from_env() -> Vec<PathBuf> {
    std::env::var("LD_PRELOAD")
        .map(|v| allocator::preload_paths(&v).map(PathBuf::from).collect())
        .unwrap_or_default()
}

/// CLOCK_MONOTONIC in nanoseconds, comparable with `bpf_ktime_get_ns`.
pub fn now_ns() -> Ns {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Pump {
    probes: Probes,
    events: RingBuf<MapData>,
    model: Model,
    symbolizer: Symbolizer,
    /// Latest memory map of each target, kept after it exits.
    maps: HashMap<u32, ProcMaps>,
    /// Return addresses of each stack id seen.
    stacks: HashMap<u32, Vec<u64>>,
    traced: Vec<Traced>,
    started: Ns,
}

enum Stop {
    Duration,
    Signal(&'static str),
    TargetsExited,
}

impl Pump {
    async fn trace(&mut self, opts: &Options) -> Result<()> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let mut table =
            tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
        let deadline = opts.duration.map(|d| Instant::now() + d);
        // Without --snapshot-every this timer is never polled.
        let every = opts.snapshot_every.unwrap_or(Duration::MAX / 4);
        let mut snapshot = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut snapshots = 0;
        let stop = loop {
            tokio::select! {
                _ = sigint.recv() => break Stop::Signal("interrupted"),
                _ = sigterm.recv() => break Stop::Signal("terminated"),
                _ = drain.tick() => self.drain_events(),
                _ = refresh.tick() => {
                    self.refresh()?;
                    self.sample();
                    if self.check_exits() {
                        break Stop::TargetsExited;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break Stop::Duration;
                    }
                }
                _ = table.tick(), if !opts.quiet => {
                    print!("{}", self.current_report()?.table(opts.top));
                }
                _ = snapshot.tick(), if opts.snapshot_every.is_some() => {
                    snapshots += 1;
                    self.snapshot(&opts.outputs, snapshots)?;
                }
            }
        };
        match stop {
            Stop::Duration => info!("--duration reached"),
            Stop::Signal(how) => info!("{how}: writing the final report"),
            Stop::TargetsExited => info!("every target has exited"),
        }
        self.drain_events();
        self.refresh()?;
        self.sample();
        self.update_ages()?;
        self.symbolize();
        Ok(())
    }

    /// Brings totals, ages and symbols up to date and snapshots the model.
    fn current_report(&mut self) -> Result<Report> {
        self.refresh()?;
        self.update_ages()?;
        self.symbolize();
        Ok(self.report())
    }

    /// Writes every output as snapshot number `n`.
    fn snapshot(&mut self, outputs: &[Output], n: u32) -> Result<()> {
        let report = self.current_report()?;
        for output in outputs {
            let path = output.write_snapshot(&report, n)?;
            info!("snapshot {n}: {}", path.display());
        }
        Ok(())
    }

    /// One point of every site's series, for the verdicts.
    fn sample(&mut self) {
        let t = now_ns().saturating_sub(self.started) as f64 / 1e9;
        self.model.sample(t);
    }

    /// Stops commands leaktrace started itself if they still run; PIDs given with
    /// --pid are never touched.
    fn finish(mut self) -> Report {
        let report = self.report();
        for t in &mut self.traced {
            if let Some(child) = &mut t.child {
                child.terminate();
            }
        }
        report
    }

    fn report(&mut self) -> Report {
        let targets = self
            .traced
            .iter()
            .map(|t| TargetInfo {
                pid: t.target.pid,
                comm: t.target.comm.clone(),
                exe: t.target.exe.clone(),
                allocator: t.allocator.as_ref().map(|a| a.path.clone()),
                exited: t.exited,
                memory_limit: if t.exited {
                    None
                } else {
                    MemoryLimit::of(t.target.pid)
                },
            })
            .collect();
        let modules = self.modules();
        Report::build(&self.model, targets, modules, self.started, now_ns())
    }

    /// The code mappings of every target, from their latest memory maps.
    fn modules(&mut self) -> Vec<ModuleMap> {
        let mut modules = Vec::new();
        for (&pid, maps) in &self.maps {
            for m in maps.code() {
                let path = m.path.as_deref().expect("code() has paths");
                modules.push(ModuleMap {
                    pid,
                    start: m.start,
                    limit: m.end,
                    offset: m.offset,
                    path: path.to_string_lossy().into_owned(),
                    build_id: self.symbolizer.build_id(pid, path),
                });
            }
        }
        modules
    }

    /// Applies the ring buffer's events. Also refreshes the targets' memory maps,
    /// so even short-lived targets symbolize after they exit.
    fn drain_events(&mut self) {
        self.refresh_maps();
        let mut batch = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() < size_of::<MapEvent>() {
                warn!("short event of {} bytes ignored", item.len());
                continue;
            }
            // SAFETY: the eBPF side writes whole MapEvents; read unaligned from the ring.
            batch.push(unsafe { std::ptr::read_unaligned::<MapEvent>(item.as_ptr().cast()) });
        }
        let located: Vec<(MapEvent, u64)> = batch
            .into_iter()
            .map(|event| (event, self.wrapper_caller(&event)))
            .collect();
        self.model.apply_map_events(&located);
    }

    /// The return address a syscall's frame-pointer stack misses when the syscall
    /// was made from a frameless wrapper (glibc's mmap): found in the copied stack
    /// words at the wrapper's frame depth.
    fn wrapper_caller(&mut self, event: &MapEvent) -> u64 {
        if event.stack_id == NO_STACK || event.kind == leaktrace_common::EventKind::Munmap as u32 {
            return 0;
        }
        let Some(ip) = self.stack(event.stack_id).first().copied() else {
            return 0;
        };
        let Some(maps) = self.maps.get(&event.tgid) else {
            return 0;
        };
        match self.symbolizer.frameless_depth(event.tgid, maps, ip) {
            Some(depth) if ((depth / 8) as usize) < USER_STACK_WORDS => {
                event.stack_words[(depth / 8) as usize]
            }
            _ => 0,
        }
    }

    fn stack(&mut self, stack_id: u32) -> &[u64] {
        if !self.stacks.contains_key(&stack_id) {
            let ips = self
                .probes
                .stacks()
                .ok()
                .and_then(|s| s.get(&stack_id, 0).ok())
                .map(|t| t.frames().iter().map(|f| f.ip).collect())
                .unwrap_or_default();
            self.stacks.insert(stack_id, ips);
        }
        &self.stacks[&stack_id]
    }

    /// Reads per-site totals and counters from the kernel.
    fn refresh(&mut self) -> Result<()> {
        let sites = self.probes.sites()?;
        for entry in sites.iter() {
            let (key, stats) = entry.context("reading the sites map")?;
            self.model.set_heap(&key, &stats);
        }
        let c = self.probes.counters()?;
        let lost = &mut self.model.lost;
        lost.allocs_map_full = c[Counter::AllocsFull as usize];
        lost.sites_map_full = c[Counter::SitesFull as usize];
        lost.stacks_lost = c[Counter::StackLost as usize];
        lost.ring_buffer_overruns = c[Counter::EventsLost as usize];
        lost.syscalls_map_full = c[Counter::SyscallsFull as usize];
        self.model.allocs = c[Counter::Allocs as usize];
        self.model.frees = c[Counter::Frees as usize];
        Ok(())
    }

    /// Oldest outstanding allocation per site, and what is older than --min-age:
    /// one walk of the heap allocations map, and the mmap regions.
    fn update_ages(&mut self) -> Result<()> {
        let now = now_ns();
        let cutoff = now.saturating_sub(self.model.min_age);
        let mut ages: HashMap<(u32, u32), HeapAges> = HashMap::new();
        let allocs = self.probes.allocs()?;
        for entry in allocs.iter() {
            let Ok((_, info)) = entry else { continue }; // freed while walking
            let a = ages
                .entry((info.site.tgid, info.site.stack_id))
                .or_insert(HeapAges {
                    oldest_ns: info.ts_ns,
                    aged_bytes: 0,
                    aged_count: 0,
                });
            a.oldest_ns = a.oldest_ns.min(info.ts_ns);
            if info.ts_ns <= cutoff {
                a.aged_bytes += info.size;
                a.aged_count += 1;
            }
        }
        self.model.set_heap_ages(&ages);
        self.model.set_mmap_ages(now);
        Ok(())
    }

    fn refresh_maps(&mut self) {
        let live: Vec<u32> = self
            .traced
            .iter()
            .filter(|t| !t.exited)
            .map(|t| t.target.pid)
            .collect();
        for pid in live {
            self.refresh_maps_of(pid);
        }
    }

    fn refresh_maps_of(&mut self, pid: u32) {
        if let Ok(maps) = ProcMaps::read(pid)
            && !maps.is_empty()
        {
            self.maps.insert(pid, maps);
        }
    }

    /// Symbolizes sites seen for the first time.
    fn symbolize(&mut self) {
        let pending: Vec<SiteId> = self
            .model
            .sites
            .values()
            .filter(|s| s.frames.is_empty() && s.id.stack_id != NO_STACK)
            .map(|s| s.id)
            .collect();
        for id in pending {
            let mut addrs = self.stack(id.stack_id).to_vec();
            if id.kind == Kind::Mmap && id.caller != 0 && !addrs.is_empty() {
                addrs.insert(1, id.caller);
            }
            let Some(maps) = self.maps.get(&id.tgid) else {
                continue;
            };
            let frames = self.symbolizer.stack(id.tgid, maps, &addrs);
            if let Some(site) = self.model.sites.get_mut(&id) {
                site.frames = frames;
            }
        }
    }

    /// Marks exited targets; true when none is left.
    fn check_exits(&mut self) -> bool {
        for t in &mut self.traced {
            if t.exited {
                continue;
            }
            t.exited = match &mut t.child {
                Some(child) => child.exited(),
                None => !t.target.alive(),
            };
            if t.exited {
                debug!("PID {} exited", t.target.pid);
            }
        }
        self.traced.iter().all(|t| t.exited)
    }
}
