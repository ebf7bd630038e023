//! The report as text: the periodic table, the final report, and the lines
//! and numbers the views share ("1.5 KiB", "~40 min", a site's summary).
use std::fmt::Write as _;

use super::{Detail, Report, SiteReport};
use crate::model::Waiting;
use crate::{
    escape::shown, handles::HandleKind, model::Kind, reach::Reach, survival::Survival,
    symbolize::headline, verdict::Verdict,
};

impl Report {
    fn outstanding(&self) -> impl Iterator<Item = &SiteReport> {
        self.sites.iter().filter(|s| s.outstanding_count > 0)
    }

    /// The periodic table: the `top` sites by outstanding bytes, one line each.
    pub fn table(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "-- {:.1}s traced · {} · {}",
            self.duration_s,
            self.totals_line(),
            self.lost_line()
        );
        let _ = writeln!(
            out,
            "{:<9} {:<9} {:>11} {:>9} {:>11} {:>8}  {:<7} SITE",
            "VERDICT", "KIND", "BYTES", "COUNT", "GROWTH/s", "OLDEST", "PID"
        );
        for s in self.outstanding().take(top) {
            let stack = s.summary();
            let _ = writeln!(
                out,
                "{:<9} {:<9} {:>11} {:>9} {:>11} {:>8}  {:<7} {}",
                s.verdict.name(),
                s.kind.name(),
                if s.kind.is_handle() {
                    "-".into()
                } else {
                    human_bytes(s.outstanding_bytes)
                },
                s.outstanding_count,
                s.growth_per_s(),
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
            let exited = match (t.exited, t.exit_code) {
                (_, Some(code)) => format!(" — exited ({code})"),
                (true, None) => " — exited".into(),
                (false, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "  target {} ({}) {}{exited}",
                t.pid,
                shown(&t.comm),
                shown(&t.exe.to_string_lossy()),
            );
            for a in &t.allocators {
                let _ = writeln!(
                    out,
                    "    heap: {}, {} functions probed",
                    shown(&crate::allocator::describe(&a.name, &a.prefixes, &a.file)),
                    a.functions
                );
                if !a.single_stepped.is_empty() {
                    let _ = writeln!(
                        out,
                        "      single-stepped (slower): {}",
                        shown(&a.single_stepped.join(", "))
                    );
                }
            }
            for u in &t.unprobed_allocators {
                let _ = writeln!(
                    out,
                    "    heap: {} NOT probed: its allocations are not seen",
                    shown(u)
                );
            }
            if let Some(l) = &t.memory_limit {
                let _ = writeln!(
                    out,
                    "    memory limit {} (cgroup {}), {} in use",
                    human_bytes(l.limit_bytes),
                    shown(&l.cgroup),
                    human_bytes(l.used_bytes)
                );
            }
            if let Some(l) = &t.fd_limit {
                let _ = writeln!(out, "    open files limit {}, {} open", l.limit, l.open);
            }
            if let Some(go) = &t.go {
                let version = go.version.as_deref().unwrap_or("Go");
                let sampling = match go.mem_profile_rate {
                    Some(0) => "Go heap sampling is OFF (runtime.MemProfileRate 0: the binary \
                                never calls runtime.MemProfile), so no go_heap sites: leaktrace \
                                turns it on unless told --no-go-heap-sampling"
                        .to_string(),
                    Some(rate) if go.sampling_turned_on => format!(
                        "Go heap sampled every {}: turned on by leaktrace (the binary had it off)",
                        human_bytes(rate)
                    ),
                    Some(rate) => format!("Go heap sampled every {}", human_bytes(rate)),
                    None => "Go heap sampling rate not found (stripped, unknown runtime): 512 KiB assumed"
                        .to_string(),
                };
                let _ = writeln!(out, "    {} · {sampling}", shown(version));
            }
        }
        if self.targets_unlisted > 0 {
            let _ = writeln!(
                out,
                "  and {} more followed processes that exited leaving nothing",
                self.targets_unlisted
            );
        }
        let _ = writeln!(
            out,
            "  outstanding: {} · {} allocations and {} frees seen",
            self.totals_line(),
            self.totals.allocations,
            self.totals.frees,
        );
        let _ = writeln!(out, "  {}", self.lost_line());
        let _ = writeln!(out, "  stacks: {}", self.stacks_line());
        let _ = writeln!(out, "  verdicts: {}", self.verdict_line());
        if let Some(line) = self.scans_line() {
            let _ = writeln!(out, "  reachability: {line}");
        }
        let leaking: Vec<&SiteReport> = self.outstanding().collect();
        if leaking.is_empty() {
            let _ = writeln!(out, "\nNothing outstanding.");
        }
        // The first `top`, and the three largest by bytes wherever they rank.
        let mut shown_at: Vec<usize> = (0..leaking.len().min(top)).collect();
        let mut by_size: Vec<usize> = (top..leaking.len())
            .filter(|&i| leaking[i].outstanding_bytes > 0)
            .collect();
        by_size.sort_by_key(|&i| std::cmp::Reverse(leaking[i].outstanding_bytes));
        let smallest_shown = shown_at
            .iter()
            .map(|&i| leaking[i].outstanding_bytes)
            .min()
            .unwrap_or(0);
        shown_at.extend(
            by_size
                .into_iter()
                .take(3)
                .filter(|&i| leaking[i].outstanding_bytes > smallest_shown),
        );
        for (i, s) in shown_at.iter().map(|&i| (i, leaking[i])) {
            let plural = if s.outstanding_count == 1 { "" } else { "s" };
            let before = match s.before_attach {
                0 => String::new(),
                n => format!(" ({n} from before attach)"),
            };
            let (held, made) = if matches!(s.kind, Kind::Goroutine | Kind::Thread) {
                (
                    format!(
                        "{} {}{plural} alive{before}",
                        s.outstanding_count,
                        s.kind.name()
                    ),
                    format!("{} started in all", s.total_count),
                )
            } else if s.kind.is_handle() {
                (
                    format!("{} {} open{before}", s.kind.name(), s.outstanding_count),
                    format!("{} opened in all", s.total_count),
                )
            } else {
                (
                    format!(
                        "{} {} in {} allocation{plural}{before}",
                        s.kind.name(),
                        human_bytes(s.outstanding_bytes),
                        s.outstanding_count
                    ),
                    format!("{} allocated in all", human_bytes(s.total_bytes)),
                )
            };
            // A leak for its lost blocks says so, not how sure its series is.
            let why = match s.reachability {
                Some(r) if r.lost_count() > 0 => "blocks nothing points to".to_string(),
                _ => format!("confidence {:.2}", s.confidence),
            };
            let at = s
                .frames
                .get(headline(&s.frames))
                .map_or(String::new(), |f| format!(" · {}", shown(&f.short())));
            let _ = writeln!(
                out,
                "\n#{} {} ({why}){at} · {held} · growth {} · pid {} · oldest {} · {made}",
                i + 1,
                s.verdict.name().to_uppercase(),
                s.growth_per_s(),
                s.pid,
                s.oldest_age_s
                    .map_or("-".into(), |a| format!("{a:.1}s ago")),
            );
            if let Some(secs) = s.time_to_limit_s {
                let what = if s.kind.is_handle() {
                    "open files limit"
                } else {
                    "memory limit"
                };
                let _ = writeln!(out, "    {what} in {} at this rate", human_duration(secs));
            }
            for d in &s.details {
                let _ = writeln!(out, "    {} ×{}", shown(&d.describe()), d.count);
            }
            if let Some(r) = &s.reachability {
                let _ = writeln!(out, "    {}", reach_line(r));
            }
            for w in &s.waiting {
                let _ = writeln!(out, "    {}", shown(&waiting_line(w)));
            }
            if let Some(v) = &s.survival {
                let _ = writeln!(out, "    {}", survival_line(v));
            }
            if s.frames.is_empty() {
                let _ = writeln!(out, "    [stack not recorded: see lost counters]");
            }
            for f in s.frames.iter() {
                let place = if f.module.is_none() && f.address == 0 {
                    String::new() // a note, not code
                } else {
                    format!("  [{}]", shown(&f.location()))
                };
                let inlined = if f.inlined { "(inlined) " } else { "" };
                let _ = writeln!(out, "    {inlined}{}{place}", shown(&f.short()));
            }
        }
        if leaking.len() > shown_at.len() {
            let _ = writeln!(
                out,
                "\n… {} more sites (raise --top, or see --output)",
                leaking.len() - shown_at.len()
            );
        }
        out
    }

    /// "heap 1.2 MiB · mmap 64.0 KiB · 12 fds · 3 sockets", and for Go
    /// targets "· go heap 3.0 MiB · 42 goroutines".
    pub fn totals_line(&self) -> String {
        let t = &self.totals;
        let mut line = format!(
            "heap {} · mmap {} · {} fds · {} sockets",
            human_bytes(t.heap_bytes),
            human_bytes(t.mmap_bytes),
            t.open_fds,
            t.open_sockets
        );
        if t.threads > 0 {
            let _ = write!(line, " · {} threads", t.threads);
        }
        if self.targets.iter().any(|t| t.go.is_some()) {
            let _ = write!(
                line,
                " · go heap {} · {} goroutines",
                human_bytes(t.go_heap_bytes),
                t.goroutines
            );
        }
        line
    }

    /// "2 leak, 1 growing, 3 stable, 5 transient" over sites holding something.
    fn verdict_line(&self) -> String {
        let all = [
            Verdict::Leak,
            Verdict::Growing,
            Verdict::Stable,
            Verdict::Transient,
        ];
        let parts: Vec<String> = all
            .iter()
            .map(|v| (v, self.sites.iter().filter(|s| s.verdict == *v).count()))
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| format!("{n} {}", v.name()))
            .collect();
        if parts.is_empty() {
            "no sites".into()
        } else {
            parts.join(", ")
        }
    }

    /// "1 scan at exit, 12 while running (latest: 3.1 MiB read in 4.2 ms);
    /// 2 unreachable blocks (96 B), 3 indirect", or nothing without scans.
    fn scans_line(&self) -> Option<String> {
        let s = &self.scans;
        if s.at_exit + s.running + s.failed == 0 {
            return None;
        }
        let mut parts = counted(&[
            (s.at_exit, "at exit"),
            (s.running, "while running"),
            (s.failed, "not completed (see the warning)"),
        ]);
        if s.at_exit > 0 {
            parts.push(format!(
                "targets stopped at exit for {:.1} ms at most",
                s.longest_pause_ms
            ));
        }
        let mut line = format!("scans {}", parts.join(", "));
        if let Some(l) = &s.latest {
            let _ = write!(
                line,
                " (latest: {} blocks, {} read in {:.1} ms)",
                l.blocks,
                human_bytes(l.bytes_read),
                l.ms
            );
        }
        let lost = self.lost_blocks();
        let _ = write!(
            line,
            "; {} unreachable blocks ({}), {} indirect ({})",
            lost.unreachable_count,
            human_bytes(lost.unreachable_bytes),
            lost.indirect_count,
            human_bytes(lost.indirect_bytes)
        );
        Some(line)
    }

    /// How many stacks were walked whole, and why the others stopped.
    fn stacks_line(&self) -> String {
        let s = &self.stacks;
        if s.walks == 0 {
            return "none walked".into();
        }
        let mut line = format!(
            "{} walked, {:.1} frames on average, {} whole",
            s.walks,
            s.frames as f64 / s.walks as f64,
            s.complete
        );
        let parts = counted(&[
            (s.depth_limit, "at --max-depth"),
            (
                s.no_mapping,
                "at code not yet known (mapped since the last refresh, or JIT)",
            ),
            (s.unsupported_rule, "at an unwind rule not followed"),
            (s.unreadable, "at unreadable stack memory"),
            (s.not_advancing, "at a frame that did not move up"),
            (s.no_table, "in a module whose table was not loaded"),
        ]);
        if !parts.is_empty() {
            let _ = write!(line, "; stopped {}", parts.join(", "));
        }
        line
    }

    fn lost_line(&self) -> String {
        let l = &self.lost;
        if l.total() == 0 {
            return "nothing lost".into();
        }
        let parts = counted(&[
            (
                l.allocs_map_full,
                "allocations (map full: raise --max-allocs)",
            ),
            (
                l.sites_map_full,
                "allocations (sites map full: raise --max-stacks, 4 sites a stack)",
            ),
            (l.stacks_lost, "stacks (stack map full: raise --max-stacks)"),
            (
                l.ring_buffer_overruns,
                "events (ring buffer overrun: leaktrace fell behind the targets)",
            ),
            (l.syscalls_map_full, "syscalls (per-thread map full)"),
            (
                l.untraced_heaps,
                "forked processes' heaps (probes refused: see the warning)",
            ),
            (
                l.unfollowed_forks,
                "forked processes not followed (more than 16,384 targets at once)",
            ),
        ]);
        format!("LOST: {}", parts.join(", "))
    }
}

/// "N what" for each count that is not zero.
fn counted(counts: &[(u64, &str)]) -> Vec<String> {
    counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect()
}

impl SiteReport {
    /// Its first frames from its program's own code on (see [`headline`]),
    /// after what its descriptors point to: "file /tmp/x ← open_log
    /// (log.c:12) ← main (main.c:40)", escaped for a terminal.
    pub fn summary(&self) -> String {
        let stack: Vec<String> = self.frames[headline(&self.frames)..]
            .iter()
            .take(3)
            .map(|f| shown(&f.short()).into_owned())
            .collect();
        let stack = if stack.is_empty() {
            "[stack not recorded]".to_string()
        } else {
            stack.join(" ← ")
        };
        match self.details.first() {
            Some(d) => format!("{} ← {stack}", shown(&d.describe())),
            None => stack,
        }
    }

    /// "+1.5 KiB/s" for memory, "+2.0/s" for handles.
    pub fn growth_per_s(&self) -> String {
        if self.kind.is_handle() {
            format!("{:+.1}/s", self.growth_count_per_s)
        } else {
            format!("{}/s", growth(self.growth_bytes_per_s))
        }
    }
}

impl Detail {
    /// "file /tmp/x", "socket tcp 127.0.0.1:41234 -> 127.0.0.1:8080", "pipe".
    pub fn describe(&self) -> String {
        let kind = self.kind.name();
        match self.kind {
            HandleKind::Socket | HandleKind::File if !self.detail.is_empty() => self.detail.clone(),
            HandleKind::Goroutine => format!("runs {}", self.detail),
            _ if self.detail.is_empty() => kind.to_string(),
            _ => format!("{kind} {}", self.detail),
        }
    }
}

/// One line for a site --fail-on lists: "leak heap 96 B in 3 (unreachable 1,
/// indirect 2) · pid 42 · leak_list (reach.c:31) ← main (reach.c:80)".
pub fn site_line(s: &SiteReport) -> String {
    let held = if s.kind.is_handle() {
        format!("{} open", s.outstanding_count)
    } else {
        format!(
            "{} in {}",
            human_bytes(s.outstanding_bytes),
            s.outstanding_count
        )
    };
    let lost = s
        .reachability
        .filter(|r| r.lost_count() > 0)
        .map(|r| {
            format!(
                " (unreachable {}, indirect {})",
                r.unreachable_count, r.indirect_count
            )
        })
        .unwrap_or_default();
    format!(
        "{} {} {held}{lost} · pid {} · {}",
        s.verdict.name(),
        s.kind.name(),
        s.pid,
        s.summary()
    )
}

/// "12 waiting: chan send in main.producer (main.go:42)".
pub fn waiting_line(w: &Waiting) -> String {
    let place = match (&w.function, &w.file, w.line) {
        (Some(f), Some(file), Some(line)) => {
            let file = file.rsplit('/').next().unwrap_or(file);
            format!(" in {f} ({file}:{line})")
        }
        (Some(f), _, _) => format!(" in {f}"),
        _ => String::new(),
    };
    format!("{} waiting: {}{place}", w.count, w.reason)
}

/// "survival: 95 of 95 objects sampled up to ~30 s ago still in use · 90 of 92 since".
pub fn survival_line(v: &Survival) -> String {
    format!(
        "survival: {} of {} objects sampled up to {} ago still in use · {} of {} since",
        v.alive,
        v.early,
        human_duration(v.cutoff_age_s),
        v.later_alive,
        v.later
    )
}

/// "unreachable 3 (96 B) · indirect 3 (96 B) · reachable 2 (64 B), at exit".
pub fn reach_line(r: &Reach) -> String {
    let when = if r.at_exit {
        "at exit"
    } else {
        "while running"
    };
    format!(
        "unreachable {} ({}) · indirect {} ({}) · reachable {} ({}), scanned {when}",
        r.unreachable_count,
        human_bytes(r.unreachable_bytes),
        r.indirect_count,
        human_bytes(r.indirect_bytes),
        r.reachable_count,
        human_bytes(r.reachable_bytes),
    )
}

/// Bytes per second with a sign: "+1.5 KiB", "-200 B", "0 B".
fn growth(bytes_per_s: f64) -> String {
    let sign = if bytes_per_s > 0.0 {
        "+"
    } else if bytes_per_s < 0.0 {
        "-"
    } else {
        ""
    };
    format!("{sign}{}", human_bytes(bytes_per_s.abs().round() as u64))
}

/// "~45 s", "~40 min", "~2.5 h", "~3.2 days".
pub fn human_duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("~{secs:.0} s")
    } else if secs < 90.0 * 60.0 {
        format!("~{:.0} min", secs / 60.0)
    } else if secs < 48.0 * 3600.0 {
        format!("~{:.1} h", secs / 3600.0)
    } else {
        format!("~{:.1} days", secs / 86400.0)
    }
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

    #[test]
    fn durations_and_growth_read_naturally() {
        assert_eq!(human_duration(40.0), "~40 s");
        assert_eq!(human_duration(2400.0), "~40 min");
        assert_eq!(human_duration(9000.0), "~2.5 h");
        assert_eq!(growth(1536.0), "+1.5 KiB");
        assert_eq!(growth(-200.0), "-200 B");
        assert_eq!(growth(0.0), "0 B");
    }
}
