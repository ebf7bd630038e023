//! The command line.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    agent::{
        self,
        config::{Config, Flags},
    },
    output::{Format, Output},
    probes::{Families, Limits},
    report::FailOn,
    session::Options,
};

const ABOUT: &str = "Find memory that is never freed and descriptors never closed, per call site, in running processes — out of process, with eBPF.";

const LONG_ABOUT: &str = "\
leaktrace attaches eBPF probes to a running process (--pid) or to a command it \
starts (-- CMD ARGS…) and accounts, per call site, the heap allocations \
(malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign, \
valloc, pvalloc, free), the anonymous mappings (mmap, munmap, mremap) and the \
file descriptors (files, sockets, pipes, eventfds, epoll, timerfds, …: every \
call that creates one, close, close_range, dup2, exec) that are still \
outstanding, with the paths and peer addresses of what is open. The target is not restarted, recompiled or ptraced; its \
allocators are found through its memory map: glibc, musl, jemalloc, tcmalloc, \
mimalloc (also with their je_/_rjem_/tc_/mi_ prefixes), an allocator \
library's operator new/delete, Rust's shim for any #[global_allocator]; the \
report names each.

Go programs (Go 1.21 to 1.27, stripped or not, PIE or not) are found by their \
runtime: leaktrace adds the Go heap in use per allocation site (kind go_heap, \
from the runtime's own heap-profile sampling, scaled like go tool pprof does) \
and the goroutines alive per creation site (kind goroutine: the function holding \
the `go` statement and its callers, with the function each goroutine runs), \
also what a running process (--pid) had in use and alive at attach. Only entry \
uprobes touch Go code. A binary that never calls runtime.MemProfile (no pprof) has \
sampling off (MemProfileRate 0): leaktrace turns it on, one sample per 64 KiB \
(--go-sample-rate), and says so; --no-go-heap-sampling leaves it off.

When a traced C, C++ or Rust process exits, it stops for a moment in the C \
library's _exit while leaktrace scans its memory, as LeakSanitizer does, for \
heap blocks nothing points to any more: per site, unreachable (definitely \
lost), indirect (only lost blocks point to them) and reachable blocks; a site \
with lost blocks is a leak. --scan-every scans running processes too, \
--fail-on makes the run fail on what it finds (docs/reachability.md).

Every --interval it prints the top sites, leaks first, the largest first within \
a verdict; at the end \
(--duration, Ctrl-C, SIGTERM, or when every target has exited) it prints a \
final report with symbolized stacks, a verdict per site (leak, growing, stable, \
transient), its growth rate and the time until the memory limit at that rate. \
With --output it also writes the report as JSON, as a pprof profile (for go tool \
pprof, Pyroscope, Parca), as a flamegraph SVG, or as folded stacks.

Nothing is left behind: probes are removed by the kernel when leaktrace exits, \
however it exits. A command started with -- CMD is sent SIGTERM if it still \
runs when tracing ends; processes given with --pid are never signalled, and \
their memory is written only to turn a Go program's heap sampling on (one \
word, runtime.MemProfileRate, where it is 0; not with --no-go-heap-sampling).

leaktrace needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) and a kernel \
with BTF.";

const EXAMPLES: &str = "\
EXAMPLES:
    sudo leaktrace --pid 1234                  trace until Ctrl-C
    sudo leaktrace --pid 1234 --pid 1240 -d 60s -o leaks.json
    sudo leaktrace -d 10s -- ./server --port 8080
    sudo leaktrace --no-heap --no-mmap --pid 1234   descriptors and sockets only
    sudo leaktrace --pid 4321 --go-sample-rate 16KiB   a Go service, its heap finely sampled
    sudo leaktrace --pid 1234 -o leaks.pb.gz -o flame.svg
    go tool pprof -top leaks.pb.gz             read the profile (inuse_space by default)
    sudo leaktrace --pid 1234 -o leaks.pb.gz --snapshot-every 60s
    go tool pprof -base leaks.0001.pb.gz leaks.0005.pb.gz   growth between snapshots

    sudo leaktrace --fail-on unreachable -- ./integration-tests
                                               fail a CI job on memory nothing points to at exit

EXIT STATUS:
    0 on a completed trace (leaks found or not), 1 on an error, 2 on bad usage,
    3 when --fail-on finds sites (listed on stderr). A command's own exit code is
    in the report (\"exited (N)\", JSON exit_code).";

#[derive(Debug, Parser)]
#[command(name = "leaktrace", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXAMPLES)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub view: Option<View>,

    #[command(flatten)]
    pub trace: TraceArgs,
}

// Parsed once, at start: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum View {
    /// A live full-screen view of what leaks, refreshed every second (keys: ? in the view).
    #[command(long_about = TOP_ABOUT, after_long_help = TOP_EXAMPLES)]
    Top(TraceArgs),
    /// Node-wide: trace the processes rules select, push profiles to Pyroscope, serve Prometheus metrics.
    #[command(long_about = AGENT_ABOUT, after_long_help = AGENT_EXAMPLES)]
    Agent(AgentArgs),
}

const AGENT_ABOUT: &str = "\
Runs until SIGTERM on a node (a Kubernetes DaemonSet, or a host), looks at its \
processes every --discover-every and traces those the rules select with one \
set of eBPF programs: the same heap, mmap, descriptor, goroutine and thread \
accounting as plain leaktrace, for many processes at once.

Rules are ordered; the first whose conditions all hold decides, and a process \
no rule selects is not traced. Flags add rules: --exclude-namespace and \
--exclude-comm first, then the --config file's rules, then --namespace, \
--match-comm, --match-exe and --opt-in. leaktrace itself and pause containers \
are never traced; processes younger than --min-age wait, and at most \
--max-targets are traced at once. A process whose attach fails is not tried \
again (/debug/targets says why).

Each target's series carry the labels node, namespace, pod, container and \
service_name (the pod annotation pyroscope.io/service_name, else \
namespace/container, else the command name); a process's container comes from \
its cgroup. --push-url pushes, every --push-interval, one Pyroscope series per \
target and profile family (memory, goroutine, descriptors, threads), alloc_* \
as deltas since the last push; a bounded queue retries with backoff and never \
holds tracing up. An exited target's last profile is pushed and its state \
dropped.

HTTP on --listen (loopback by default: the endpoints name every traced \
process's functions and files): /metrics (Prometheus), /healthz, /readyz, \
/debug/targets (JSON: every process looked at, and why it is or is not \
traced), /debug/pprof/leaks?pid=PID (for go tool pprof). See docs/agent.md.";

const AGENT_EXAMPLES: &str = "\
EXAMPLES:
    sudo leaktrace agent --match-comm '^redis-server$'
    sudo leaktrace agent --match-comm '^api$' --push-url http://localhost:4040
    sudo leaktrace agent --config /etc/leaktrace/config.yaml
    curl -s localhost:9847/metrics | grep leaktrace_leaking_bytes
    go tool pprof -top 'http://localhost:9847/debug/pprof/leaks?pid=1234'";

/// `leaktrace agent`'s flags; each has a key of the same name in --config.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// A YAML file with the same settings and ordered rules (docs/agent.md);
    /// flags win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve HTTP here [default: 127.0.0.1:9847].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// This node's name [default: $NODE_NAME, else the hostname].
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Trace processes whose command name (comm) matches (repeat for several).
    #[arg(long = "match-comm", value_name = "REGEX")]
    pub match_comm: Vec<String>,

    /// Trace processes whose executable's path matches.
    #[arg(long = "match-exe", value_name = "REGEX")]
    pub match_exe: Vec<String>,

    /// Never trace processes whose command name matches.
    #[arg(long = "exclude-comm", value_name = "REGEX")]
    pub exclude_comm: Vec<String>,

    /// Trace the pods of this Kubernetes namespace.
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Never trace the pods of this namespace.
    #[arg(long = "exclude-namespace", value_name = "NS")]
    pub exclude_namespaces: Vec<String>,

    /// Trace pods annotated leaktrace.io/trace: "true".
    #[arg(long)]
    pub opt_in: bool,

    /// Leave processes younger than this alone until they are not [default: 30s].
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub min_age: Option<Duration>,

    /// Trace at most this many processes at once [default: 32].
    #[arg(long, value_name = "N")]
    pub max_targets: Option<usize>,

    /// Look at the node's processes this often [default: 5s].
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub discover_every: Option<Duration>,

    /// Push profiles to this Grafana Pyroscope (e.g. http://pyroscope:4040).
    /// Basic auth from $LEAKTRACE_PUSH_USER and $LEAKTRACE_PUSH_PASSWORD.
    #[arg(long, value_name = "URL")]
    pub push_url: Option<String>,

    /// Push this often [default: 15s].
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub push_interval: Option<Duration>,

    /// The tenant pushed to (header X-Scope-OrgID).
    #[arg(long, value_name = "ID")]
    pub push_tenant: Option<String>,

    /// Send this file's token as `Authorization: Bearer`.
    #[arg(long, value_name = "FILE")]
    pub push_bearer_token_file: Option<PathBuf>,

    /// Also push profiles to this Parca (e.g. http://parca:7070), through its
    /// HTTP gateway's WriteRaw, every --push-interval.
    #[arg(long, value_name = "URL")]
    pub parca_url: Option<String>,

    /// Read this node's pods through this kubeconfig's current context
    /// [default: the service account's, when in a pod].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Do not read pods from Kubernetes: process rules only.
    #[arg(long, conflicts_with = "kubeconfig")]
    pub no_kubernetes: bool,

    /// Stop after this long; default: until SIGTERM or Ctrl-C.
    #[arg(short, long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub probing: Probing,
}

impl AgentArgs {
    /// The agent's settings, or a one-line message.
    pub fn config(self) -> Result<(Config, agent::Probing), String> {
        let probing = agent::Probing {
            // The agent follows no forks: the rules select what is traced.
            families: self.probing.families(false)?,
            limits: self.probing.limits(),
            go_sample_rate: self.probing.go_sample_rate(),
        };
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be longer than zero".into());
        }
        let config = Config::new(Flags {
            config: self.config,
            listen: self.listen,
            node: self.node,
            match_comm: self.match_comm,
            exclude_comm: self.exclude_comm,
            match_exe: self.match_exe,
            namespaces: self.namespaces,
            exclude_namespaces: self.exclude_namespaces,
            opt_in: self.opt_in,
            min_age: self.min_age,
            max_targets: self.max_targets,
            discover_every: self.discover_every,
            push_url: self.push_url,
            push_interval: self.push_interval,
            push_tenant: self.push_tenant,
            push_bearer_token_file: self.push_bearer_token_file,
            parca_url: self.parca_url,
            kubeconfig: self.kubeconfig,
            no_kubernetes: self.no_kubernetes,
            duration: self.duration,
        })?;
        Ok((config, probing))
    }
}

const TOP_ABOUT: &str = "\
The same tracing as plain leaktrace, shown live: a header with the targets, \
totals and health (lost events in red), and one row per site with its verdict, \
outstanding bytes and count, growth over the last minute, a trend of its \
outstanding amount, the age of its oldest allocation or handle, and its top \
frame. Enter shows the whole stack and, for descriptors, their paths and peers.

Keys: arrows or j/k move, Enter/Esc open/close the stack, s cycles the sort \
(verdict, bytes, count, growth, age), / filters by function, file or path, t \
cycles the kind (all, heap, mmap, fd, socket, go_heap, goroutine), p pauses the display (tracing \
goes on), e exports the current state as pprof and JSON in the working \
directory, ? shows help, q or Ctrl-C quits. The terminal is restored on quit, \
SIGTERM and panic.";

const TOP_EXAMPLES: &str = "\
EXAMPLES:
    sudo leaktrace top --pid 1234
    sudo leaktrace top --pid 1234 --pid 1240
    sudo leaktrace top -- ./server --port 8080";

/// What to trace and how: shared by plain leaktrace and `leaktrace top`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Trace this running process (repeat for several).
    #[arg(short, long = "pid", value_name = "PID", allow_negative_numbers = true,
          value_parser = parse_pid)]
    pub pids: Vec<u32>,

    /// Stop after this long (e.g. 30s, 5m, 1h, 500ms); default: until Ctrl-C or the targets exit.
    #[arg(short, long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Print the top sites this often while tracing.
    #[arg(short, long, value_name = "TIME", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// How many sites the tables and the final report show.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Also write the final report to FILE, in the format its name ends in:
    /// .json (docs/json.md), .pb.gz or .pprof (gzipped pprof, docs/pprof.md),
    /// .svg (flamegraph) or .folded (folded stacks). Repeat for several.
    #[arg(short, long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,

    /// The format of every --output, whatever its name.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Also write each --output every TIME as numbered snapshots
    /// (leaks.0001.pb.gz, leaks.0002.pb.gz, …), e.g. for `go tool pprof -base`.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub snapshot_every: Option<Duration>,

    /// No periodic tables, only the final report.
    #[arg(short, long)]
    pub quiet: bool,

    /// Leave out of reports allocations younger than this (e.g. 10s), like bcc
    /// memleak's -o; verdicts still see everything.
    #[arg(long, value_name = "TIME", default_value = "0s", value_parser = parse_duration)]
    pub min_age: Duration,

    #[command(flatten)]
    pub probing: Probing,

    /// Also trace the processes the targets fork (they inherit the parent's
    /// descriptors and mappings). On by default for -- CMD.
    #[arg(long, overrides_with = "no_follow_forks")]
    pub follow_forks: bool,

    /// Do not trace the processes -- CMD forks.
    #[arg(long)]
    pub no_follow_forks: bool,

    /// Do not stop a target calling _exit to scan which of its heap blocks
    /// are still reachable (see --fail-on). By default a process of a
    /// C/C++/Rust program exiting while traced stops there, with its
    /// memory whole, for the milliseconds the scan takes (reported); a Go
    /// program stops at runtime.exit for a last read of its goroutines.
    #[arg(long)]
    pub no_exit_scan: bool,

    /// Also scan running targets' heaps this often (e.g. 30s), without
    /// stopping them: sites with blocks nothing points to any more, in three
    /// scans in a row, get verdict leak before their growth shows. Each scan
    /// reads the target's writable memory (cost in the report).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub scan_every: Option<Duration>,

    /// Bytes a scan reads at most (e.g. 512MiB, 8GiB); a scan that would read
    /// more stops and classifies nothing, counted.
    #[arg(long, value_name = "BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    pub scan_max_bytes: u64,

    /// Exit with status 3, listing the sites, when any site qualifies:
    /// `unreachable` — heap blocks nothing points to at exit or in
    /// confirmed running scans (LeakSanitizer's direct and indirect leaks),
    /// and for Go programs that exited, goroutines still alive and descriptors
    /// still open (what goleak checks); `leak` — any site with verdict leak.
    #[arg(long, value_name = "WHAT", value_parser = parse_fail_on)]
    pub fail_on: Option<FailOn>,

    /// Run the command (-- CMD) as USER (a name or a numeric UID), with that
    /// user's group and supplementary groups. Started through sudo, leaktrace
    /// runs it as the user who ran sudo (SUDO_UID, SUDO_GID) unless --user
    /// says otherwise (--user root keeps root).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// The command to start and trace from its first allocation.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// What is probed and how much the kernel holds: shared by every front end.
#[derive(Debug, Args)]
pub struct Probing {
    /// Do not trace the heap allocator.
    #[arg(long)]
    pub no_heap: bool,

    /// Do not trace anonymous mmap/munmap/mremap.
    #[arg(long)]
    pub no_mmap: bool,

    /// Do not trace file descriptors and sockets.
    #[arg(long)]
    pub no_fds: bool,

    /// Do not trace goroutines (Go targets).
    #[arg(long)]
    pub no_goroutines: bool,

    /// Do not trace threads (made by clone with CLONE_THREAD, ended by exit).
    #[arg(long)]
    pub no_threads: bool,

    /// Leave a Go target's heap sampling off when it is (runtime.MemProfileRate
    /// 0: binaries that never call runtime.MemProfile, i.e. without pprof).
    /// By default leaktrace turns it on through /proc/PID/mem (see
    /// --go-sample-rate): the target then samples its allocations, a small
    /// cost, as if it had been built with pprof; nothing else in it reads the
    /// profile. Without sampling there is no Go heap to report.
    #[arg(long)]
    pub no_go_heap_sampling: bool,

    /// The heap sampling rate leaktrace sets where a Go target has sampling
    /// off: one sample per this many bytes allocated on average (Go's own
    /// default is 512KiB; finer sampling sees a slow leak sooner). A rate the
    /// program set itself is never changed: its own profile depends on it.
    #[arg(long, value_name = "BYTES", default_value = "64KiB", value_parser = parse_sample_rate)]
    pub go_sample_rate: u64,

    /// Accepted for older scripts: heap sampling is now on by default.
    #[arg(long, hide = true, conflicts_with = "no_go_heap_sampling")]
    pub go_heap_sampling: bool,

    /// Outstanding heap allocations the kernel map can hold; beyond it allocations
    /// are counted as lost and reported.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    pub max_allocs: u32,

    /// Distinct stacks the kernel map can hold (about 1 KiB each).
    #[arg(long, value_name = "N", default_value_t = 1 << 14)]
    pub max_stacks: u32,

    /// Frames a stack keeps at most, 1 to 127. Deeper stacks keep their
    /// innermost frames and are counted as truncated by depth.
    #[arg(long, value_name = "N", default_value_t = leaktrace_common::unwind::DEFAULT_DEPTH,
          value_parser = clap::value_parser!(u32).range(1..=127))]
    pub max_depth: u32,

    /// Unwind-table rows the kernel holds for every mapped file together (8
    /// bytes each; glibc needs ~28,000). Files beyond it are named in a
    /// warning, and stacks stop in them, counted.
    #[arg(long, value_name = "N", default_value_t = 1 << 21)]
    pub max_unwind_rows: u32,
}

impl Probing {
    /// The probe families, or why none would be left.
    pub fn families(&self, forks: bool) -> Result<Families, String> {
        if self.no_heap && self.no_mmap && self.no_fds {
            return Err("--no-heap, --no-mmap and --no-fds together leave nothing to trace".into());
        }
        Ok(Families {
            heap: !self.no_heap,
            mmap: !self.no_mmap,
            fds: !self.no_fds,
            goroutines: !self.no_goroutines,
            threads: !self.no_threads,
            forks,
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_allocs: self.max_allocs.max(1),
            max_stacks: self.max_stacks.max(1),
            max_depth: self.max_depth,
            max_unwind_rows: self.max_unwind_rows.max(1),
        }
    }

    /// The Go heap sampling rate to set where it is off; `None`: left off.
    pub fn go_sample_rate(&self) -> Option<u64> {
        (!self.no_go_heap_sampling).then_some(self.go_sample_rate)
    }
}

impl TraceArgs {
    pub fn options(self) -> Result<Options, String> {
        if self.pids.is_empty() && self.command.is_empty() {
            return Err("nothing to trace: give --pid PID or -- CMD ARGS…".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be longer than zero".into());
        }
        if self.interval.is_zero() {
            return Err("--interval must be longer than zero".into());
        }
        if self.snapshot_every.is_some_and(|d| d.is_zero()) {
            return Err("--snapshot-every must be longer than zero".into());
        }
        if self.scan_every.is_some_and(|d| d.is_zero()) {
            return Err("--scan-every must be longer than zero".into());
        }
        if self.probing.no_heap
            && (self.scan_every.is_some() || self.fail_on == Some(FailOn::Unreachable))
        {
            return Err("reachability (--scan-every, --fail-on unreachable) needs the heap traced: drop --no-heap".into());
        }
        if self.snapshot_every.is_some() && self.outputs.is_empty() {
            return Err("--snapshot-every needs an --output to number".into());
        }
        let forks = !self.no_follow_forks && (self.follow_forks || !self.command.is_empty());
        let outputs = self
            .outputs
            .into_iter()
            .map(|p| Output::new(p, self.format))
            .collect::<Result<Vec<_>, _>>()?;
        if self.user.is_some() && self.command.is_empty() {
            return Err("--user is for a command leaktrace starts (-- CMD)".into());
        }
        // A PID given twice is traced once.
        let mut pids = self.pids;
        let mut seen = std::collections::HashSet::new();
        pids.retain(|p| seen.insert(*p));
        Ok(Options {
            pids,
            command: self.command,
            user: self.user,
            duration: self.duration,
            interval: self.interval,
            top: self.top,
            outputs,
            snapshot_every: self.snapshot_every,
            quiet: self.quiet,
            min_age: self.min_age,
            families: self.probing.families(forks)?,
            go_sample_rate: self.probing.go_sample_rate(),
            scan_at_exit: !self.no_exit_scan && !self.probing.no_heap,
            scan_every: self.scan_every,
            scan_max_bytes: self.scan_max_bytes,
            fail_on: self.fail_on,
            limits: self.probing.limits(),
            forget_exited: false,
        })
    }
}

/// `unreachable` or `leak`.
fn parse_fail_on(s: &str) -> Result<FailOn, String> {
    FailOn::ALL
        .into_iter()
        .find(|on| on.name() == s)
        .ok_or_else(|| format!("`{s}`: expected `unreachable` or `leak`"))
}

/// `4096`, `64KiB`, `512MiB`, `8GiB` (also K, M, G, KB, MB, GB: all powers of 1024).
/// A Go sampling rate: bytes, at least 1 (every allocation).
fn parse_sample_rate(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err("a sampling rate of 0 samples nothing: use --no-go-heap-sampling".into()),
        rate => Ok(rate),
    }
}

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512MiB, 8GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("`{s}`: unknown unit (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A process ID: a positive number.
fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<i64>() {
        Ok(pid) if pid > 0 && pid <= i64::from(i32::MAX) => Ok(pid as u32),
        Ok(_) => Err(format!("`{s}` is not a process ID: PIDs are positive")),
        Err(_) => Err(format!("`{s}` is not a process ID (a positive number)")),
    }
}

/// `30s`, `5m`, `1h`, `250ms`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 5m or 500ms"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The options, or the one-line message, of `args`.
    fn options(args: &[&str]) -> Result<Options, String> {
        let cli = Cli::try_parse_from(std::iter::once("leaktrace").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.trace.options()
    }

    #[test]
    fn bad_pids_and_durations_say_what_is_wrong() {
        let err = options(&["--pid", "-1"]).unwrap_err();
        assert!(err.contains("PIDs are positive"), "{err}");
        assert!(
            !err.contains("-- -1"),
            "no hint to pass it as a command: {err}"
        );
        let err = options(&["--pid", "0"]).unwrap_err();
        assert!(err.contains("PIDs are positive"), "{err}");
        let err = options(&["--pid", "12", "-d", "0s"]).unwrap_err();
        assert!(err.contains("--duration must be longer than zero"), "{err}");
        let opts = options(&["--pid", "12", "--pid", "7", "--pid", "12"]).unwrap();
        assert_eq!(opts.pids, [12, 7], "a repeated PID is traced once");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
