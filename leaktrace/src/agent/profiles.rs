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

/// How a store wants `alloc_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Pyroscope: what was allocated since the last push (it stores values
    /// as sent), labelled `__delta__="false"`.
    Deltas,
    /// Parca: all allocated so far, and memory profiles with
    /// `duration_nanos = 0`, as Go's heap profile.
    Cumulative,
}

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
        style: Style,
    ) -> Vec<Series> {
        let mut report = report.of_process(pid);
        for site in report.sites.iter_mut() {
            if style == Style::Cumulative || !Family::Memory.holds(site.kind) {
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
            if style == Style::Cumulative && family == Family::Memory {
                report.duration_s = 0.0;
            }
            let Some(profile) = self.within_limits(&mut report, family, wall_ns) else {
                continue;
            };
            let deltas = style == Style::Deltas && family == Family::Memory;
            out.push(Series {
                labels: series_labels(name, labels, node, deltas),
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
fn series_labels(name: &str, labels: &Labels, node: &str, deltas: bool) -> Vec<(String, String)> {
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
    if deltas {
        // alloc_* are deltas since the last push (Grafana Alloy does the same).
        out.push(("__delta__".to_string(), "false".to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::fixtures::{report, site, target},
        verdict::Verdict,
    };

    fn labels() -> Labels {
        Labels {
            service_name: "shop/api".into(),
            namespace: "shop".into(),
            ..Labels::default()
        }
    }

    #[test]
    fn a_profile_keeps_the_largest_sites_within_the_limits_and_counts_the_rest() {
        let sites = (0..20_000u64)
            .map(|i| {
                let mut s = site(Verdict::Stable, 100 + i, 0.5, &format!("f{i}"));
                s.pid = 7;
                s
            })
            .collect();
        let r = report(vec![target(7, "api")], sites);
        let mut profiles = Profiles::default();
        let series = profiles.of_target(&r, 7, &labels(), "node-a", 0, Style::Deltas);
        assert_eq!(series.len(), 1, "memory only");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&*series[0].profile),
            &mut bytes,
        )
        .unwrap();
        let p = crate::pprof::proto::Profile::decode(&*bytes).unwrap();
        assert!(p.sample.len() <= MAX_SAMPLES && !p.sample.is_empty());
        assert!(bytes.len() <= MAX_BYTES);
        let left_out = 20_000 - p.sample.len() as u64;
        assert_eq!(profiles.sites_left_out, left_out);
        let smallest_kept = p.sample.iter().map(|s| s.value[3]).min().unwrap();
        assert_eq!(smallest_kept as u64, 100 + left_out, "the largest are kept");
        let comments: Vec<&str> = p
            .comment
            .iter()
            .map(|&c| p.string_table[c as usize].as_str())
            .collect();
        assert!(
            comments
                .iter()
                .any(|c| c.contains(&format!("{left_out} sites left out"))),
            "{comments:?}"
        );
        let l: Vec<(&str, &str)> = series[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            l.contains(&("__name__", "memory")) && l.contains(&("__delta__", "false")),
            "{l:?}"
        );
        assert!(
            l.contains(&("namespace", "shop")) && !l.iter().any(|(k, _)| *k == "pod"),
            "{l:?}"
        );
    }

    #[test]
    fn alloc_values_are_what_was_allocated_since_the_last_push() {
        let mut s = site(Verdict::Leak, 1000, 0.9, "leaky");
        s.pid = 7;
        s.total_bytes = 5000;
        s.total_count = 5;
        let mut r = report(vec![target(7, "api")], vec![s]);
        let mut profiles = Profiles::default();
        let values = |profiles: &mut Profiles, r: &Report| {
            let series = profiles.of_target(r, 7, &labels(), "node-a", 0, Style::Deltas);
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&*series[0].profile),
                &mut bytes,
            )
            .unwrap();
            crate::pprof::proto::Profile::decode(&*bytes)
                .unwrap()
                .sample[0]
                .value
                .clone()
        };
        assert_eq!(values(&mut profiles, &r), [5, 5000, 1, 1000]);
        r.sites[0].total_bytes = 7000;
        r.sites[0].total_count = 7;
        assert_eq!(values(&mut profiles, &r), [2, 2000, 1, 1000]);
        profiles.forget(7);
        assert_eq!(
            values(&mut profiles, &r),
            [7, 7000, 1, 1000],
            "a new process starts over"
        );
    }
}
