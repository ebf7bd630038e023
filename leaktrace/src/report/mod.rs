//! The report: a snapshot of the model that every view (text, JSON) renders.
//! Its JSON form is documented in docs/json.md; keep the two in step.
use std::{collections::HashMap, path::PathBuf};

use serde::Serialize;

use crate::{
    handles::HandleKind,
    limits::{FdLimit, MemoryLimit},
    model::{Kind, Lost, Model, Ns, Scans, Site, StackWalks, Waiting},
    reach::Reach,
    survival::Survival,
    symbolize::{Frame, Frames},
    verdict::{self, Assessment, Evidence, Verdict},
};

mod text;

pub use text::{human_bytes, human_duration, reach_line, site_line, survival_line, waiting_line};

pub const FORMAT_VERSION: u32 = 4;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub targets: Vec<TargetInfo>,
    /// Followed processes that exited leaving nothing, beyond those listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub targets_unlisted: u64,
    pub duration_s: f64,
    /// Events read from the kernel while tracing.
    #[serde(skip)]
    pub events: u64,
    pub lost: Lost,
    /// How the kernel's stack walks ended.
    pub stacks: StackWalks,
    /// The reachability scans made (docs/reachability.md).
    pub scans: Scans,
    pub totals: Totals,
    /// In the JSON with their stacks as indices: see [`Report::write_json`].
    #[serde(skip)]
    pub sites: Vec<SiteReport>,
    /// Where each target's code files were mapped, for exports that place
    /// addresses (pprof). Not part of the JSON.
    #[serde(skip)]
    pub modules: Vec<ModuleMap>,
}

/// One executable mapping of a file in a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleMap {
    pub pid: u32,
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    pub path: String,
    pub build_id: Option<String>,
}

impl ModuleMap {
    /// The address in the target of `file_offset` in this file, if mapped here.
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        let len = self.limit - self.start;
        (file_offset >= self.offset && file_offset - self.offset < len)
            .then(|| self.start + (file_offset - self.offset))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: PathBuf,
    /// The allocators probed (none with --no-heap, or for a Go program
    /// without cgo).
    pub allocators: Vec<AllocatorInfo>,
    /// Allocators found and not probed: "rpmalloc in /srv/app".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unprobed_allocators: Vec<String>,
    pub exited: bool,
    /// A command leaktrace started that has exited: its exit code (128 plus the
    /// signal number when a signal ended it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The cgroup memory limit closest to being hit, if any.
    pub memory_limit: Option<MemoryLimit>,
    /// The open-files limit and how many descriptors are open.
    pub fd_limit: Option<FdLimit>,
    /// Go programs: the runtime's version and heap sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go: Option<GoInfo>,
}

/// One allocator probed in a target.
#[derive(Clone, Debug, Serialize)]
pub struct AllocatorInfo {
    /// "glibc", "musl", "jemalloc", "tcmalloc", "mimalloc", "Rust global
    /// allocator", or "malloc" for one of unknown origin.
    pub name: String,
    /// Symbol prefixes of its API probed (`_rjem_`), besides plain names.
    pub prefixes: Vec<String>,
    /// The file that defines it.
    pub file: PathBuf,
    /// Functions probed.
    pub functions: usize,
    /// Functions called on every allocation or free (malloc, calloc, realloc,
    /// free and their kin) whose probe is single-stepped (no emulated
    /// instruction on their fast path): each call costs a second trap.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub single_stepped: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct GoInfo {
    /// "go1.27.3", when the binary says.
    pub version: Option<String>,
    /// `runtime.MemProfileRate`: bytes allocated per sampled object; 0 means
    /// the Go heap is not sampled (not seen); `None` when it cannot be read
    /// (stripped binary: the default, 524288, is assumed for scaling).
    pub mem_profile_rate: Option<u64>,
    /// Whether leaktrace turned sampling on, at `mem_profile_rate` (it was 0).
    pub sampling_turned_on: bool,
    /// Goroutines found alive when leaktrace attached to a running process;
    /// `None` for a command it started, or when they could not be read
    /// (stripped binary).
    pub goroutines_before_attach: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub heap_bytes: u64,
    pub mmap_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
    /// Open descriptors other than sockets, and open sockets.
    pub open_fds: u64,
    pub open_sockets: u64,
    /// Go heap in use (estimated from the runtime's samples) and live goroutines.
    pub go_heap_bytes: u64,
    pub goroutines: u64,
    /// Threads alive (those leaktrace saw made, or found at attach).
    pub threads: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    pub kind: Kind,
    pub pid: u32,
    pub outstanding_bytes: u64,
    pub outstanding_count: u64,
    pub total_bytes: u64,
    pub total_count: u64,
    pub oldest_age_s: Option<f64>,
    pub verdict: Verdict,
    pub confidence: f64,
    pub growth_bytes_per_s: f64,
    pub growth_count_per_s: f64,
    /// Seconds until the target's limit is reached if this site keeps growing
    /// at its rate (memory: the cgroup's limit), for leaking and growing sites.
    pub time_to_limit_s: Option<f64>,
    /// Handle sites: what the open descriptors point to, most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<Detail>,
    /// Heap sites of a process scanned: its blocks by reachability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachability: Option<Reach>,
    /// Handle sites: how many of those open or alive were so at attach.
    #[serde(skip_serializing_if = "is_zero")]
    pub before_attach: u64,
    /// Goroutine sites: where their goroutines wait (docs/go.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiting>,
    /// Go heap sites once a GC has run: how many early samples are still in
    /// use (docs/verdicts.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survival: Option<Survival>,
    /// The last few samples of the outstanding bytes (memory) or count
    /// (handles), oldest first, as (seconds since start, value): for live
    /// views (a report keeps no more per site: it may have 100k sites).
    #[serde(skip)]
    pub history: Vec<(f64, f64)>,
    /// How much the outstanding amount changed over the last minute.
    #[serde(skip)]
    pub growth_last_minute: f64,
    /// In the JSON as `stack`: see [`Report::write_json`].
    #[serde(skip)]
    pub frames: Frames,
}

/// The JSON document (docs/json.md).
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    frames: Vec<&'a Frame>,
    sites: Vec<JsonSite<'a>>,
}

#[derive(Serialize)]
struct JsonSite<'a> {
    #[serde(flatten)]
    site: &'a SiteReport,
    stack: Vec<u32>,
}

/// Open descriptors of one kind pointing to one thing (a path, a peer).
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    pub kind: HandleKind,
    pub detail: String,
    pub count: u64,
}

impl Report {
    /// The part of this report about process `pid` (totals stay the whole's).
    pub fn of_process(&self, pid: u32) -> Report {
        Report {
            version: self.version,
            targets: self
                .targets
                .iter()
                .filter(|t| t.pid == pid)
                .cloned()
                .collect(),
            targets_unlisted: 0,
            duration_s: self.duration_s,
            events: self.events,
            lost: self.lost,
            stacks: self.stacks,
            scans: self.scans,
            totals: self.totals,
            sites: self
                .sites
                .iter()
                .filter(|s| s.pid == pid)
                .cloned()
                .collect(),
            modules: self
                .modules
                .iter()
                .filter(|m| m.pid == pid)
                .cloned()
                .collect(),
        }
    }
}

impl Report {
    /// A snapshot of `model` at `now`; `started` is when tracing began. Sites
    /// come in [`rank`] order.
    pub fn build(
        model: &Model,
        targets: Vec<TargetInfo>,
        modules: Vec<ModuleMap>,
        started: Ns,
        now: Ns,
    ) -> Self {
        let mut sites: Vec<SiteReport> = model
            .sites
            .values()
            .map(|s| site_report(s, model.min_age, &targets, now))
            .collect();
        rank(&mut sites);
        Self {
            version: FORMAT_VERSION,
            targets,
            targets_unlisted: 0,
            events: 0,
            duration_s: seconds(now.saturating_sub(started)),
            lost: model.lost,
            stacks: model.stack_walks,
            scans: model.scans,
            totals: Totals {
                heap_bytes: model.live_bytes(Kind::Heap),
                mmap_bytes: model.live_bytes(Kind::Mmap),
                allocations: model.allocs,
                frees: model.frees,
                open_fds: model.open_handles(Kind::Fd),
                open_sockets: model.open_handles(Kind::Socket),
                go_heap_bytes: model.live_bytes(Kind::GoHeap),
                goroutines: model.open_handles(Kind::Goroutine),
                threads: model.open_handles(Kind::Thread),
            },
            sites,
            modules,
        }
    }

    /// The JSON form: every distinct frame once, in `frames`, and each site's
    /// `stack` as indices into it, innermost first. Sites share most of their
    /// frames (a service's 100k stacks go through a few thousand functions):
    /// written out per site, the frames were nearly all of the file.
    pub fn write_json(&self, out: impl std::io::Write) -> serde_json::Result<()> {
        let mut frames: Vec<&Frame> = Vec::new();
        let mut index: HashMap<&Frame, u32> = HashMap::new();
        let sites = self
            .sites
            .iter()
            .map(|site| JsonSite {
                site,
                stack: site
                    .frames
                    .iter()
                    .map(|f| {
                        *index.entry(f).or_insert_with(|| {
                            frames.push(f);
                            frames.len() as u32 - 1
                        })
                    })
                    .collect(),
            })
            .collect();
        let json = JsonReport {
            report: self,
            frames,
            sites,
        };
        serde_json::to_writer(out, &json)
    }

    /// Every scanned site's blocks by class, added up.
    pub fn lost_blocks(&self) -> Reach {
        let mut all = Reach::default();
        for r in self.sites.iter().filter_map(|s| s.reachability) {
            all.unreachable_count += r.unreachable_count;
            all.unreachable_bytes += r.unreachable_bytes;
            all.indirect_count += r.indirect_count;
            all.indirect_bytes += r.indirect_bytes;
            all.reachable_count += r.reachable_count;
            all.reachable_bytes += r.reachable_bytes;
        }
        all
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What `--fail-on` fails a run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Heap blocks nothing points to (unreachable or indirect) in a scan; for
    /// a Go program that exited, goroutines still alive and descriptors
    /// still open then (its heap is the garbage collector's).
    Unreachable,
    /// Any site with verdict `leak`.
    Leak,
}

impl FailOn {
    pub const ALL: [FailOn; 2] = [FailOn::Unreachable, FailOn::Leak];

    /// As `--fail-on` says it.
    pub fn name(self) -> &'static str {
        match self {
            FailOn::Unreachable => "unreachable",
            FailOn::Leak => "leak",
        }
    }
}

impl Report {
    /// The sites `on` fails the run for, in report order.
    pub fn failing(&self, on: FailOn) -> Vec<&SiteReport> {
        let go_exited: Vec<u32> = self
            .targets
            .iter()
            .filter(|t| t.exited && t.go.is_some())
            .map(|t| t.pid)
            .collect();
        self.sites
            .iter()
            .filter(|s| match on {
                FailOn::Leak => s.verdict == Verdict::Leak,
                FailOn::Unreachable => {
                    s.reachability.is_some_and(|r| r.lost_count() > 0)
                        || go_exited.contains(&s.pid)
                            && s.kind.is_handle()
                            // Exit itself ends them; descriptors and goroutines it leaves.
                            && s.kind != Kind::Thread
                            && s.outstanding_count > 0
                            && !runtime_made(&s.frames)
                }
            })
            .collect()
    }
}

/// Made by the Go runtime for itself (its poller, the finalizer goroutine,
/// GC workers, cgroup files): the first frame past the system-call wrappers
/// is the runtime's. goleak ignores these too.
fn runtime_made(frames: &[std::sync::Arc<Frame>]) -> bool {
    let wrapper = |n: &str| n.starts_with("internal/runtime/") || n.starts_with("syscall.");
    frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .find(|n| !wrapper(n))
        .is_some_and(|n| n.starts_with("runtime."))
}

/// Leaks first, then growing, stable, transient; within a verdict, what
/// holds the most first (a 64 MiB slab must not rank below a 2 KiB site that
/// is surer of itself), then the surest, the fastest growing.
fn rank(sites: &mut [SiteReport]) {
    sites.sort_by(|a, b| {
        a.verdict
            .cmp(&b.verdict)
            .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
            .then(b.outstanding_count.cmp(&a.outstanding_count))
            .then(b.confidence.total_cmp(&a.confidence))
            .then(b.growth_bytes_per_s.total_cmp(&a.growth_bytes_per_s))
            .then(a.pid.cmp(&b.pid))
    });
}

fn site_report(s: &Site, min_age: Ns, targets: &[TargetInfo], now: Ns) -> SiteReport {
    let oldest_age_s = s.oldest_ns.map(|t| seconds(now.saturating_sub(t)));
    let points = s.series.points();
    let mut a: Assessment = verdict::assess(
        &points,
        Evidence {
            live_count: s.live_count,
            oldest_age_s,
            by_count: s.id.kind.is_handle(),
            survival: s.survival,
        },
    );
    // Blocks nothing points to can never be freed: a leak, grown or not.
    if s.reach.is_some_and(|r| r.lost_count() > 0) {
        a.verdict = Verdict::Leak;
        a.confidence = 1.0;
    }
    let (outstanding_bytes, outstanding_count) = if min_age > 0 {
        (s.aged_bytes, s.aged_count)
    } else {
        (s.live_bytes, s.live_count)
    };
    let target = targets.iter().find(|t| t.pid == s.id.tgid);
    // (headroom, growth per second) in the unit the limit counts.
    let limit = if s.id.kind.is_handle() {
        target
            .and_then(|t| t.fd_limit.as_ref())
            .map(|l| (l.headroom(), a.growth_count_per_s))
    } else {
        target
            .and_then(|t| t.memory_limit.as_ref())
            .map(|l| (l.headroom(), a.growth_bytes_per_s))
    };
    let time_to_limit_s = match (a.verdict, limit) {
        (Verdict::Leak | Verdict::Growing, Some((headroom, rate))) if rate > 0.0 => {
            Some((headroom as f64 / rate).round())
        }
        _ => None,
    };
    let history: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            let v = if s.id.kind.is_handle() {
                p.count
            } else {
                p.bytes
            };
            (p.t as f64, v as f64)
        })
        .collect();
    SiteReport {
        kind: s.id.kind,
        pid: s.id.tgid,
        outstanding_bytes,
        outstanding_count,
        total_bytes: s.total_bytes,
        total_count: s.total_count,
        oldest_age_s,
        verdict: a.verdict,
        confidence: (a.confidence * 100.0).round() / 100.0,
        growth_bytes_per_s: a.growth_bytes_per_s.round(),
        growth_count_per_s: (a.growth_count_per_s * 1000.0).round() / 1000.0,
        time_to_limit_s,
        details: s
            .details
            .iter()
            .map(|(kind, detail, count)| Detail {
                kind: *kind,
                detail: detail.clone(),
                count: *count,
            })
            .collect(),
        reachability: s.reach,
        waiting: s.waiting.clone(),
        survival: s.survival,
        before_attach: s.before_attach,
        growth_last_minute: change_over(&history, 60.0),
        history: history[history.len().saturating_sub(HISTORY_POINTS)..].to_vec(),
        frames: s.frames.clone(),
    }
}

/// Samples of its history a site's report keeps.
pub const HISTORY_POINTS: usize = 8;

/// How much `history`'s value changed over its last `secs` seconds.
fn change_over(history: &[(f64, f64)], secs: f64) -> f64 {
    let Some(&(t_last, last)) = history.last() else {
        return 0.0;
    };
    let then = history
        .iter()
        .find(|(t, _)| *t >= t_last - secs)
        .map_or(last, |p| p.1);
    last - then
}

pub fn seconds(ns: Ns) -> f64 {
    (ns as f64 / 1e9 * 1000.0).round() / 1000.0
}

/// Reports and sites made up for tests, in one place.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn site(verdict: Verdict, bytes: u64, confidence: f64, function: &str) -> SiteReport {
        SiteReport {
            kind: Kind::Heap,
            pid: 1,
            outstanding_bytes: bytes,
            outstanding_count: 1,
            total_bytes: bytes,
            total_count: 1,
            oldest_age_s: Some(10.0),
            verdict,
            confidence,
            growth_bytes_per_s: 0.0,
            growth_count_per_s: 0.0,
            time_to_limit_s: None,
            details: Vec::new(),
            reachability: None,
            waiting: Vec::new(),
            before_attach: 0,
            survival: None,
            history: Vec::new(),
            growth_last_minute: 0.0,
            frames: Frames::from([Frame::note(function)]),
        }
    }

    /// A live target.
    pub fn target(pid: u32, comm: &str) -> TargetInfo {
        TargetInfo {
            pid,
            comm: comm.into(),
            exe: PathBuf::from(format!("/bin/{comm}")),
            allocators: Vec::new(),
            unprobed_allocators: Vec::new(),
            exited: false,
            exit_code: None,
            memory_limit: None,
            fd_limit: None,
            go: None,
        }
    }

    pub fn report(targets: Vec<TargetInfo>, sites: Vec<SiteReport>) -> Report {
        Report {
            version: FORMAT_VERSION,
            targets,
            targets_unlisted: 0,
            events: 0,
            duration_s: 10.0,
            lost: Lost::default(),
            stacks: StackWalks::default(),
            scans: Default::default(),
            totals: Totals::default(),
            sites,
            modules: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        fixtures::{self, site},
        *,
    };

    #[test]
    fn within_a_verdict_the_biggest_comes_first_and_the_largest_are_always_shown() {
        let mut sites = vec![
            site(Verdict::Stable, 64 << 20, 0.2, "slab_alloc"),
            site(Verdict::Leak, 2048, 0.9, "small_sure_leak"),
            site(Verdict::Stable, 4096, 1.0, "sure_small_cache"),
            site(Verdict::Leak, 1 << 20, 0.4, "big_leak"),
        ];
        rank(&mut sites);
        let order: Vec<_> = sites
            .iter()
            .map(|s| s.frames[0].function.clone().unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "big_leak",
                "small_sure_leak",
                "slab_alloc",
                "sure_small_cache"
            ]
        );
        let report = fixtures::report(Vec::new(), sites);
        // --top 1: the slab is shown anyway, the small cache is not.
        let text = report.final_text(1);
        assert!(text.contains("big_leak"), "{text}");
        assert!(text.contains("slab_alloc"), "{text}");
        assert!(!text.contains("sure_small_cache"), "{text}");
        assert!(text.contains("… 2 more sites"), "{text}");
    }
}
