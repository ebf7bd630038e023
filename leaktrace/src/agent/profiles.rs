//! What the agent pushes: per target, one profile per family (Pyroscope
//! tells a profile's type from its sample types, so families are not mixed),
//! `alloc_*` as what was allocated since the last push, within Pyroscope's
//! per-profile limits, the largest sites first.
use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
};

use prost::Message;

use super::discover::Labels;
use crate::{
    pprof::{self, Family, Shape},
    report::{Report, SiteReport},
};

/// Pyroscope's default limits per profile (`pkg/validation/limits.go`).
const MAX_SAMPLES: usize = 16_000;
const MAX_BYTES: usize = 4 << 20;

/// The families pushed, with their series' `__name__`.
const FAMILIES: [(Family, &str); 4] = [
    (Family::Memory, "memory"),
    (Family::Goroutines, "goroutine"),
    (Family::Descriptors, "descriptors"),
    (Family::Threads, "threads"),
];

/// One profile to push, with its series labels.
pub struct Series {
    pub labels: Vec<(String, String)>,
    /// A gzipped pprof.
    pub profile: Vec<u8>,
}

/// What earlier pushes sent, for the next one's deltas.
#[derive(Default)]
pub struct Profiles {
    /// Each memory site's allocation totals when last pushed, by (pid, site).
    allocated: HashMap<(u32, u64), (u64, u64)>,
    /// Sites left out by the limits, in all pushes so far.
    pub sites_left_out: u64,
}

impl Profiles {
    /// The profiles of process `pid` in `report`, labelled `labels`.
    pub fn of_target(
        &mut self,
        report: &Report,
        pid: u32,
        labels: &Labels,
        node: &str,
        wall_ns: i64,
    ) -> Vec<Series> {
        let mut report = report.of_process(pid);
        for site in report.sites.iter_mut() {
            if !Family::Memory.holds(site.kind) {
                continue;
            }
            let now = (site.total_count, site.total_bytes);
            let before = self
                .allocated
                .insert((pid, site_key(site)), now)
                .unwrap_or((0, 0));
            site.total_count = now.0.saturating_sub(before.0);
            site.total_bytes = now.1.saturating_sub(before.1);
        }
        let sites = std::mem::take(&mut report.sites);
        let mut out = Vec::new();
        for (family, name) in FAMILIES {
            let mut of_family: Vec<SiteReport> = sites
                .iter()
                .filter(|s| family.holds(s.kind))
                .cloned()
                .collect();
            if of_family.is_empty() {
                continue;
            }
            of_family.sort_by(|a, b| {
                (b.outstanding_bytes, b.outstanding_count, b.total_bytes).cmp(&(
                    a.outstanding_bytes,
                    a.outstanding_count,
                    a.total_bytes,
                ))
            });
            report.sites = of_family;
            let Some(profile) = self.within_limits(&mut report, family, wall_ns) else {
                continue;
            };
            out.push(Series {
                labels: series_labels(name, labels, node, family == Family::Memory),
                profile,
            });
        }
        out
    }

    /// `report`'s profile of `family`, its sites cut (the smallest first)
    /// until it fits.
    fn within_limits(
        &mut self,
        report: &mut Report,
        family: Family,
        wall_ns: i64,
    ) -> Option<Vec<u8>> {
        let all = report.sites.len();
        // A scanned heap site is up to four samples.
        report.sites.truncate(MAX_SAMPLES);
        loop {
            let shape = Shape {
                family,
                few_labels: true,
            };
            let mut profile = pprof::build(report, wall_ns, shape);
            let fits = profile.sample.len() <= MAX_SAMPLES;
            let left_out = all - report.sites.len();
            if fits && left_out > 0 {
                let note = format!("{left_out} sites left out (profile limits), the smallest");
                profile.comment.push(profile.string_table.len() as i64);
                profile.string_table.push(note);
            }
            let bytes = profile.encode_to_vec();
            if fits && bytes.len() <= MAX_BYTES {
                self.sites_left_out += left_out as u64;
                return pprof::gzip(&bytes).ok();
            }
            if report.sites.len() <= 1 {
                return None;
            }
            let keep = report.sites.len() * 3 / 4;
            report.sites.truncate(keep);
        }
    }

    /// Process `pid` has gone: what its pushes left.
    pub fn forget(&mut self, pid: u32) {
        self.allocated.retain(|&(p, _), _| p != pid);
    }
}

/// A site's identity across reports: its kind and stack.
fn site_key(site: &SiteReport) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    site.kind.name().hash(&mut h);
    for f in site.frames.iter() {
        f.module.hash(&mut h);
        f.address.hash(&mut h);
    }
    h.finish()
}

/// A series' labels: the family's `__name__` and the target's (docs/agent.md).
fn series_labels(name: &str, labels: &Labels, node: &str, memory: bool) -> Vec<(String, String)> {
    let mut out = vec![
        ("__name__".to_string(), name.to_string()),
        ("service_name".to_string(), labels.service_name.clone()),
    ];
    for (k, v) in [
        ("namespace", &labels.namespace),
        ("pod", &labels.pod),
        ("container", &labels.container),
        ("node", &node.to_string()),
    ] {
        if !v.is_empty() {
            out.push((k.to_string(), v.clone()));
        }
    }
    if memory {
        // alloc_* are deltas since the last push (Grafana Alloy does the same).
        out.push(("__delta__".to_string(), "false".to_string()));
    }
    out
}
