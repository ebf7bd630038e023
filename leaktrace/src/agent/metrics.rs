//! `/metrics`: built at each scrape from the latest report, so the series of
//! a process that has gone go with it. Labels are the target's (node,
//! namespace, pod, container, service_name) and a few of bounded values
//! (kind, verdict, state, reason, result); never a pid or a call site.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, atomic::AtomicU64},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use super::{
    discover::{Decisions, Labels, State},
    push::PushStats,
};
use crate::{model::Kind, report::Report, verdict::Verdict};

/// The two expositions' Content-Types (Prometheus 3 fails a scrape whose
/// type is missing or unknown): OpenMetrics for who asks for it (Prometheus
/// does), the classic text format for everyone else (curl, promtool).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type LabelSet = Vec<(String, String)>;
type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

/// The agent's own state, beside the report.
pub struct Health<'a> {
    pub node: &'a str,
    pub decisions: &'a Decisions,
    /// Each traced process's series labels.
    pub labels: &'a HashMap<u32, Arc<Labels>>,
    /// Per endpoint (`pyroscope`).
    pub pushes: Vec<(&'static str, PushStats)>,
    /// Sites left out of pushed profiles by the per-profile limits.
    pub sites_left_out: u64,
}

/// One target's sums, by the labels its series carry.
#[derive(Default)]
struct Sums {
    processes: u64,
    outstanding: BTreeMap<&'static str, f64>,
    allocated: BTreeMap<&'static str, f64>,
    descriptors: BTreeMap<&'static str, f64>,
    goroutines: f64,
    threads: f64,
    sites: BTreeMap<&'static str, f64>,
    leaking: BTreeMap<&'static str, f64>,
    growth: BTreeMap<&'static str, f64>,
    memory_limit: Option<f64>,
    time_to_limit: Option<f64>,
}

/// The exposition of `report` (none before the first) and the agent's
/// health, as OpenMetrics or else as the classic text format.
pub fn render(report: Option<&Report>, health: &Health, openmetrics: bool) -> String {
    let mut sums: BTreeMap<Labels, Sums> = BTreeMap::new();
    if let Some(report) = report {
        sum(report, health, &mut sums);
    }
    let mut registry = Registry::with_prefix("leaktrace");
    let target = |labels: &Labels, extra: &[(&str, &str)]| -> LabelSet {
        let mut set = vec![
            ("node".to_string(), health.node.to_string()),
            ("namespace".to_string(), labels.namespace.clone()),
            ("pod".to_string(), labels.pod.clone()),
            ("container".to_string(), labels.container.clone()),
            ("service_name".to_string(), labels.service_name.clone()),
        ];
        set.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        set
    };
    let outstanding = Family::<LabelSet, GaugeF>::default();
    let allocated = Family::<LabelSet, CounterF>::default();
    let descriptors = Family::<LabelSet, GaugeF>::default();
    let goroutines = Family::<LabelSet, GaugeF>::default();
    let threads = Family::<LabelSet, GaugeF>::default();
    let sites = Family::<LabelSet, GaugeF>::default();
    let leaking = Family::<LabelSet, GaugeF>::default();
    let growth = Family::<LabelSet, GaugeF>::default();
    let memory_limit = Family::<LabelSet, GaugeF>::default();
    let time_to_limit = Family::<LabelSet, GaugeF>::default();
    let processes = Family::<LabelSet, GaugeF>::default();
    for (labels, s) in &sums {
        processes
            .get_or_create(&target(labels, &[]))
            .set(s.processes as f64);
        for (kind, v) in &s.outstanding {
            outstanding
                .get_or_create(&target(labels, &[("kind", kind)]))
                .set(*v);
        }
        for (kind, v) in &s.allocated {
            allocated
                .get_or_create(&target(labels, &[("kind", kind)]))
                .inc_by(*v);
        }
        for (kind, v) in &s.descriptors {
            descriptors
                .get_or_create(&target(labels, &[("kind", kind)]))
                .set(*v);
        }
        goroutines
            .get_or_create(&target(labels, &[]))
            .set(s.goroutines);
        threads.get_or_create(&target(labels, &[])).set(s.threads);
        for (verdict, v) in &s.sites {
            sites
                .get_or_create(&target(labels, &[("verdict", verdict)]))
                .set(*v);
        }
        for (verdict, v) in &s.leaking {
            leaking
                .get_or_create(&target(labels, &[("verdict", verdict)]))
                .set(*v);
        }
        for (verdict, v) in &s.growth {
            growth
                .get_or_create(&target(labels, &[("verdict", verdict)]))
                .set(*v);
        }
        if let Some(v) = s.memory_limit {
            memory_limit.get_or_create(&target(labels, &[])).set(v);
        }
        if let Some(v) = s.time_to_limit {
            time_to_limit.get_or_create(&target(labels, &[])).set(v);
        }
    }
    registry.register_with_unit(
        "outstanding",
        "Memory allocated and not freed, by kind (heap, mmap, go_heap)",
        Unit::Bytes,
        outstanding,
    );
    registry.register_with_unit(
        "allocated",
        "Memory allocated while traced, by kind",
        Unit::Bytes,
        allocated,
    );
    registry.register(
        "open_descriptors",
        "Open descriptors, by kind (fd, socket)",
        descriptors,
    );
    registry.register("goroutines", "Live goroutines", goroutines);
    registry.register("threads", "Live threads", threads);
    registry.register("sites", "Call sites, by verdict", sites);
    registry.register_with_unit(
        "leaking",
        "Memory outstanding at sites whose verdict is leak or growing",
        Unit::Bytes,
        leaking,
    );
    registry.register(
        "growth_bytes_per_second",
        "How fast memory at leak and growing sites grows",
        growth,
    );
    registry.register_with_unit(
        "memory_limit",
        "The memory limit of the target's cgroup closest to being hit",
        Unit::Bytes,
        memory_limit,
    );
    registry.register_with_unit(
        "time_to_memory_limit",
        "Time until the memory limit at the growth of leak and growing sites (the shortest)",
        Unit::Seconds,
        time_to_limit,
    );
    registry.register("processes", "Processes traced with these labels", processes);
    agent_health(&mut registry, report, health);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    if openmetrics { out } else { classic(&out) }
}

/// OpenMetrics as the classic text format (version 0.0.4): metadata names
/// what the samples are named (counters end in `_total`, infos in `_info`,
/// a gauge there), and no `# UNIT` or `# EOF`.
fn classic(openmetrics: &str) -> String {
    // HELP comes before TYPE: the types first.
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let classic_name = |name: &str| {
        let suffix = match types.get(name) {
            Some(&"counter") => "_total",
            Some(&"info") => "_info",
            _ => "",
        };
        format!("{name}{suffix}")
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' ')) {
            let kind = if kind == "info" { "gauge" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", classic_name(name)));
        } else if let Some((name, help)) =
            line.strip_prefix("# HELP ").and_then(|r| r.split_once(' '))
        {
            out.push_str(&format!("# HELP {} {help}\n", classic_name(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn sum(report: &Report, health: &Health, sums: &mut BTreeMap<Labels, Sums>) {
    let labels_of = |pid: u32| -> Labels {
        health
            .labels
            .get(&pid)
            .map(|l| (**l).clone())
            .unwrap_or_default()
    };
    let mut of_pid: BTreeMap<u32, Labels> = BTreeMap::new();
    for t in report.targets.iter().filter(|t| !t.exited) {
        let labels = labels_of(t.pid);
        let s = sums.entry(labels.clone()).or_default();
        s.processes += 1;
        if let Some(limit) = &t.memory_limit {
            let v = limit.limit_bytes as f64;
            s.memory_limit = Some(s.memory_limit.map_or(v, |m: f64| m.min(v)));
        }
        of_pid.insert(t.pid, labels);
    }
    for site in &report.sites {
        let Some(labels) = of_pid.get(&site.pid) else {
            continue;
        };
        let s = sums.get_mut(labels).expect("summed above");
        let kind = site.kind.name();
        match site.kind {
            Kind::Heap | Kind::Mmap | Kind::GoHeap => {
                *s.outstanding.entry(kind).or_default() += site.outstanding_bytes as f64;
                *s.allocated.entry(kind).or_default() += site.total_bytes as f64;
            }
            Kind::Fd | Kind::Socket => {
                *s.descriptors.entry(kind).or_default() += site.outstanding_count as f64;
            }
            Kind::Goroutine => s.goroutines += site.outstanding_count as f64,
            Kind::Thread => s.threads += site.outstanding_count as f64,
        }
        *s.sites.entry(site.verdict.name()).or_default() += 1.0;
        if matches!(site.verdict, Verdict::Leak | Verdict::Growing) && !site.kind.is_handle() {
            let verdict = site.verdict.name();
            *s.leaking.entry(verdict).or_default() += site.outstanding_bytes as f64;
            *s.growth.entry(verdict).or_default() += site.growth_bytes_per_s.max(0.0);
            if let Some(t) = site.time_to_limit_s {
                s.time_to_limit = Some(s.time_to_limit.map_or(t, |m: f64| m.min(t)));
            }
        }
    }
}

fn agent_health(registry: &mut Registry, report: Option<&Report>, health: &Health) {
    let node = |extra: &[(&str, &str)]| -> LabelSet {
        let mut set = vec![("node".to_string(), health.node.to_string())];
        set.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        set
    };
    let targets = Family::<LabelSet, GaugeF>::default();
    for state in State::NAMES {
        targets
            .get_or_create(&node(&[("state", state)]))
            .set(health.decisions.count(state) as f64);
    }
    registry.register(
        "agent_targets",
        "Processes the last discovery looked at, by state",
        targets,
    );
    let events = Family::<LabelSet, CounterF>::default();
    let lost = Family::<LabelSet, CounterF>::default();
    if let Some(r) = report {
        events.get_or_create(&node(&[])).inc_by(r.events as f64);
        let l = &r.lost;
        for (reason, n) in [
            ("allocs_map_full", l.allocs_map_full),
            ("sites_map_full", l.sites_map_full),
            ("stacks_lost", l.stacks_lost),
            ("ring_buffer_overruns", l.ring_buffer_overruns),
            ("syscalls_map_full", l.syscalls_map_full),
            ("untraced_heaps", l.untraced_heaps),
            ("unfollowed_forks", l.unfollowed_forks),
        ] {
            lost.get_or_create(&node(&[("reason", reason)]))
                .inc_by(n as f64);
        }
    }
    registry.register("agent_events", "Events read from the kernel", events);
    registry.register(
        "agent_lost_events",
        "Events lost, by reason (totals are then low bounds)",
        lost,
    );
    let pushes = Family::<LabelSet, CounterF>::default();
    let queued = Family::<LabelSet, GaugeF>::default();
    for (endpoint, s) in &health.pushes {
        for (result, n) in [
            ("ok", s.sent_ok),
            ("retried", s.retries),
            ("failed", s.failed_transport + s.failed_5xx),
            ("rejected", s.rejected),
            ("expired", s.expired),
            ("dropped", s.dropped_queue_full),
        ] {
            pushes
                .get_or_create(&node(&[("endpoint", endpoint), ("result", result)]))
                .inc_by(n as f64);
        }
        queued
            .get_or_create(&node(&[("endpoint", endpoint)]))
            .set(s.queued as f64);
    }
    registry.register(
        "agent_push_requests",
        "Profile pushes, by endpoint and result",
        pushes,
    );
    registry.register(
        "agent_push_queue_length",
        "Profiles waiting to be pushed",
        queued,
    );
    let left_out = Family::<LabelSet, CounterF>::default();
    left_out
        .get_or_create(&node(&[]))
        .inc_by(health.sites_left_out as f64);
    registry.register(
        "agent_sites_left_out",
        "Sites left out of pushed profiles by the per-profile limits",
        left_out,
    );
    let (cpu, rss) = own_usage();
    let cpu_family = Family::<LabelSet, CounterF>::default();
    cpu_family.get_or_create(&node(&[])).inc_by(cpu);
    registry.register_with_unit(
        "agent_cpu",
        "The agent's own CPU time",
        Unit::Seconds,
        cpu_family,
    );
    let rss_family = Family::<LabelSet, GaugeF>::default();
    rss_family.get_or_create(&node(&[])).set(rss);
    registry.register_with_unit(
        "agent_resident_memory",
        "The agent's own resident memory",
        Unit::Bytes,
        rss_family,
    );
    let info = Info::new(node(&[("version", env!("CARGO_PKG_VERSION"))]));
    registry.register("agent", "The agent's version", info);
}

/// The agent's CPU seconds (user and system) and resident bytes.
fn own_usage() -> (f64, f64) {
    // SAFETY: sysconf has no memory preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
            // utime and stime: fields 14 and 15; `rest` starts at field 3.
            let user: f64 = rest.get(11)?.parse().ok()?;
            let system: f64 = rest.get(12)?.parse().ok()?;
            Some((user + system) / ticks.max(1) as f64)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * page.max(1) as f64);
    (cpu, rss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::fixtures::{report, site, target},
        verdict::Verdict,
    };

    #[test]
    fn processes_with_the_same_labels_are_summed_and_the_text_is_classic() {
        let mut a = site(Verdict::Leak, 1000, 0.9, "a");
        a.pid = 7;
        a.time_to_limit_s = Some(600.0);
        let mut b = site(Verdict::Stable, 500, 0.9, "b");
        b.pid = 8;
        let r = report(vec![target(7, "api"), target(8, "api")], vec![a, b]);
        let same = Arc::new(Labels {
            service_name: "api".into(),
            ..Labels::default()
        });
        let labels = HashMap::from([(7, same.clone()), (8, same)]);
        let decisions = Decisions::default();
        let health = Health {
            node: "n",
            decisions: &decisions,
            labels: &labels,
            pushes: vec![(
                "pyroscope",
                PushStats {
                    retries: 3,
                    ..PushStats::default()
                },
            )],
            sites_left_out: 0,
        };
        let text = render(Some(&r), &health, false);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_string()
        };
        assert!(line("leaktrace_processes{").ends_with(" 2.0"), "{text}");
        assert!(
            line("leaktrace_outstanding_bytes{").ends_with(" 1500.0"),
            "{text}"
        );
        assert!(
            line("leaktrace_leaking_bytes{").ends_with(" 1000.0"),
            "{text}"
        );
        assert!(
            line("leaktrace_time_to_memory_limit_seconds{").ends_with(" 600.0"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE leaktrace_allocated_bytes_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE leaktrace_agent_info gauge\n"),
            "{text}"
        );
        assert!(line("leaktrace_agent_push_requests_total{").contains("endpoint=\"pyroscope\""));
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(!text.contains("pid="), "{text}");
        let open = render(Some(&r), &health, true);
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
