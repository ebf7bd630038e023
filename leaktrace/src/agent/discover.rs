//! The node's processes, as the agent's rules see them: who each is (comm,
//! executable, container, pod) and whether it is traced, and why not.
use std::{collections::HashMap, path::Path, sync::Arc};

use serde::Serialize;

use super::{
    config::{Config, Match},
    containers::{self, ContainerInfo, PodIndex},
};
use crate::{escape, target};

/// Processes the node may have at most that one discovery looks at: /proc
/// is the kernel's, but a fork bomb should not make the agent's memory grow.
const MAX_PROCESSES: usize = 1 << 16;

/// What the agent knows of one process: enough to select it and label its series.
#[derive(Clone, Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    /// Clock ticks after boot: with the pid, one process (pids are reused).
    #[serde(skip)]
    pub start_time: u64,
    pub comm: String,
    pub exe: String,
    pub age_s: u64,
    #[serde(flatten)]
    pub labels: Arc<Labels>,
    /// Its pod's container, when the pods are known.
    #[serde(skip)]
    pub pod: Option<ContainerInfo>,
}

/// A target's series labels (docs/agent.md); empty when unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Labels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub service_name: String,
    /// The container's id, when the process is in one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container_id: String,
}

/// Whether a process is traced, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum State {
    Traced,
    /// A rule, or a built-in exclude, says no (which).
    Excluded(String),
    /// Selected, younger than --min-age.
    TooYoung,
    /// Selected, but --max-targets are traced.
    OverLimit,
    /// Selected, and attaching failed (why): not tried again.
    Failed(String),
}

impl State {
    /// Its name as the `state` label of `leaktrace_agent_targets`.
    pub fn name(&self) -> &'static str {
        match self {
            State::Traced => "traced",
            State::Excluded(_) => "excluded",
            State::TooYoung => "too_young",
            State::OverLimit => "over_limit",
            State::Failed(_) => "failed",
        }
    }

    pub const NAMES: [&'static str; 5] =
        ["traced", "excluded", "too_young", "over_limit", "failed"];
}

/// Reads the node's processes (but `myself`) and what the pods say of them.
pub fn processes(pods: Option<&PodIndex>, myself: &Myself) -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let uptime_ticks = uptime_ticks();
    let mut out = Vec::new();
    for entry in dir.flatten().take(MAX_PROCESSES) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(p) = process(pid, pods, myself, uptime_ticks) {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn process(pid: u32, pods: Option<&PodIndex>, myself: &Myself, uptime: u64) -> Option<Process> {
    if pid == myself.pid {
        return None;
    }
    let stat = target::read_stat(pid)?;
    let exe = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
        // A kernel thread (no executable), or gone.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        // Another user's, without CAP_SYS_PTRACE: still listed, and the
        // attempt to trace it, if a rule selects it, says why it fails.
        Err(e) => format!("[unreadable: {e}]"),
    };
    let container = containers::container_of_pid(pid).ok().flatten();
    let info = container
        .as_ref()
        .and_then(|c| pods.and_then(|p| p.lookup(c)));
    let labels = Labels {
        namespace: info.map(|i| i.namespace.clone()).unwrap_or_default(),
        pod: info.map(|i| i.pod.clone()).unwrap_or_default(),
        container: info.map(|i| i.container.clone()).unwrap_or_default(),
        service_name: containers::service_name(info, &stat.comm),
        container_id: container.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
    };
    let ticks = clock_ticks();
    Some(Process {
        pod: info.cloned(),
        pid,
        start_time: stat.start_time,
        age_s: uptime.saturating_sub(stat.start_time) / ticks,
        comm: stat.comm,
        exe,
        labels: Arc::new(labels),
    })
}

/// The agent itself, to be left out however it is seen: its pid, and its
/// executable's identity (a second agent of the same binary is left out too).
pub struct Myself {
    pub pid: u32,
    file: Option<(u64, u64)>,
}

impl Myself {
    pub fn new() -> Myself {
        Myself {
            pid: std::process::id(),
            file: file_id(Path::new("/proc/self/exe")),
        }
    }

    fn is(&self, pid: u32) -> bool {
        self.file.is_some() && file_id(Path::new(&format!("/proc/{pid}/exe"))) == self.file
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What the rules and the built-in excludes say of `p`, before its age and
/// the node's cap are looked at: `Ok(rule)` to trace it, `Err(why not)`.
pub fn select(config: &Config, p: &Process, myself: &Myself) -> Result<String, String> {
    if myself.is(p.pid) {
        return Err("leaktrace itself".into());
    }
    if containers::is_pause(&p.comm, &p.exe) {
        return Err("a pause container".into());
    }
    for (i, rule) in config.rules.iter().enumerate() {
        if matches(&rule.when, p, p.pod.as_ref()) {
            let what = format!("rule {} ({})", i + 1, rule.when.describe());
            return if rule.include { Ok(what) } else { Err(what) };
        }
    }
    Err("no rule selects it".into())
}

fn matches(m: &Match, p: &Process, pod: Option<&ContainerInfo>) -> bool {
    let k8s =
        m.namespace.is_some() || !m.pod_labels.is_empty() || m.annotation || m.container.is_some();
    if k8s {
        let Some(pod) = pod else { return false };
        if m.namespace.as_ref().is_some_and(|n| *n != pod.namespace)
            || m.container.as_ref().is_some_and(|c| *c != pod.container)
            || m.pod_labels
                .iter()
                .any(|(k, v)| pod.labels.get(k) != Some(v))
            || (m.annotation
                && pod
                    .annotations
                    .get(containers::TRACE_ANNOTATION)
                    .map(String::as_str)
                    != Some("true"))
        {
            return false;
        }
    }
    m.comm.as_ref().is_none_or(|r| r.is_match(&p.comm))
        && m.exe.as_ref().is_none_or(|r| r.is_match(&p.exe))
}

/// The decisions of the last discovery, by pid, for /debug/targets and the
/// metrics; and the labels of every process traced.
#[derive(Default)]
pub struct Decisions {
    pub by_pid: HashMap<u32, (Process, State)>,
}

impl Decisions {
    pub fn count(&self, state: &str) -> usize {
        self.by_pid
            .values()
            .filter(|(_, s)| s.name() == state)
            .count()
    }

    /// /debug/targets: every process looked at, traced first.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            process: &'a Process,
            #[serde(flatten)]
            state: &'a State,
        }
        let mut rows: Vec<(&Process, &State)> = self.by_pid.values().map(|(p, s)| (p, s)).collect();
        rows.sort_by_key(|(p, s)| (s.name() != "traced", p.pid));
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|(process, state)| Row { process, state })
            .collect();
        serde_json::to_value(rows).unwrap_or_default()
    }
}

/// A name from the target, safe to log on one line.
pub fn shown(s: &str) -> String {
    escape::shown(s).into_owned()
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Seconds since boot, in clock ticks (the unit of a process's start time).
fn uptime_ticks() -> u64 {
    let secs: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    (secs * clock_ticks() as f64) as u64
}
