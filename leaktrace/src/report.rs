//! The report: a snapshot of the model that every view (text, JSON) renders.
//! Its JSON form is documented in docs/json.md; keep the two in step.
use std::{fmt::Write as _, path::PathBuf};

use serde::Serialize;

use crate::{
    model::{Kind, Lost, Model, Ns},
    symbolize::Frame,
};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub targets: Vec<TargetInfo>,
    pub duration_s: f64,
    pub lost: Lost,
    pub totals: Totals,
    pub sites: Vec<SiteReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: PathBuf,
    /// The allocator file probed, if heap tracing was on for this target.
    pub allocator: Option<PathBuf>,
    pub exited: bool,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub heap_bytes: u64,
    pub mmap_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
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
    pub verdict: &'static str,
    pub frames: Vec<Frame>,
}

impl Report {
    /// A snapshot of `model` at `now`; `started` is when tracing began.
    pub fn build(model: &Model, targets: Vec<TargetInfo>, started: Ns, now: Ns) -> Self {
        let sites = model
            .ranked()
            .into_iter()
            .map(|s| SiteReport {
                kind: s.id.kind,
                pid: s.id.tgid,
                outstanding_bytes: s.live_bytes,
                outstanding_count: s.live_count,
                total_bytes: s.total_bytes,
                total_count: s.total_count,
                oldest_age_s: s.oldest_ns.map(|t| seconds(now.saturating_sub(t))),
                verdict: "unknown",
                frames: s.frames.clone(),
            })
            .collect();
        Self {
            version: FORMAT_VERSION,
            targets,
            duration_s: seconds(now.saturating_sub(started)),
            lost: model.lost,
            totals: Totals {
                heap_bytes: model.live_bytes(Kind::Heap),
                mmap_bytes: model.live_bytes(Kind::Mmap),
                allocations: model.allocs,
                frees: model.frees,
            },
            sites,
        }
    }

    fn leaking(&self) -> impl Iterator<Item = &SiteReport> {
        self.sites.iter().filter(|s| s.outstanding_count > 0)
    }

    /// The periodic table: the `top` sites by outstanding bytes, one line each.
    pub fn table(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "-- {:.1}s traced · heap {} · mmap {} outstanding · {}",
            self.duration_s,
            human_bytes(self.totals.heap_bytes),
            human_bytes(self.totals.mmap_bytes),
            self.lost_line()
        );
        let _ = writeln!(
            out,
            "{:<5} {:>11} {:>9} {:>8}  {:<7} SITE",
            "KIND", "BYTES", "COUNT", "OLDEST", "PID"
        );
        for s in self.leaking().take(top) {
            let stack: Vec<String> = s.frames.iter().take(3).map(Frame::short).collect();
            let stack = if stack.is_empty() {
                "[stack not recorded]".to_string()
            } else {
                stack.join(" ← ")
            };
            let _ = writeln!(
                out,
                "{:<5} {:>11} {:>9} {:>8}  {:<7} {}",
                kind_name(s.kind),
                human_bytes(s.outstanding_bytes),
                s.outstanding_count,
                s.oldest_age_s.map_or("-".into(), |a| format!("{a:.1}s")),
                s.pid,
                stack
            );
        }
        out
    }

    /// The final report: totals, then each of the `top` sites with its whole stack.
    pub fn final_text(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "leaktrace report after {:.1}s", self.duration_s);
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  target {} ({}) {}{}",
                t.pid,
                t.comm,
                t.exe.display(),
                if t.exited { " — exited" } else { "" }
            );
        }
        let _ = writeln!(
            out,
            "  outstanding: heap {} · mmap {} · {} allocations and {} frees seen",
            human_bytes(self.totals.heap_bytes),
            human_bytes(self.totals.mmap_bytes),
            self.totals.allocations,
            self.totals.frees,
        );
        let _ = writeln!(out, "  {}", self.lost_line());
        let leaking: Vec<&SiteReport> = self.leaking().collect();
        if leaking.is_empty() {
            let _ = writeln!(out, "\nNo outstanding allocations.");
        }
        for (i, s) in leaking.iter().take(top).enumerate() {
            let _ = writeln!(
                out,
                "\n#{} {} {} in {} allocation{} (pid {}, oldest {}, {} allocated in all)",
                i + 1,
                kind_name(s.kind),
                human_bytes(s.outstanding_bytes),
                s.outstanding_count,
                if s.outstanding_count == 1 { "" } else { "s" },
                s.pid,
                s.oldest_age_s
                    .map_or("-".into(), |a| format!("{a:.1}s ago")),
                human_bytes(s.total_bytes),
            );
            if s.frames.is_empty() {
                let _ = writeln!(out, "    [stack not recorded: see lost counters]");
            }
            for f in &s.frames {
                let _ = writeln!(
                    out,
                    "    {}{}  [{}]",
                    if f.inlined { "(inlined) " } else { "" },
                    f.short(),
                    f.location()
                );
            }
        }
        if leaking.len() > top {
            let _ = writeln!(
                out,
                "\n… {} more sites (raise --top, or see --output)",
                leaking.len() - top
            );
        }
        out
    }

    fn lost_line(&self) -> String {
        let l = &self.lost;
        if l.total() == 0 {
            return "nothing lost".into();
        }
        let parts: Vec<String> = [
            (
                l.allocs_map_full,
                "allocations (map full: raise --max-allocs)",
            ),
            (l.sites_map_full, "allocations (sites map full)"),
            (l.stacks_lost, "stacks (stack map full: raise --max-stacks)"),
            (l.ring_buffer_overruns, "events (ring buffer overrun)"),
            (l.syscalls_map_full, "syscalls (per-thread map full)"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        format!("LOST: {}", parts.join(", "))
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Heap => "heap",
        Kind::Mmap => "mmap",
    }
}

pub fn seconds(ns: Ns) -> f64 {
    (ns as f64 / 1e9 * 1000.0).round() / 1000.0
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_a_unit() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
