//! `leaktrace agent`: every process of the node that the rules select,
//! traced by one session (one set of eBPF programs and maps), its profiles
//! pushed to Pyroscope and its numbers served to Prometheus.
//!
//! The session runs as for `leaktrace top`: it publishes a report each
//! second. This front end reads those reports and never the kernel: it
//! discovers processes (`discover`), asks the session to trace those the
//! rules select, serves the latest report (`http`, `metrics`), and pushes
//! per-target profiles (`profiles`, `push`). Exited processes get their last
//! profile from the report before they went, and the session forgets them.
pub mod config;
mod containers;
mod discover;
mod http;
mod kube;
mod metrics;
mod profiles;
pub mod push;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use log::{info, warn};
use tokio::sync::{mpsc, oneshot, watch};

use self::{
    config::Config,
    discover::{Decisions, Labels, Myself, Process, State},
    profiles::{Profiles, Style},
    push::{Push, Pusher, Watch, Wire},
};
use crate::{
    probes::{Families, Limits},
    report::Report,
    session::{self, Live, TraceRequest},
};

/// How long the last profiles may take to go out at SIGTERM.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// What the HTTP side reads: the latest snapshot, swapped whole.
#[derive(Clone, Default)]
pub struct View {
    report: Option<Arc<Report>>,
    decisions: Arc<Decisions>,
    /// The series labels of every process traced, until its last profile.
    labels: Arc<HashMap<u32, Arc<Labels>>>,
    /// Programs loaded (a first report came) and the first discovery done.
    ready: bool,
    sites_left_out: u64,
}

pub struct Shared {
    view: Mutex<View>,
    node: String,
    /// Each pusher's counters, by endpoint.
    pushes: Vec<(&'static str, Watch)>,
}

impl Shared {
    fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.view.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn health<'a>(&'a self, view: &'a View) -> metrics::Health<'a> {
        metrics::Health {
            node: &self.node,
            decisions: &view.decisions,
            labels: &view.labels,
            pushes: self
                .pushes
                .iter()
                .map(|(endpoint, w)| (*endpoint, w.stats()))
                .collect(),
            sites_left_out: view.sites_left_out,
        }
    }
}

/// In a container with its own cgroup namespace (containerd's default on
/// cgroup v2), other pods' cgroup paths read as `/../../kubepods/…`, which
/// the memory limits cannot be found from. With the host's PIDs (hostPID),
/// PID 1's namespace is the host's: the agent joins it, before any thread
/// starts. Elsewhere it is the agent's own, and nothing changes.
pub fn join_host_cgroup_namespace() {
    use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
    let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/cgroup")).map(|m| m.ino());
    match (ns("self"), ns("1")) {
        (Ok(mine), Ok(host)) if mine != host => {}
        _ => return,
    }
    let joined = std::fs::File::open("/proc/1/ns/cgroup").and_then(|f| {
        // SAFETY: setns on an open namespace descriptor; no memory is shared.
        match unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWCGROUP) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    match joined {
        Ok(()) => info!("joined the host's cgroup namespace"),
        Err(e) => warn!(
            "staying in this container's cgroup namespace ({e}): pods' memory limits may not be found"
        ),
    }
}

/// The wall clock in nanoseconds, for profiles' timestamps.
fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// What the probes trace in every target.
pub struct Probing {
    pub families: Families,
    pub limits: Limits,
    pub go_sample_rate: Option<u64>,
}

/// Runs the agent until SIGTERM (or `config.duration`).
pub async fn run(config: Config, probing: Probing) -> Result<()> {
    // Before anything listens: a missing capability is named at once.
    crate::preflight::check()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("--listen {}: cannot listen there", config.listen))?;
    info!("serving /metrics on http://{}", config.listen);
    let mut pushers = Vec::new();
    for c in config.push.iter().chain(&config.parca) {
        info!(
            "pushing profiles to {} every {:?}",
            c.url, config.push_interval
        );
        let pusher = Pusher::start(c.clone()).context("starting the push thread")?;
        pushers.push((c.wire, pusher));
    }
    let shared = Arc::new(Shared {
        view: Mutex::new(View::default()),
        node: config.node.clone(),
        pushes: pushers.iter().map(|(w, p)| (w.name(), p.watch())).collect(),
    });
    let pods = match &config.kubernetes {
        config::Kubernetes::None => None,
        source => {
            let client = kube::Client::new(source).map_err(anyhow::Error::msg)?;
            Some(client.start(config.node.clone()))
        }
    };
    let server = tokio::spawn(http::serve(listener, shared.clone()));
    let (reports, reports_seen) = watch::channel(None);
    let (quit, quit_seen) = watch::channel(false);
    let (requests, requests_seen) = mpsc::channel(16);
    let opts = session::Options {
        pids: Vec::new(),
        command: Vec::new(),
        user: None,
        duration: config.duration,
        interval: Duration::from_secs(3600),
        top: 0,
        outputs: Vec::new(),
        snapshot_every: None,
        quiet: true,
        min_age: Duration::ZERO,
        families: probing.families,
        go_sample_rate: probing.go_sample_rate,
        scan_at_exit: false,
        scan_every: None,
        scan_max_bytes: 0,
        fail_on: None,
        limits: probing.limits,
        forget_exited: true,
    };
    let live = Live {
        reports,
        quit: quit_seen,
        requests: Some(requests_seen),
    };
    let mut front = Front {
        config,
        shared,
        pushers,
        profiles: Profiles::default(),
        requests,
        myself: Myself::new(),
        pods,
        previous: None,
    };
    let (report, ()) = tokio::join!(session::run(opts, Some(live)), front.run(reports_seen));
    drop(quit);
    let report = report?;
    // The last profiles of everything still traced.
    front.push_all(&report);
    server.abort();
    let pushers = std::mem::take(&mut front.pushers);
    let left = tokio::task::spawn_blocking(move || {
        pushers
            .into_iter()
            .map(|(_, p)| p.shutdown(FLUSH_WITHIN))
            .sum::<usize>()
    })
    .await
    .unwrap_or(0);
    if left > 0 {
        warn!("{left} profiles were not pushed before the end");
    }
    Ok(())
}

/// The agent's side of the session: discovery, profiles, the HTTP snapshot.
struct Front {
    config: Config,
    shared: Arc<Shared>,
    pushers: Vec<(Wire, Pusher)>,
    profiles: Profiles,
    requests: mpsc::Sender<TraceRequest>,
    myself: Myself,
    pods: Option<kube::Pods>,
    /// The report before the latest: where exited targets' last profiles come from.
    previous: Option<Arc<Report>>,
}

impl Front {
    async fn run(&mut self, mut reports: watch::Receiver<Option<Arc<Report>>>) {
        let mut discover = tokio::time::interval(self.config.discover_every);
        discover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = self.config.push_interval;
        let mut push = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut discovered = false;
        loop {
            tokio::select! {
                changed = reports.changed() => {
                    if changed.is_err() {
                        return; // the session has ended
                    }
                    let Some(report) = reports.borrow_and_update().clone() else { continue };
                    self.new_report(report, discovered);
                }
                _ = discover.tick(), if self.shared.view().report.is_some() => {
                    self.discover().await;
                    discovered = true;
                    let ready = self.shared.view().report.is_some();
                    self.shared.update(|v| v.ready = ready);
                }
                _ = push.tick(), if !self.pushers.is_empty() => {
                    if let Some(report) = self.previous.clone() {
                        self.push_all(&report);
                    }
                }
            }
        }
    }

    /// A new report: targets gone since the one before get their last profile.
    fn new_report(&mut self, report: Arc<Report>, discovered: bool) {
        if let Some(before) = self.previous.take() {
            let live: HashSet<u32> = live_pids(&report).collect();
            let gone: Vec<u32> = live_pids(&before).filter(|p| !live.contains(p)).collect();
            for pid in gone {
                info!("PID {pid} has exited: its last profile goes out");
                self.push_target(&before, pid);
                self.profiles.forget(pid);
                self.shared.update(|v| {
                    Arc::make_mut(&mut v.labels).remove(&pid);
                });
            }
        }
        let left_out = self.profiles.sites_left_out;
        self.shared.update(|v| {
            v.report = Some(report.clone());
            v.sites_left_out = left_out;
            v.ready = discovered;
        });
        self.previous = Some(report);
    }

    fn push_all(&mut self, report: &Report) {
        for pid in live_pids(report).collect::<Vec<_>>() {
            self.push_target(report, pid);
        }
    }

    fn push_target(&mut self, report: &Report, pid: u32) {
        let Some(labels) = self.shared.view().labels.get(&pid).cloned() else {
            return;
        };
        for (wire, pusher) in &self.pushers {
            let style = match wire {
                Wire::Pyroscope => Style::Deltas,
                Wire::Parca => Style::Cumulative,
            };
            let series =
                self.profiles
                    .of_target(report, pid, &labels, &self.config.node, wall_ns(), style);
            if series.is_empty() {
                continue;
            }
            match Push::new(series.into_iter().map(|s| (s.labels, s.profile))) {
                Ok(push) => pusher.send(push),
                // The labels are the pod's and the process's: say which.
                Err(e) => warn!("PID {pid}: profiles not pushed to {}: {e}", wire.name()),
            }
        }
    }

    /// One look at the node's processes: those the rules select are traced,
    /// up to --max-targets; every decision is kept for /debug/targets.
    async fn discover(&mut self) {
        let view = self.shared.view();
        // Traced: what the last report has, and what was traced since.
        let traced: HashSet<u32> = view
            .report
            .iter()
            .flat_map(|r| live_pids(r))
            .chain(view.labels.keys().copied())
            .collect();
        let before = view.decisions.clone();
        let processes = match &self.pods {
            Some(pods) => {
                let index = pods.read().unwrap_or_else(|e| e.into_inner());
                discover::processes(Some(&index), &self.myself)
            }
            None => discover::processes(None, &self.myself),
        };
        let mut count = traced.len();
        let mut decisions = Decisions::default();
        for p in processes {
            let earlier = before
                .by_pid
                .get(&p.pid)
                .filter(|(e, _)| e.start_time == p.start_time)
                .map(|(_, s)| s.clone());
            let state = self.decide(&p, earlier, &traced, &mut count).await;
            decisions.by_pid.insert(p.pid, (p, state));
        }
        self.shared.update(|v| v.decisions = Arc::new(decisions));
    }

    async fn decide(
        &self,
        p: &Process,
        earlier: Option<State>,
        traced: &HashSet<u32>,
        count: &mut usize,
    ) -> State {
        if traced.contains(&p.pid) && earlier.as_ref().is_none_or(|s| *s == State::Traced) {
            return State::Traced;
        }
        let rule = match discover::select(&self.config, p, &self.myself) {
            Ok(rule) => rule,
            Err(why) => return State::Excluded(why),
        };
        if let Some(failed @ State::Failed(_)) = earlier {
            return failed; // not tried again
        }
        if Duration::from_secs(p.age_s) < self.config.min_age {
            return State::TooYoung;
        }
        if *count >= self.config.max_targets {
            return State::OverLimit;
        }
        let (reply, replied) = oneshot::channel();
        let request = TraceRequest { pid: p.pid, reply };
        if self.requests.send(request).await.is_err() {
            return State::Failed("the session has ended".into());
        }
        match replied.await {
            Ok(Ok(())) => {
                *count += 1;
                self.shared.update(|v| {
                    Arc::make_mut(&mut v.labels).insert(p.pid, p.labels.clone());
                });
                info!(
                    "tracing PID {} ({}, {}) by {rule}",
                    p.pid,
                    discover::shown(&p.comm),
                    discover::shown(&p.labels.service_name)
                );
                State::Traced
            }
            Ok(Err(why)) => {
                warn!(
                    "PID {} ({}) not traced: {why}",
                    p.pid,
                    discover::shown(&p.comm)
                );
                State::Failed(why)
            }
            Err(_) => State::Failed("the session has ended".into()),
        }
    }
}

fn live_pids(report: &Report) -> impl Iterator<Item = u32> + '_ {
    report.targets.iter().filter(|t| !t.exited).map(|t| t.pid)
}
