//! One tracing session: find the targets, attach, pump the kernel's data into the
//! model, print tables, and produce the final report.
use std::{
    collections::HashMap, ffi::OsString, io::Write, os::fd::AsFd, path::PathBuf, sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use leaktrace_common::{
    Counter, EventKind, ExitEvent, FdClose, FdOpen, GoroutineEvent, MapEvent, NO_STACK, ProcEvent,
    SiteKey, SiteKind, SiteStats, StackId, pause,
    unwind::{STACK_END_KINDS, StackEnd},
};
use log::{debug, info, warn};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    allocator::{self, AllocatorError, Found},
    elf::ElfImage,
    escape,
    golang::{DEFAULT_MEM_PROFILE_RATE, GoRuntime},
    handles,
    limits::{FdLimit, MemoryLimit},
    model::{
        BEFORE_ATTACH, Handle, HeapAges, Kind, Lost, Model, Ns, SiteId, StackWalks, stands_for,
    },
    output::Output,
    preflight,
    probes::{Families, Limits, Probes},
    procmaps::{FileId, ProcMaps},
    reach::{self, Block, Confirmation, Reach},
    report::{AllocatorInfo, GoInfo, ModuleMap, Report, TargetInfo},
    symbolize::{Frame, Frames, Symbolizer},
    target::{self, Child, Credentials, Launched, Target, in_root},
    unwind::Unwinder,
};

/// Everything a session needs to know, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub pids: Vec<u32>,
    pub command: Vec<OsString>,
    /// --user: whom the command runs as (else the sudo user, else root).
    pub user: Option<String>,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: usize,
    pub outputs: Vec<Output>,
    pub snapshot_every: Option<Duration>,
    pub quiet: bool,
    /// Leave allocations younger than this out of reports.
    pub min_age: Duration,
    pub families: Families,
    /// Turn on Go heap sampling where the runtime has it off (writes the target's memory).
    pub go_heap_sampling: bool,
    /// Stop targets at `_exit` to scan their heap's reachability.
    pub scan_at_exit: bool,
    /// Scan running targets' heaps this often.
    pub scan_every: Option<Duration>,
    /// Bytes one scan reads at most.
    pub scan_max_bytes: u64,
    pub fail_on: Option<crate::report::FailOn>,
    pub limits: Limits,
}

/// Resolves when the live view asks to quit (or has gone); never without one.
async fn quit_asked(live: &mut Option<Live>) {
    match live {
        Some(live) => {
            let _ = live.quit.wait_for(|q| *q).await;
        }
        None => std::future::pending().await,
    }
}

/// Ids of the stacks the pump makes have this bit set; the kernel's never do.
const PUMP_STACKS: StackId = 1 << 63;
/// Return addresses a goroutine's creation chain keeps at most.
const MAX_CHAIN: usize = 128;
/// Stand-ins for a note among the return addresses of stacks the pump makes:
/// user code never returns to these.
const CREATED_BY: u64 = u64::MAX;
const STARTED_BEFORE_ATTACH: u64 = u64::MAX - 1;
const ALLOCATED_BEFORE_ATTACH: u64 = u64::MAX - 2;

/// `openat`'s "relative to the working directory".
const AT_FDCWD: i32 = -100;

/// One ring-buffer event, told by the kind tag it starts with.
enum Event {
    Map(Box<MapEvent>),
    FdOpen(Box<FdOpen>),
    FdClose(FdClose),
    Fork(ProcEvent),
    Exec(ProcEvent),
    Entry(ProcEvent),
    Exit(Box<ExitEvent>),
    Goroutine(GoroutineEvent),
}

impl Event {
    fn read(bytes: &[u8]) -> Option<Self> {
        let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        let map = EventKind::Mmap as u32..=EventKind::Mremap as u32;
        Some(if map.contains(&kind) {
            Event::Map(Box::new(read_as(bytes)?))
        } else if kind == EventKind::FdOpen as u32 {
            Event::FdOpen(Box::new(read_as(bytes)?))
        } else if kind == EventKind::FdClose as u32 {
            Event::FdClose(read_as(bytes)?)
        } else if kind == EventKind::Fork as u32 {
            Event::Fork(read_as(bytes)?)
        } else if kind == EventKind::Exec as u32 {
            Event::Exec(read_as(bytes)?)
        } else if kind == EventKind::Entry as u32 {
            Event::Entry(read_as(bytes)?)
        } else if kind == EventKind::Exit as u32 {
            Event::Exit(Box::new(read_as(bytes)?))
        } else if kind == EventKind::GoroutineNew as u32 || kind == EventKind::GoroutineExit as u32
        {
            Event::Goroutine(read_as(bytes)?)
        } else {
            return None;
        })
    }
}

/// A `#[repr(C)]` event of plain integers from the ring buffer.
fn read_as<T: Copy>(bytes: &[u8]) -> Option<T> {
    // SAFETY: the eBPF side writes whole T; any bytes are valid integers; the
    // ring does not align them.
    (bytes.len() >= size_of::<T>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// How often the ring buffer is drained (no wakeup per event: see docs/design.md).
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often per-site totals are read and targets checked.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

struct Traced {
    target: Target,
    /// Allocators probed and those seen but not probed (see allocator.rs).
    allocators: Found,
    go: Option<Go>,
    child: Option<Child>,
    exited: bool,
    /// Whether its heap is traced from its exec on (a command leaktrace
    /// started, or an image exec'd while traced): every live block is known.
    whole_heap: bool,
}

/// A Go target's runtime and its heap sampling rate as last read.
struct Go {
    runtime: GoRuntime,
    /// `runtime.MemProfileRate`; `None` until read, or when it cannot be (stripped).
    rate: Option<u64>,
    /// Goroutines found alive at attach; `None` when they could not be read.
    before_attach: Option<u64>,
}

/// Attaches what `target` needs: the allocator probes (`allocators` is the
/// lookup's result; a Go program may have none) and, for a Go program (`exe` as
/// leaktrace opens it), the Go runtime probes.
fn attach(
    probes: &mut Probes,
    opts: &Options,
    target: &Target,
    exe: &std::path::Path,
    allocators: impl FnOnce() -> Result<Found, AllocatorError>,
) -> Result<(Found, Option<Go>)> {
    let image = ElfImage::open(exe)?;
    let runtime = GoRuntime::inspect(&image)?;
    let found = if opts.families.heap {
        match allocators() {
            Ok(found) => found,
            // A Go program without cgo has no malloc: its heap is Go's. Its
            // executable was looked at (not again when its mappings are).
            Err(AllocatorError::NotFound { .. }) if runtime.is_some() => Found {
                files: FileId::of_path(exe).into_iter().collect(),
                ..Found::default()
            },
            Err(e) => return Err(e).with_context(|| format!("PID {}", target.pid)),
        }
    } else {
        Found::default()
    };
    for alloc in &found.allocators {
        probes
            .attach_allocator(target, alloc)
            .with_context(|| format!("PID {}: {}", target.pid, alloc.describe()))?;
        info!("PID {}: probing {}", target.pid, alloc.describe());
        let hot = alloc.stepped_hot();
        if !hot.is_empty() {
            let costs = probes.step_costs();
            warn!(
                "PID {}: {}: {} single-stepped (no instruction the kernel emulates before \
                 their arguments are lost): ~{:.1} µs per call here, against ~{:.1} µs \
                 emulated",
                target.pid,
                alloc.describe(),
                hot.join(", "),
                costs.stepped_ns / 1000.0,
                costs.emulated_ns / 1000.0,
            );
        }
    }
    if opts.scan_at_exit {
        attach_exit(probes, target.pid, found.exit.as_ref());
    }
    for unsupported in &found.unsupported {
        warn!(
            "PID {}: {unsupported} is an allocator leaktrace does not probe: its \
             allocations are not seen",
            target.pid
        );
    }
    if let Some(go) = &runtime {
        probes.attach_go(target, go, opts.families.heap, opts.families.goroutines)?;
        info!(
            "PID {}: Go runtime {}",
            target.pid,
            go.version.as_deref().unwrap_or("(version unknown)")
        );
    }
    let go = runtime.map(|runtime| Go {
        runtime,
        rate: None,
        before_attach: None,
    });
    Ok((found, go))
}

/// A live view of the session (`leaktrace top`): the pump publishes a fresh
/// report every second, without ever waiting for the view, and stops when the
/// view sets `quit`.
pub struct Live {
    pub reports: tokio::sync::watch::Sender<Option<std::sync::Arc<Report>>>,
    pub quit: tokio::sync::watch::Receiver<bool>,
}

pub async fn run(opts: Options, live: Option<Live>) -> Result<Report> {
    preflight::check()?;
    preflight::raise_open_files_limit();
    let mut probes = Probes::load(opts.limits, opts.families)?;
    let events = probes.take_events()?;
    let mut unwinder = Unwinder::default();
    let mut maps = HashMap::new();
    let mut traced = Vec::new();
    for &pid in &opts.pids {
        let target = Target::existing(pid)?;
        // The unwinder knows the process's code before the first probe fires.
        update_maps(&mut probes, &mut unwinder, &mut maps, pid);
        let (allocators, go) = attach(&mut probes, &opts, &target, &target.exe_path(), || {
            target.allocators()
        })?;
        probes.add_target(pid)?;
        info!("tracing PID {pid} ({})", target.comm);
        traced.push(Traced {
            target,
            allocators,
            go,
            child: None,
            exited: false,
            whole_heap: false,
        });
    }
    if !opts.command.is_empty() {
        let credentials = Credentials::for_command(opts.user.as_deref())?;
        if let Some(c) = &credentials {
            info!("running the command as {c}");
        }
        let launched = Launched::spawn(&opts.command, credentials.as_ref())?;
        let target = launched.target();
        // A script runs its interpreter: that is what allocates.
        let image = target::script_interpreter(&launched.exe).unwrap_or(launched.exe.clone());
        let (allocators, go) = attach(&mut probes, &opts, &target, &image, || {
            allocator::find(&image, &preload_from_env(), &allocator::search_library)
        })?;
        probes.add_target(target.pid)?;
        info!("started {} as PID {}", launched.exe.display(), target.pid);
        let child = launched.release(|pid| {
            update_maps(&mut probes, &mut unwinder, &mut maps, pid);
        });
        traced.push(Traced {
            target,
            allocators,
            go,
            child: Some(child),
            exited: false,
            whole_heap: true,
        });
    }
    let mut pump = Pump {
        probes,
        events,
        model: Model::new(opts.min_age.as_nanos() as Ns),
        symbolizer: Symbolizer::new(),
        unwinder,
        maps,
        stacks: HashMap::new(),
        interned: HashMap::new(),
        go_runtime_mmaps: Default::default(),
        go_ancestry: HashMap::new(),
        go_heap_before: HashMap::new(),
        stale_handles: Vec::new(),
        start_functions: HashMap::new(),
        traced,
        go_heap_sampling: opts.go_heap_sampling,
        heap: opts.families.heap,
        scan_at_exit: opts.scan_at_exit,
        scan_max_bytes: opts.scan_max_bytes,
        confirmations: HashMap::new(),
        pausing: false,
        started: now_ns(),
    };
    // After the probes: a descriptor opened or a goroutine started meanwhile is
    // in both the scan and the ring buffer, whose events are applied later and win.
    let running: Vec<u32> = pump
        .traced
        .iter()
        .filter(|t| t.child.is_none())
        .map(|t| t.target.pid)
        .collect();
    for &pid in &running {
        if opts.families.fds {
            pump.scan_fds(pid);
        }
        if opts.families.goroutines {
            pump.scan_goroutines(pid);
        }
        if opts.families.heap {
            pump.scan_go_heap(pid);
        }
    }
    pump.trace(&opts, live).await?;
    Ok(pump.finish())
}

/// Re-reads `pid`'s memory map and tells the unwinder in the kernel about
/// code mapped since.
fn update_maps(
    probes: &mut Probes,
    unwinder: &mut Unwinder,
    maps: &mut HashMap<u32, ProcMaps>,
    pid: u32,
) {
    let Ok(read) = ProcMaps::read(pid) else {
        return;
    };
    if read.is_empty() {
        return;
    }
    if let Err(e) = unwinder.update(probes, pid, &read) {
        warn!("PID {pid}: stacks through newly mapped code stop there: {e}");
    }
    let read = match maps.get(&pid) {
        Some(previous) => read.succeeding(previous),
        None => read,
    };
    maps.insert(pid, read);
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
    unwinder: Unwinder,
    /// Latest memory map of each target, kept after it exits.
    maps: HashMap<u32, ProcMaps>,
    /// Return addresses of each stack seen, and how its walk ended.
    stacks: HashMap<StackId, (Vec<u64>, u32)>,
    /// Ids of the stacks the pump made, by their return addresses.
    interned: HashMap<Vec<u64>, StackId>,
    /// mmap sites inside the Go runtime (heap arenas, stacks, GC metadata): the
    /// Go heap accounts for what they hold, so they are not shown.
    go_runtime_mmaps: std::collections::HashSet<SiteId>,
    /// Each live goroutine's creation chain, by (tgid, g): the stack that
    /// created it, then what created that goroutine, and so on.
    go_ancestry: HashMap<(u32, u64), StackId>,
    /// Go heap profile buckets with objects in use at attach, by (tgid, bucket):
    /// their site's stack id and object size.
    go_heap_before: HashMap<(u32, u64), (StackId, u64)>,
    /// Processes whose descriptors or goroutines changed since their sites
    /// were last recounted.
    stale_handles: Vec<u32>,
    /// Names of the functions goroutines run, by (tgid, entry address).
    start_functions: HashMap<(u32, u64), String>,
    traced: Vec<Traced>,
    go_heap_sampling: bool,
    /// Whether the heap is traced: allocators of libraries loaded later are probed.
    heap: bool,
    /// Whether exiting processes stop for the scan of their heap.
    scan_at_exit: bool,
    scan_max_bytes: u64,
    /// Each process's running scans so far (see reach.rs).
    confirmations: HashMap<u32, Confirmation>,
    /// Whether processes stop themselves for leaktrace (see
    /// leaktrace-ebpf/src/fork.rs and exit.rs): new ones and new images while
    /// the heap is traced, exiting ones with the exit scan; until tracing ends.
    pausing: bool,
    started: Ns,
}

enum Stop {
    Duration,
    Signal(&'static str),
    TargetsExited,
    Quit,
}

impl Pump {
    async fn trace(&mut self, opts: &Options, mut live: Option<Live>) -> Result<()> {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // Events that cannot wait for the next drain (a process stopped for
        // its probes, a quarter of the ring full) wake the ring buffer's
        // descriptor; the others do not.
        let ring = self
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the ring buffer's descriptor")?;
        // SAFETY: an OwnedFd is open, and the same, for as long as it is owned.
        let woken = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("watching the ring buffer")?;
        if self.heap {
            self.probes.set_pausing(pause::NEW, true)?;
            self.pausing = true;
        }
        if self.scan_at_exit {
            self.probes.set_pausing(pause::EXIT, true)?;
            self.pausing = true;
        }
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let mut refresh = tokio::time::interval(REFRESH_EVERY);
        let mut table =
            tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
        // --duration is kept to the millisecond, not to the next refresh.
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        let over = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(over);
        // Without --snapshot-every this timer is never polled.
        let every = opts.snapshot_every.unwrap_or(Duration::MAX / 4);
        let mut snapshot = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut snapshots = 0;
        let scan_every = opts.scan_every.unwrap_or(Duration::MAX / 4);
        let mut scan =
            tokio::time::interval_at(tokio::time::Instant::now() + scan_every, scan_every);
        // A long scan is not followed by the scans it delayed.
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Cleared when stdout's reader goes away (`| head`): tracing goes on.
        let mut tables = !opts.quiet;
        let stop = loop {
            tokio::select! {
                _ = sigint.recv() => break Stop::Signal("interrupted"),
                _ = sigterm.recv() => break Stop::Signal("terminated"),
                _ = drain.tick() => self.drain_events(),
                ready = woken.readable() => {
                    if let Ok(mut ready) = ready {
                        ready.clear_ready();
                    }
                    self.drain_events();
                }
                _ = quit_asked(&mut live) => break Stop::Quit,
                _ = &mut over => break Stop::Duration,
                _ = refresh.tick() => {
                    self.refresh()?;
                    self.sample();
                    // A live view stays on what the targets left when they exit.
                    if self.check_exits() && live.is_none() {
                        break Stop::TargetsExited;
                    }
                    if let Some(live) = &live {
                        let report = self.current_report()?;
                        let _ = live.reports.send(Some(std::sync::Arc::new(report)));
                    }
                }
                _ = table.tick(), if tables => {
                    let text = self.current_report()?.table(opts.top);
                    let mut stdout = std::io::stdout().lock();
                    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
                        warn!("no more tables on stdout ({e}): tracing goes on");
                        tables = false;
                    }
                }
                _ = scan.tick(), if opts.scan_every.is_some() => self.scan_running(),
                _ = snapshot.tick(), if opts.snapshot_every.is_some() => {
                    snapshots += 1;
                    // A snapshot that cannot be written is said; the trace goes on.
                    if let Err(e) = self.snapshot(&opts.outputs, snapshots) {
                        warn!("snapshot {snapshots} not written: {e:#}");
                    }
                }
            }
        };
        match stop {
            Stop::Duration => info!("--duration reached"),
            Stop::Signal(how) => {
                info!("{how}: writing the final report (interrupt again to quit without it)")
            }
            Stop::TargetsExited => info!("every target has exited"),
            Stop::Quit => info!("the view was closed"),
        }
        self.stop_pausing();
        self.drain_events();
        if matches!(stop, Stop::Signal(_)) {
            // The final report of a big trace takes seconds: a second signal
            // ends leaktrace at once. The kernel removes the probes, -- CMD
            // goes with it (PR_SET_PDEATHSIG), and no process is left
            // stopped: none stops from now on, and the drain continued the
            // ones that had.
            // SAFETY: restoring the default actions has no preconditions.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
            }
        }
        self.refresh()?;
        self.sample();
        self.settle()
    }

    /// No new process or image stops itself from now on; those stopped before
    /// are in the ring buffer once this returns.
    fn stop_pausing(&mut self) {
        if !std::mem::take(&mut self.pausing) {
            return;
        }
        for slot in [pause::NEW, pause::EXIT] {
            if let Err(e) = self.probes.set_pausing(slot, false) {
                warn!("{e}");
            }
        }
        // A probe that read the flag before it was cleared finishes its event
        // within microseconds.
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Brings totals, ages and symbols up to date and snapshots the model.
    fn current_report(&mut self) -> Result<Report> {
        self.settle()?;
        Ok(self.report())
    }

    /// Totals, ages, socket addresses and symbols up to date.
    fn settle(&mut self) -> Result<()> {
        self.refresh()?;
        self.update_ages()?;
        self.resolve_sockets();
        self.symbolize();
        Ok(())
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
                allocators: t
                    .allocators
                    .allocators
                    .iter()
                    .map(|a| AllocatorInfo {
                        name: a.family.to_string(),
                        prefixes: a.prefixes.iter().map(|p| p.to_string()).collect(),
                        file: a.path.clone(),
                        functions: a.points.len(),
                        single_stepped: a.stepped_hot().iter().map(|f| f.to_string()).collect(),
                    })
                    .collect(),
                unprobed_allocators: t.allocators.unsupported.clone(),
                exited: t.exited,
                exit_code: t.child.as_ref().and_then(Child::exit_code),
                memory_limit: (!t.exited).then(|| MemoryLimit::of(t.target.pid)).flatten(),
                fd_limit: (!t.exited).then(|| FdLimit::of(t.target.pid)).flatten(),
                go: t.go.as_ref().map(|go| GoInfo {
                    version: go.runtime.version.clone(),
                    mem_profile_rate: go.rate,
                    goroutines_before_attach: go.before_attach,
                }),
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

    /// Applies the ring buffer's events in order. Also refreshes the targets'
    /// memory maps first, so even short-lived targets symbolize after they exit —
    /// except for a target that exec'd in this batch: its earlier events belong to
    /// the old image, symbolized with the old maps before they are replaced.
    fn drain_events(&mut self) {
        let mut batch = Vec::new();
        while let Some(item) = self.events.next() {
            match Event::read(&item) {
                Some(event) => batch.push(event),
                None => warn!("unknown event of {} bytes ignored", item.len()),
            }
        }
        let exec = |e: &Event| match e {
            Event::Exec(e) => Some(e.tgid),
            _ => None,
        };
        let execs: Vec<u32> = batch.iter().filter_map(exec).collect();
        self.refresh_maps(&execs);
        let mut maps: Vec<MapEvent> = Vec::new();
        let mut touched: Vec<u32> = Vec::new();
        for event in batch {
            match event {
                Event::Map(e) => {
                    let site = SiteId {
                        tgid: e.tgid,
                        kind: Kind::Mmap,
                        stack_id: e.stack_id,
                    };
                    if !self.go_runtime_mmaps.contains(&site) {
                        maps.push(*e);
                    }
                }
                Event::FdOpen(e) => {
                    self.apply_fd_open(&e);
                    touched.push(e.tgid);
                }
                Event::Exec(e) => {
                    self.model.apply_map_events(&std::mem::take(&mut maps));
                    self.new_image(&e);
                    touched.push(e.tgid);
                }
                Event::Entry(e) => {
                    // The loader has mapped the libraries: their tables go in
                    // before `main` runs.
                    self.refresh_maps_of(e.tgid);
                    resume(&e);
                }
                Event::FdClose(e) => {
                    self.model.close_fds(e.tgid, e.first, e.last);
                    touched.push(e.tgid);
                }
                Event::Exit(e) => self.scan_exiting(&e),
                Event::Fork(e) => {
                    self.model.apply_map_events(&std::mem::take(&mut maps));
                    self.adopt(e.tgid, e.child);
                    resume(&e);
                }
                Event::Goroutine(e) => {
                    if e.kind == EventKind::GoroutineNew as u32 {
                        self.start_goroutine(&e);
                    } else {
                        self.model.end_goroutine(e.tgid, e.g);
                        self.go_ancestry.remove(&(e.tgid, e.g));
                    }
                    touched.push(e.tgid);
                }
            }
        }
        self.model.apply_map_events(&maps);
        self.stale_handles.extend(touched);
    }

    /// A process a target forked (already a target in the kernel): it gets the
    /// parent's descriptors, mappings, memory map and allocator probes.
    fn adopt(&mut self, parent: u32, child: u32) {
        let target = match Target::existing(child) {
            Ok(t) => t,
            Err(e) => {
                debug!("forked PID {child} not followed: {e}");
                return;
            }
        };
        let allocators = self
            .traced
            .iter()
            .find(|t| t.target.pid == parent)
            .map(|t| t.allocators.clone())
            .unwrap_or_default();
        attach_heap(
            &mut self.probes,
            &mut self.model.lost,
            &target,
            &allocators.allocators,
            &format!("PID {child} (forked by {parent})"),
        );
        if self.scan_at_exit {
            attach_exit(&mut self.probes, child, allocators.exit.as_ref());
        }
        if let Some(maps) = self.maps.get(&parent).cloned() {
            self.maps.insert(child, maps);
        }
        self.model.fork(parent, child);
        info!("following PID {child}, forked by {parent}");
        self.traced.push(Traced {
            target,
            allocators,
            go: None,
            child: None,
            exited: false,
            whole_heap: false,
        });
    }

    /// A target exec'd (and, if `e.paused`, waits): its old image's heap and
    /// mappings are gone, its close-on-exec descriptors closed, and the new
    /// image gets the probes of its own allocators before it runs.
    fn new_image(&mut self, e: &ProcEvent) {
        let pid = e.tgid;
        // The old image's stacks symbolize with its maps, before they go.
        self.symbolize();
        self.model.forget_mappings(pid);
        update_maps(&mut self.probes, &mut self.unwinder, &mut self.maps, pid);
        if self.heap {
            self.probe_new_image(pid);
        }
        if e.paused != 0 {
            self.hold_at_entry(pid);
        }
        resume(e);
        // After the process goes on (a walk of every outstanding allocation):
        // what the new image allocates is younger than the exec.
        match self.probes.take_allocs(pid, e.ts_ns) {
            Ok(gone) => {
                for info in gone {
                    self.model
                        .heap_gone(SiteId::in_kernel(&info.site), info.size);
                }
            }
            Err(e) => warn!("PID {pid}: the heap of its image before exec stays counted: {e}"),
        }
        let open: Vec<i32> = handles::open_fds(pid).iter().map(|f| f.0).collect();
        self.model.retain_fds(pid, &open);
    }

    /// Makes `pid`'s new image stop again at its entry point, when its loader
    /// has mapped the libraries (see leaktrace-ebpf/src/fork.rs).
    fn hold_at_entry(&mut self, pid: u32) {
        let entry = || {
            let entry = target::entry_point(pid).ok()?;
            let mapping = self.maps.get(&pid)?.lookup(entry)?;
            let exe = target::mapped_file(pid, mapping)?;
            Some((exe, entry - mapping.start + mapping.offset))
        };
        let Some((exe, offset)) = entry() else {
            debug!("PID {pid}: entry point not found: not held there");
            return;
        };
        if let Err(e) = self.probes.attach_entry(pid, &exe, offset) {
            debug!("PID {pid}: not held at its entry point: {e}");
        }
    }

    /// Probes the allocators of `pid`'s new image that are not probed already
    /// (the same functions of the same files).
    fn probe_new_image(&mut self, pid: u32) {
        let Some(t) = live(&mut self.traced, pid) else {
            return;
        };
        let Ok(target) = Target::existing(pid) else {
            return; // gone already
        };
        let found = match target.allocators() {
            Ok(found) => found,
            // A Go program without cgo: its heap is Go's (the command
            // leaktrace started execs into it).
            Err(AllocatorError::NotFound { .. }) if t.go.is_some() => {
                t.target = target;
                return;
            }
            Err(e) => {
                if !matches!(e, AllocatorError::NotFound { .. }) {
                    self.model.lost.untraced_heaps += 1;
                }
                warn!(
                    "PID {pid}: the heap of {} is not traced: {e}",
                    escape::shown(&target.exe.to_string_lossy())
                );
                // Its old image's probes stay attached (see probes.rs: removing
                // them stalls every attachment); they fire only if it calls them.
                t.target = target;
                t.whole_heap = false;
                return;
            }
        };
        // Attached once per process: those of the old image stay.
        let key = |a: &allocator::Allocator| -> (Option<FileId>, Vec<u64>) {
            let at = a.points.iter().map(|p| p.file_offset + p.shift).collect();
            (FileId::of_path(&a.path), at)
        };
        let attached: Vec<_> = t.allocators.allocators.iter().map(key).collect();
        let new: Vec<_> = found
            .allocators
            .into_iter()
            .filter(|a| !attached.contains(&key(a)))
            .collect();
        let whose = format!("PID {pid}'s new image");
        for alloc in attach_heap(
            &mut self.probes,
            &mut self.model.lost,
            &target,
            &new,
            &whose,
        ) {
            info!("{whose}: probing {}", alloc.describe());
            t.allocators.allocators.push(alloc.clone());
        }
        if self.scan_at_exit && found.exit.is_some() && found.exit != t.allocators.exit {
            attach_exit(&mut self.probes, pid, found.exit.as_ref());
            t.allocators.exit = found.exit;
        }
        t.allocators.unsupported = found.unsupported;
        t.allocators.files.extend(found.files);
        t.target = target;
        t.whole_heap = true;
    }

    /// A descriptor (or a pair) made by a syscall: its kind and detail from the
    /// call, a dup's from the descriptor it copies.
    fn apply_fd_open(&mut self, e: &FdOpen) {
        use handles::{HandleKind, Origin};
        let path = {
            let end = e.path.iter().position(|&b| b == 0).unwrap_or(e.path.len());
            String::from_utf8_lossy(&e.path[..end]).into_owned()
        };
        let from_proc = |fd: i32| {
            handles::link(e.tgid, fd).map_or((HandleKind::Other, String::new()), |l| {
                handles::classify(&l)
            })
        };
        let (kind, detail) = match handles::origin(e.nr) {
            Origin::Made(HandleKind::File) => {
                let dirfd = e.args[0] as i32;
                let at_dir = (e.nr == handles::nr::OPENAT || e.nr == handles::nr::OPENAT2)
                    && dirfd != AT_FDCWD;
                let dir = if at_dir {
                    self.model
                        .fd(e.tgid, dirfd)
                        .map(|h| PathBuf::from(&h.detail))
                } else {
                    handles::cwd(e.tgid)
                };
                (HandleKind::File, handles::absolute(&path, dir.as_deref()))
            }
            Origin::Made(HandleKind::Socket) => {
                let detail = if e.nr == handles::nr::SOCKET || e.nr == handles::nr::SOCKETPAIR {
                    handles::socket_detail(e.args[0], e.args[1])
                } else {
                    "socket".into() // accepted: addresses come from /proc at report time
                };
                (HandleKind::Socket, detail)
            }
            Origin::Made(HandleKind::Memfd) => (HandleKind::Memfd, path),
            Origin::Made(kind) => (kind, String::new()),
            Origin::CopyOf(arg) => match self.model.fd(e.tgid, e.args[arg] as i32) {
                Some(h) => (h.kind, h.detail.clone()),
                None => from_proc(e.fd),
            },
            Origin::Unknown => from_proc(e.fd),
        };
        let id = SiteId {
            tgid: e.tgid,
            kind: if kind == HandleKind::Socket {
                Kind::Socket
            } else {
                Kind::Fd
            },
            stack_id: e.stack_id,
        };
        // On a goroutine leaktrace saw start, the call site continues where the
        // goroutine was created (an HTTP connection is dialed on a goroutine of
        // the Transport, on behalf of the function making the request).
        let id = if self.go_ancestry.contains_key(&(e.tgid, e.g)) {
            let stack = self.stack(id.stack_id).to_vec();
            SiteId {
                stack_id: self.created_by(e.tgid, e.g, stack),
                ..id
            }
        } else {
            id
        };
        for fd in [e.fd, e.fd2].into_iter().filter(|&fd| fd >= 0) {
            let handle = Handle {
                site: id,
                kind,
                detail: detail.clone(),
                ts: e.ts_ns,
            };
            self.model.open_fd(e.tgid, fd, handle, true);
        }
    }

    /// The descriptors `pid` has open at attach, under one site.
    fn scan_fds(&mut self, pid: u32) {
        let now = now_ns();
        for (fd, link) in handles::open_fds(pid) {
            let (kind, detail) = handles::classify(&link);
            let id = SiteId {
                tgid: pid,
                kind: if kind == handles::HandleKind::Socket {
                    Kind::Socket
                } else {
                    Kind::Fd
                },
                stack_id: BEFORE_ATTACH,
            };
            let handle = Handle {
                site: id,
                kind,
                detail,
                ts: now,
            };
            self.model.open_fd(pid, fd, handle, false);
            if let Some(site) = self.model.sites.get_mut(&id) {
                site.frames = Frames::from([Frame::note("[opened before attach]")]);
            }
        }
        self.model.refresh_handles(pid);
    }

    /// The goroutines a Go target has alive at attach, each under a site of its
    /// `go` statement (the one frame the runtime keeps of it).
    fn scan_goroutines(&mut self, pid: u32) {
        let Some(t) = self.traced.iter_mut().find(|t| t.target.pid == pid) else {
            return;
        };
        let Some(go) = &mut t.go else { return };
        let live = match go.runtime.goroutines(pid) {
            Ok(live) => live,
            Err(e) => {
                warn!("goroutines started before attach are not counted: {e}");
                return;
            }
        };
        go.before_attach = Some(live.len() as u64);
        self.refresh_maps_of(pid);
        let now = now_ns();
        for g in live {
            let site = SiteId {
                tgid: pid,
                kind: Kind::Goroutine,
                stack_id: self.intern(vec![g.gopc, STARTED_BEFORE_ATTACH]),
            };
            let handle = Handle {
                site,
                kind: handles::HandleKind::Goroutine,
                detail: self.start_function(pid, g.start_pc),
                ts: now,
            };
            self.model.start_goroutine(pid, g.g, handle, false);
        }
        self.model.refresh_handles(pid);
    }

    /// The Go heap a Go target has in use at attach, from the runtime's own heap
    /// profile: each bucket's sampled objects still in use, under its stack and
    /// "[allocated before attach]". The kernel counts them down as they are freed.
    fn scan_go_heap(&mut self, pid: u32) {
        let Some(go) = self
            .traced
            .iter()
            .find(|t| t.target.pid == pid)
            .and_then(|t| t.go.as_ref())
        else {
            return;
        };
        let buckets = match go.runtime.heap_buckets(pid) {
            Ok(buckets) => buckets,
            Err(e) => {
                warn!("Go heap allocated before attach is not counted: {e}");
                return;
            }
        };
        for b in buckets {
            if let Err(e) = self
                .probes
                .seed_go_before_attach(pid, b.addr, b.in_use as i64)
            {
                warn!("Go heap allocated before attach is partly counted: {e}");
                return;
            }
            let mut stack = b.stack;
            stack.push(ALLOCATED_BEFORE_ATTACH);
            let stack_id = self.intern(stack);
            self.go_heap_before
                .insert((pid, b.addr), (stack_id, b.size));
        }
    }

    /// Fills in sockets' protocol and addresses from /proc/PID/net, once they
    /// are connected or listening.
    fn resolve_sockets(&mut self) {
        let live: Vec<u32> = self
            .traced
            .iter()
            .filter(|t| !t.exited)
            .map(|t| t.target.pid)
            .collect();
        for pid in live {
            let mut sockets = None;
            for (&fd, handle) in self.model.fds_mut(pid) {
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
            self.model.refresh_handles(pid);
        }
    }

    /// The id of a stack the pump made (top bit set, unlike the kernel's); the
    /// same addresses get the same id.
    fn intern(&mut self, addrs: Vec<u64>) -> StackId {
        if let Some(&id) = self.interned.get(&addrs) {
            return id;
        }
        let id = PUMP_STACKS | self.interned.len() as StackId;
        self.stacks
            .insert(id, (addrs.clone(), StackEnd::Complete as u32));
        self.interned.insert(addrs, id);
        id
    }

    /// A goroutine started. Its site is the function holding the `go` statement
    /// (newproc's return address, which a frame-pointer walk at newproc's entry
    /// may not see) and that function's callers; its detail, the function it runs.
    fn start_goroutine(&mut self, e: &GoroutineEvent) {
        let walked = self.stack(e.stack_id).get(1..).unwrap_or_default().to_vec();
        // Kernels that fix up stacks taken at a function's entry (6.x, probe on
        // `push rbp`) already list the caller.
        let missing = e.caller != 0 && walked.first() != Some(&e.caller);
        let addrs: Vec<u64> = missing
            .then_some(e.caller)
            .into_iter()
            .chain(walked)
            .collect();
        let site = SiteId {
            tgid: e.tgid,
            kind: Kind::Goroutine,
            stack_id: self.intern(addrs.clone()),
        };
        let chain = self.created_by(e.tgid, e.parent, addrs);
        self.go_ancestry.insert((e.tgid, e.g), chain);
        let detail = self.start_function(e.tgid, e.start_pc);
        let handle = Handle {
            site,
            kind: handles::HandleKind::Goroutine,
            detail,
            ts: e.ts_ns,
        };
        self.model.start_goroutine(e.tgid, e.g, handle, true);
    }

    /// The id of `stack` followed by the creation chain of goroutine `g`, if
    /// it is one leaktrace saw start (and the whole stays short enough).
    fn created_by(&mut self, tgid: u32, g: u64, mut stack: Vec<u64>) -> StackId {
        if let Some(&chain) = self.go_ancestry.get(&(tgid, g)) {
            let chain = &self.stacks[&chain].0;
            if stack.len() + chain.len() < MAX_CHAIN {
                stack.push(CREATED_BY);
                stack.extend_from_slice(chain);
            }
        }
        self.intern(stack)
    }

    /// The name of the function at `entry` (a function's first instruction).
    fn start_function(&mut self, tgid: u32, entry: u64) -> String {
        if let Some(name) = self.start_functions.get(&(tgid, entry)) {
            return name.clone();
        }
        let name = self
            .maps
            .get(&tgid)
            .and_then(|maps| self.symbolizer.function_at(tgid, maps, entry))
            .unwrap_or_else(|| format!("{entry:#x}"));
        self.start_functions.insert((tgid, entry), name.clone());
        name
    }

    /// The return addresses of a stack, innermost first.
    fn stack(&mut self, stack_id: StackId) -> &[u64] {
        &self.stack_and_end(stack_id).0
    }

    /// A stack and how its walk ended (a `StackEnd`).
    fn stack_and_end(&mut self, stack_id: StackId) -> &(Vec<u64>, u32) {
        if stack_id == NO_STACK {
            return &NO_FRAMES;
        }
        if !self.stacks.contains_key(&stack_id) {
            match self.probes.stack(stack_id) {
                Some(stack) => self.stacks.insert(stack_id, stack),
                None => return &NO_FRAMES,
            };
        }
        &self.stacks[&stack_id]
    }

    /// Reads per-site totals and counters from the kernel.
    fn refresh(&mut self) -> Result<()> {
        // Handle sites are recounted here, once a second (and before every
        // report), not at every drain: a goroutine-heavy service keeps tens of
        // thousands of them.
        let mut stale = std::mem::take(&mut self.stale_handles);
        stale.sort_unstable();
        stale.dedup();
        for tgid in stale {
            self.model.refresh_handles(tgid);
        }
        self.read_go_rates();
        let rates = self.go_rates();
        let mut entries = self.probes.sites()?;
        if !self.go_heap_before.is_empty() {
            // Go heap from before attach: what is left of each bucket's objects.
            let left = self.probes.go_before_attach()?;
            for entry in left.iter() {
                let (key, count) = entry.context("reading the Go heap before attach")?;
                let Some(&(stack_id, size)) = self.go_heap_before.get(&(key.tgid, key.addr)) else {
                    continue;
                };
                let site = SiteKey {
                    tgid: key.tgid,
                    kind: SiteKind::GoHeap as u32,
                    stack_id,
                    extra: size.min(u32::MAX as u64) as u32,
                    _pad: 0,
                };
                let count = count.max(0);
                let stats = SiteStats {
                    live_bytes: count * size as i64,
                    live_count: count,
                    total_bytes: 0,
                    total_count: 0,
                };
                entries.push((site, stats));
            }
        }
        self.model.set_kernel_sites(&entries, &rates);
        let c = self.probes.counters()?;
        let lost = &mut self.model.lost;
        lost.allocs_map_full = c[Counter::AllocsFull as usize];
        lost.sites_map_full = c[Counter::SitesFull as usize];
        lost.stacks_lost = c[Counter::StackLost as usize];
        lost.ring_buffer_overruns = c[Counter::EventsLost as usize];
        lost.syscalls_map_full = c[Counter::SyscallsFull as usize];
        lost.unfollowed_forks = c[Counter::UnfollowedForks as usize];
        let ends = Counter::StackEnds as usize;
        self.model.stack_walks = StackWalks::from_counters(
            c[Counter::StackWalks as usize],
            c[Counter::StackFrames as usize],
            &c[ends..ends + STACK_END_KINDS as usize],
        );
        self.model.allocs = c[Counter::Allocs as usize];
        self.model.frees = c[Counter::Frees as usize];
        Ok(())
    }

    /// Oldest outstanding allocation per site, and what is older than --min-age:
    /// one walk of the heap allocations map, and the mmap regions.
    fn update_ages(&mut self) -> Result<()> {
        let now = now_ns();
        let cutoff = now.saturating_sub(self.model.min_age);
        let rates = self.go_rates();
        let mut ages: HashMap<SiteId, HeapAges> = HashMap::new();
        self.probes.each_alloc(|_, info| {
            let id = SiteId::in_kernel(&info.site);
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
        self.model.set_heap_ages(&ages);
        self.model.set_tracked_ages(now);
        Ok(())
    }

    /// Reads each live Go target's heap sampling rate, turning sampling on
    /// where it is off and --go-heap-sampling asks.
    fn read_go_rates(&mut self) {
        for t in self.traced.iter_mut().filter(|t| !t.exited) {
            let Some(go) = &mut t.go else { continue };
            let pid = t.target.pid;
            match go.runtime.mem_profile_rate(pid) {
                Ok(0) if self.go_heap_sampling => {
                    match go
                        .runtime
                        .set_mem_profile_rate(pid, DEFAULT_MEM_PROFILE_RATE)
                    {
                        Ok(()) => {
                            info!("PID {pid}: Go heap sampling turned on");
                            go.rate = Some(DEFAULT_MEM_PROFILE_RATE);
                        }
                        Err(e) => warn!("--go-heap-sampling: {e}"),
                    }
                }
                Ok(rate) => go.rate = Some(rate),
                Err(e) => debug!("{e}"),
            }
        }
    }

    /// The Go heap sampling rates known, by PID.
    fn go_rates(&self) -> HashMap<u32, u64> {
        self.traced
            .iter()
            .filter_map(|t| Some((t.target.pid, t.go.as_ref()?.rate?)))
            .collect()
    }

    /// Re-reads the memory maps of live targets, but those in `except`.
    fn refresh_maps(&mut self, except: &[u32]) {
        let live: Vec<u32> = self
            .traced
            .iter()
            .filter(|t| !t.exited && !except.contains(&t.target.pid))
            .map(|t| t.target.pid)
            .collect();
        for pid in live {
            self.refresh_maps_of(pid);
        }
    }

    fn refresh_maps_of(&mut self, pid: u32) {
        update_maps(&mut self.probes, &mut self.unwinder, &mut self.maps, pid);
        if self.heap {
            self.probe_loaded_allocators(pid);
        }
    }

    /// Probes the allocators of libraries `pid` mapped since its allocators
    /// were found (`dlopen`, or before attach): their prefixed APIs and Rust
    /// shims (see allocator.rs).
    fn probe_loaded_allocators(&mut self, pid: u32) {
        let Some(maps) = self.maps.get(&pid) else {
            return;
        };
        let Some(t) = live(&mut self.traced, pid) else {
            return;
        };
        let new: Vec<PathBuf> = maps
            .code()
            .filter_map(|m| Some((m.file?, m.path.clone()?)))
            .filter(|(id, _)| t.allocators.files.insert(*id))
            .map(|(_, path)| in_root(pid, &path))
            .collect();
        for path in new {
            let Ok(image) = ElfImage::open(&path) else {
                continue;
            };
            let mut found = allocator::find_loaded(&image);
            found.allocators.retain(
                |alloc| match self.probes.attach_allocator(&t.target, alloc) {
                    Ok(()) => {
                        info!("PID {pid}: probing {} (loaded later)", alloc.describe());
                        true
                    }
                    Err(e) => {
                        warn!("PID {pid}: {} not traced: {e}", alloc.describe());
                        false
                    }
                },
            );
            t.allocators.extend(found);
        }
    }

    /// Symbolizes sites seen for the first time.
    fn symbolize(&mut self) {
        let pending: Vec<SiteId> = self
            .model
            .sites
            .values()
            .filter(|s| s.frames.is_empty() && s.id.stack_id < BEFORE_ATTACH)
            .map(|s| s.id)
            .collect();
        for id in pending {
            let (addrs, end) = self.stack_and_end(id.stack_id).clone();
            let Some(maps) = self.maps.get(&id.tgid) else {
                continue;
            };
            let mut frames = Vec::new();
            for &addr in &addrs {
                match addr {
                    CREATED_BY => frames.push(Frame::note("[goroutine created by]")),
                    STARTED_BEFORE_ATTACH => frames.push(Frame::note("[started before attach]")),
                    ALLOCATED_BEFORE_ATTACH => {
                        frames.push(Frame::note("[allocated before attach]"))
                    }
                    _ => frames.extend(self.symbolizer.stack(id.tgid, maps, &[addr])),
                }
            }
            if let Some(why) = truncation(end) {
                frames.push(Frame::note(why));
            }
            let runtime = |f: &Arc<Frame>| {
                f.function
                    .as_ref()
                    .is_some_and(|n| n.starts_with("runtime."))
            };
            let go = self
                .traced
                .iter()
                .any(|t| t.target.pid == id.tgid && t.go.is_some());
            if go && id.kind == Kind::Mmap && frames.first().is_some_and(runtime) {
                self.go_runtime_mmaps.insert(id);
                self.model.forget_mmap_site(id);
                continue;
            }
            if id.kind == Kind::GoHeap {
                // Like Go's own profile: the site is where user code allocated,
                // not the runtime's allocator (mallocgc, growslice…) beneath it.
                // The runtime's own allocations keep their whole stack.
                let inner = frames.iter().take_while(|f| runtime(f)).count();
                if inner < frames.len() {
                    frames.drain(..inner);
                }
            }
            if let Some(site) = self.model.sites.get_mut(&id) {
                site.frames = frames.into();
            }
        }
    }

    /// A target stopped in `_exit` (leaktrace-ebpf/src/exit.rs): its heap is
    /// scanned whole, then it goes on exiting.
    fn scan_exiting(&mut self, e: &ExitEvent) {
        if e.paused == 0 {
            return; // not stopped: its memory would be torn down under the scan
        }
        self.scan(e.tgid, &e.regs, None);
        cont(e.tgid);
        let waited_ms = now_ns().saturating_sub(e.ts_ns) as f64 / 1e6;
        let scans = &mut self.model.scans;
        scans.longest_pause_ms = scans
            .longest_pause_ms
            .max((waited_ms * 100.0).round() / 100.0);
    }

    /// Scans every live target with a traced heap, running (--scan-every).
    fn scan_running(&mut self) {
        let pids: Vec<u32> = self
            .traced
            .iter()
            .filter(|t| !t.exited && !t.allocators.allocators.is_empty())
            .map(|t| t.target.pid)
            .collect();
        for pid in pids {
            let now = now_ns();
            self.scan(pid, &[], Some(now));
        }
    }

    /// Classifies `pid`'s outstanding blocks: stopped at exit (`running`
    /// `None`, `regs` its exiting thread's registers), or running since
    /// `running`, where a block is lost only once scans agree (reach.rs).
    fn scan(&mut self, pid: u32, regs: &[u64], running: Option<Ns>) {
        let allocs = match self.probes.heap_blocks_of(pid) {
            Ok(allocs) => allocs,
            Err(e) => {
                self.model.scans.failed += 1;
                warn!("PID {pid}: heap not scanned: {e}");
                return;
            }
        };
        let blocks: Vec<Block> = allocs
            .iter()
            .map(|&(addr, info)| Block {
                addr,
                size: info.size,
            })
            .collect();
        // Every block known: traced from its exec, none lost for a full map.
        let complete = self
            .traced
            .iter()
            .any(|t| t.target.pid == pid && t.whole_heap)
            && self
                .probes
                .counters()
                .is_ok_and(|c| c[Counter::AllocsFull as usize] == 0);
        let scanned = match reach::process::scan(pid, &blocks, regs, self.scan_max_bytes, complete)
        {
            Ok(scanned) => scanned,
            // Exited since the last check: its scan at exit (if any) stands.
            Err(reach::process::ScanError::Gone) if running.is_some() => return,
            Err(e) => {
                self.model.scans.failed += 1;
                warn!("PID {pid}: reachability of its heap not known: {e}");
                return;
            }
        };
        let raw_lost = scanned
            .classes
            .iter()
            .filter(|&&c| c != reach::Class::Reachable)
            .count();
        let classes = match running {
            None => scanned.classes,
            Some(now) => {
                let ids: Vec<_> = allocs
                    .iter()
                    .zip(&scanned.classes)
                    .map(|(&(addr, info), &class)| ((addr, info.ts_ns), class))
                    .collect();
                self.confirmations
                    .entry(pid)
                    .or_default()
                    .confirm(now, &ids)
            }
        };
        let mut by_site: HashMap<SiteId, Reach> = HashMap::new();
        for ((_, info), class) in allocs.iter().zip(classes) {
            let reach = by_site
                .entry(SiteId::in_kernel(&info.site))
                .or_insert_with(|| Reach {
                    at_exit: running.is_none(),
                    ..Reach::default()
                });
            reach.add(class, info.size);
        }
        debug!(
            "PID {pid}: {} blocks scanned, {raw_lost} lost in this scan, {} bytes read in {} ms",
            scanned.stats.blocks, scanned.stats.bytes_read, scanned.stats.ms
        );
        self.model.set_reach(pid, by_site);
        let scans = &mut self.model.scans;
        match running {
            None => scans.at_exit += 1,
            Some(_) => scans.running += 1,
        }
        scans.latest = Some(scanned.stats);
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
                self.confirmations.remove(&t.target.pid);
                self.unwinder.remove(&mut self.probes, t.target.pid);
                // Its PID may be another process's next.
                self.probes.remove_target(t.target.pid);
            }
        }
        self.traced.iter().all(|t| t.exited)
    }
}

/// Attaches each of `allocators` to `target` (`whose` heap, in messages);
/// the first refusal is said once and the heap counted as not traced, so the
/// report never says "nothing lost" over it. Returns those attached.
fn attach_heap<'a>(
    probes: &mut Probes,
    lost: &mut Lost,
    target: &Target,
    allocators: &'a [allocator::Allocator],
    whose: &str,
) -> Vec<&'a allocator::Allocator> {
    let mut refused = None;
    let attached = allocators
        .iter()
        .filter(|alloc| match probes.attach_allocator(target, alloc) {
            Ok(()) => true,
            Err(e) => {
                refused.get_or_insert(format!("{}: {e}", alloc.describe()));
                false
            }
        })
        .collect();
    if let Some(why) = refused {
        lost.untraced_heaps += 1;
        warn!("{whose}: heap not traced: {why}");
    }
    attached
}

/// Process `pid` among `traced`, if it has not exited.
fn live(traced: &mut [Traced], pid: u32) -> Option<&mut Traced> {
    traced.iter_mut().find(|t| t.target.pid == pid && !t.exited)
}

/// Continues the process `e` is about, if it stopped itself for its probes
/// (leaktrace-ebpf/src/fork.rs): the child of a fork, else the process.
fn resume(e: &ProcEvent) {
    if e.paused == 0 {
        return;
    }
    let pid = if e.kind == EventKind::Fork as u32 {
        e.child
    } else {
        e.tgid
    };
    cont(pid);
}

fn cont(pid: u32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Makes `pid` stop at its C library's `_exit` (when it has one) for the
/// scan of its heap; a refusal only costs that scan.
fn attach_exit(probes: &mut Probes, pid: u32, exit: Option<&allocator::ExitPoint>) {
    let Some(exit) = exit else {
        return;
    };
    if let Err(e) = probes.attach_exit(pid, exit) {
        warn!("PID {pid}: its heap is not scanned at exit: {e}");
    }
}

/// However the session ends, no process stays stopped waiting for it.
impl Drop for Pump {
    fn drop(&mut self) {
        self.stop_pausing();
        while let Some(item) = self.events.next() {
            match Event::read(&item) {
                Some(Event::Fork(e) | Event::Exec(e) | Event::Entry(e)) => resume(&e),
                Some(Event::Exit(e)) if e.paused != 0 => cont(e.tgid),
                _ => {}
            }
        }
    }
}

/// The stack of a site whose stack was not recorded.
static NO_FRAMES: (Vec<u64>, u32) = (Vec::new(), StackEnd::Complete as u32);

/// The note ending a stack whose walk stopped before the outermost frame.
fn truncation(end: u32) -> Option<&'static str> {
    Some(match StackEnd::ALL.get(end as usize)? {
        StackEnd::Complete => return None,
        StackEnd::Depth => "[stack truncated: --max-depth reached]",
        StackEnd::NoMapping => "[stack ends: return address in no known code]",
        StackEnd::Unsupported => "[stack ends: unwind rule not followed]",
        StackEnd::Unreadable => "[stack ends: stack memory unreadable]",
        StackEnd::NotAdvancing => "[stack ends: frame did not move up the stack]",
        StackEnd::NoTable => "[stack ends: unwind table not loaded]",
    })
}
