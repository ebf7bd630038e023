//! One tracing session: find the targets, attach, pump the kernel's data into
//! the model, and hand reports to the views (or to the agent, a front end
//! that also asks for targets while it runs).
//!
//! The data flows one way through its modules: `node` is the node's kernel
//! side (one set of programs and maps for every target, the ring buffer,
//! the unwind tables), `events` types what the ring buffer holds, `ingest`
//! (the core, behind the two `seams`) turns it into the site model,
//! `targets` keeps each process's own state from attach to exit, `attach`
//! and `refresh` bring targets in and totals out, `scan` reads the targets'
//! memory for reachability, and this module runs the loop.
mod attach;
mod events;
mod ingest;
mod node;
mod refresh;
mod scan;
mod seams;
mod stacks;
mod targets;

use std::{collections::HashMap, ffi::OsString, io::Write, time::Duration};

use anyhow::Result;
use leaktrace_common::{StackId, pause};
use log::{debug, info, warn};
use tokio::signal::unix::{SignalKind, signal};

use self::{events::Event, ingest::Ingest, node::Node, seams::Procfs, targets::Targets};
use crate::{
    model::Ns,
    output::Output,
    preflight,
    probes::{Families, Limits},
    reach::Confirmation,
    report::{ModuleMap, Report},
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
    /// The Go heap sampling rate set where the runtime has it off (writes the
    /// target's memory); `None`: left off.
    pub go_sample_rate: Option<u64>,
    /// Stop targets at `_exit` to scan their heap's reachability.
    pub scan_at_exit: bool,
    /// Scan running targets' heaps this often.
    pub scan_every: Option<Duration>,
    /// Bytes one scan reads at most.
    pub scan_max_bytes: u64,
    pub fail_on: Option<crate::report::FailOn>,
    pub limits: Limits,
    /// The agent: an exited process's state goes (its last profile was
    /// taken from the previous report), instead of staying in the report.
    pub forget_exited: bool,
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

/// A live view of the session (`leaktrace top`): the pump publishes a fresh
/// report every second, without ever waiting for the view, and stops when the
/// view sets `quit`.
pub struct Live {
    pub reports: tokio::sync::watch::Sender<Option<std::sync::Arc<Report>>>,
    pub quit: tokio::sync::watch::Receiver<bool>,
    /// The agent: running processes to trace from now on.
    pub requests: Option<tokio::sync::mpsc::Receiver<TraceRequest>>,
}

/// Trace process `pid` from now on; `reply` says whether it could be.
pub struct TraceRequest {
    pub pid: u32,
    pub reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The next request of a live view that sends them; never without one.
async fn next_request(
    requests: &mut Option<tokio::sync::mpsc::Receiver<TraceRequest>>,
) -> Option<TraceRequest> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

pub async fn run(opts: Options, live: Option<Live>) -> Result<Report> {
    preflight::check()?;
    preflight::raise_open_files_limit();
    let mut pump = Pump {
        node: Node::load(opts.limits, opts.families)?,
        ingest: Ingest::new(opts.min_age.as_nanos() as Ns),
        procfs: Procfs::default(),
        targets: Targets::default(),
        go_heap_before: HashMap::new(),
        go_heap_sites_looked: 0,
        go_sample_rate: opts.go_sample_rate,
        heap: opts.families.heap,
        scan_at_exit: opts.scan_at_exit,
        scan_max_bytes: opts.scan_max_bytes,
        confirmations: HashMap::new(),
        started: now_ns(),
        ages_at: 0,
        gone: Vec::new(),
        compact_due: false,
        pending: Default::default(),
        forget_exited: opts.forget_exited,
    };
    for &pid in &opts.pids {
        pump.trace_running(pid, &opts)?;
    }
    if !opts.command.is_empty() {
        pump.start_command(&opts)?;
    }
    // The trace (and --duration) starts when the probes are in, not before.
    pump.started = now_ns();
    // A running Go program's heap sampling is turned on now, not a second later.
    pump.read_go_rates();
    pump.trace(&opts, live).await?;
    Ok(pump.finish())
}

/// A Go heap profile bucket with objects in use at attach: the site they are
/// counted at (their own, under "[allocated before attach]", until they join
/// the site allocating at the same place since) and their size.
struct GoHeapBefore {
    stack_id: StackId,
    size: u64,
    joined: bool,
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

/// How often the ring buffer is drained (no wakeup per event: see docs/design.md).
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How often per-site totals are read and targets checked.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How often the live view's ages are recomputed.
const LIVE_AGES_EVERY: Duration = Duration::from_secs(5);

/// The session's state: the node's kernel side, the core, the targets.
struct Pump {
    node: Node,
    ingest: Ingest,
    procfs: Procfs,
    targets: Targets,
    /// Go heap profile buckets with objects in use at attach, by (tgid, bucket).
    go_heap_before: HashMap<(u32, u64), GoHeapBefore>,
    /// Go heap sites when buckets last looked for a site to join.
    go_heap_sites_looked: usize,
    go_sample_rate: Option<u64>,
    /// Whether the heap is traced: allocators of libraries loaded later are probed.
    heap: bool,
    /// Whether exiting processes stop for the scan of their heap.
    scan_at_exit: bool,
    scan_max_bytes: u64,
    /// Each process's running scans so far (see reach.rs).
    confirmations: HashMap<u32, Confirmation>,
    started: Ns,
    /// When ages were last brought up to date.
    ages_at: Ns,
    /// Forked processes that exited before they could be followed.
    gone: Vec<u32>,
    /// Processes ended since the tables were last compacted.
    compact_due: bool,
    /// Events of the batch being applied, not yet done with.
    pending: std::collections::VecDeque<Event>,
    /// See [`Options::forget_exited`].
    forget_exited: bool,
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
        let woken = self.node.woken()?;
        if self.heap {
            self.node.pause_at(pause::NEW)?;
        }
        if self.scan_at_exit {
            self.node.pause_at(pause::EXIT)?;
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
        let mut requests = live.as_mut().and_then(|l| l.requests.take());
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
                Some(request) = next_request(&mut requests) => {
                    let traced = self.trace_running(request.pid, opts).map_err(|e| format!("{e:#}"));
                    let _ = request.reply.send(traced);
                }
                _ = &mut over => break Stop::Duration,
                _ = refresh.tick() => {
                    self.refresh()?;
                    self.sample();
                    // A live view stays on what the targets left when they exit.
                    if self.check_exits() && live.is_none() {
                        break Stop::TargetsExited;
                    }
                    self.compact();
                    if let Some(live) = &live {
                        let report = self.live_report()?;
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
        self.node.stop_pausing();
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

    /// Once a second at most, after processes ended: the room their state
    /// took goes back, to the system too (a node agent sees bursts of
    /// thousands of short processes).
    fn compact(&mut self) {
        if !std::mem::take(&mut self.compact_due) {
            return;
        }
        self.ingest.compact();
        // SAFETY: no preconditions; glibc only hands free pages back.
        #[cfg(target_env = "gnu")]
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Brings totals, ages and symbols up to date and snapshots the model.
    fn current_report(&mut self) -> Result<Report> {
        self.settle()?;
        Ok(self.report())
    }

    /// Totals, ages, socket addresses and symbols up to date.
    fn settle(&mut self) -> Result<()> {
        self.refresh()?;
        self.ages_and_symbols()
    }

    /// Ages, socket addresses and symbols up to date (totals just read).
    fn ages_and_symbols(&mut self) -> Result<()> {
        self.update_ages()?;
        self.read_waiting();
        self.resolve_sockets();
        self.ingest.symbolize(&self.node.probes, &mut self.procfs);
        Ok(())
    }

    /// The live view's report, each second, on the totals just read: ages
    /// (a walk of every outstanding allocation) and where goroutines wait (a
    /// read of every goroutine) are brought up to date every
    /// [`LIVE_AGES_EVERY`] only.
    fn live_report(&mut self) -> Result<Report> {
        let now = now_ns();
        if now.saturating_sub(self.ages_at) >= LIVE_AGES_EVERY.as_nanos() as Ns {
            self.update_ages()?;
            self.read_waiting();
        }
        self.resolve_sockets();
        self.ingest.symbolize(&self.node.probes, &mut self.procfs);
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
        self.ingest.model.sample(t);
    }

    /// Stops commands leaktrace started itself if they still run; PIDs given with
    /// --pid are never touched.
    fn finish(mut self) -> Report {
        let report = self.report();
        self.targets.terminate_commands();
        report
    }

    fn report(&mut self) -> Report {
        let targets = self.targets.infos();
        let modules = self.modules();
        let mut report =
            Report::build(&self.ingest.model, targets, modules, self.started, now_ns());
        report.targets_unlisted = self.targets.unlisted;
        report.events = self.node.events_read;
        report
    }

    /// The code mappings of every target, from their latest memory maps.
    fn modules(&mut self) -> Vec<ModuleMap> {
        let mut modules = Vec::new();
        for (&pid, maps) in &self.procfs.maps {
            for m in maps.code() {
                let path = m.path.as_deref().expect("code() has paths");
                modules.push(ModuleMap {
                    pid,
                    start: m.start,
                    limit: m.end,
                    offset: m.offset,
                    path: path.to_string_lossy().into_owned(),
                    build_id: self.procfs.symbolizer.build_id(pid, m),
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
        let batch = self.node.read_events();
        let execs: Vec<u32> = batch
            .iter()
            .filter_map(|e| match e {
                Event::Exec(e) => Some(e.tgid),
                _ => None,
            })
            .collect();
        self.refresh_maps(&execs);
        let mut stale: Vec<u32> = Vec::new();
        // Held in `pending` until applied: should applying one fail midway,
        // `Drop` still continues every process the rest left stopped.
        self.pending.extend(batch);
        while let Some(event) = self.pending.front().cloned() {
            self.apply_event(&event, &mut stale);
            self.pending.pop_front();
        }
        self.ingest.flush();
        stale.sort_unstable();
        stale.dedup();
        self.node.probes.forget(&stale, false, false);
        if !self.gone.is_empty() {
            let gone = std::mem::take(&mut self.gone);
            for &pid in &gone {
                self.end_process(pid, false);
                self.procfs.maps.remove(&pid);
                self.node.unwinder.remove(&mut self.node.probes, pid);
            }
            self.compact_due = true;
            self.targets.unlisted += gone.len() as u64;
            // Never probed: only the target set and fork maps hold them.
            self.node.probes.forget(&gone, false, false);
        }
    }
}

impl Pump {
    /// One event of a batch; `stale` gathers the processes no longer traced
    /// that sent it, for the kernel to forget.
    fn apply_event(&mut self, event: &Event, stale: &mut Vec<u32>) {
        // A process ended with its state: what it did after, in the
        // moment before the kernel forgot it, is not applied.
        let pid = event.pid();
        if self.targets.get(pid).is_none() && !self.gone.contains(&pid) {
            debug!("event of PID {pid}, no longer traced, ignored");
            // The kernel forgets it (and a child it forked meanwhile),
            // which stops its events.
            stale.push(pid);
            if let Event::Fork(e) = event {
                stale.push(e.child);
            }
            resume(event);
            return;
        }
        if self
            .ingest
            .apply(event, &self.node.probes, &mut self.procfs)
        {
            return;
        }
        match event {
            Event::Exec(e) => {
                self.new_image(e); // it goes on from there
                return;
            }
            Event::Entry(e) => {
                // The loader has mapped the libraries: their tables go in
                // before `main` runs.
                self.refresh_maps_of(e.tgid);
            }
            Event::Exit(e) => self.scan_exiting(e),
            Event::Fork(e) => self.adopt(e.tgid, e.child),
            _ => {}
        }
        resume(event);
    }
}

/// Continues the process an event left stopped for leaktrace, if it did
/// (leaktrace-ebpf/src/fork.rs, exit.rs).
fn resume(event: &Event) {
    if let Some(pid) = event.paused_pid() {
        cont(pid);
    }
}

fn cont(pid: u32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// However the session ends, no process stays stopped waiting for it (the
/// node's side continues those whose events are still unread).
impl Drop for Pump {
    fn drop(&mut self) {
        self.node.stop_pausing();
        for event in std::mem::take(&mut self.pending) {
            resume(&event);
        }
    }
}
