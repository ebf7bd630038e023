//! Survival of sampled Go heap objects: evidence a coarse series cannot give.
//!
//! A leaked object is never freed; garbage dies at the first GC after it was
//! made; a bounded cache's entries die as they are evicted. So of the objects
//! a site's samples caught early in the window, the share still in use late
//! says which it is — provided a GC ran in between. Sampled objects are
//! freed only by the sweeper after a GC: when a process's count of freed
//! samples rises, it collected (docs/verdicts.md).

use serde::Serialize;

use crate::model::Ns;

/// A site's cumulative count of sampled allocations over time: evenly
/// spaced points, at most [`TALLY_POINTS`]; when full, every other one goes
/// and points are kept half as often.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    points: Vec<(Ns, u64)>,
    /// Pushes per point kept, and pushes since the last point kept.
    stride: u32,
    skipped: u32,
    latest: u64,
}

const TALLY_POINTS: usize = 64;

impl Tally {
    pub fn push(&mut self, at: Ns, total: u64) {
        self.latest = total;
        self.skipped += 1;
        if self.skipped < self.stride.max(1) && !self.points.is_empty() {
            return;
        }
        self.skipped = 0;
        if self.points.len() == TALLY_POINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride = self.stride.max(1) * 2;
        }
        self.points.push((at, total));
    }

    pub fn start(&self) -> Option<Ns> {
        self.points.first().map(|p| p.0)
    }

    /// The last point at or before `at`: its time and count.
    pub fn at(&self, at: Ns) -> Option<(Ns, u64)> {
        self.points.iter().rev().find(|p| p.0 <= at).copied()
    }

    pub fn latest(&self) -> u64 {
        self.latest
    }
}

/// A Go process's sweeping: sampled objects it freed, when that was checked,
/// and the start of the latest interval in which the count rose.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sweeps {
    freed: u64,
    checked: Option<Ns>,
    swept_after: Option<Ns>,
}

/// A GC's mark phase starts before its sweeper frees anything: objects made
/// this long before the interval in which frees were seen have been judged.
const MARK_MARGIN_NS: Ns = 1_000_000_000;

impl Sweeps {
    /// The process has freed `freed` sampled objects in all, as read at `now`.
    pub fn update(&mut self, freed: u64, now: Ns) {
        if freed > self.freed
            && let Some(checked) = self.checked
        {
            self.swept_after = Some(checked);
        }
        self.freed = self.freed.max(freed);
        self.checked = Some(now);
    }

    /// Objects made up to this time have been through a GC.
    pub fn judged_until(&self) -> Option<Ns> {
        self.swept_after.map(|t| t.saturating_sub(MARK_MARGIN_NS))
    }
}

/// Of a site's sampled objects made up to `cutoff`, how many are still in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Survival {
    /// Sampled objects the site made up to the cutoff…
    pub early: u64,
    /// …and how many of them are still in use.
    pub alive: u64,
    /// Sampled objects made since the cutoff, and how many of those are in use.
    pub later: u64,
    pub later_alive: u64,
    /// How long before the report the cutoff was.
    pub cutoff_age_s: f64,
}

impl Survival {
    /// The cutoff for a site whose tally began at `start`: the middle of its
    /// window, or earlier if the process's last GC judged less, at a point of
    /// its tally (what it had made then is known exactly); `None` before any
    /// GC judged what it made.
    pub fn cutoff(tally: &Tally, sweeps: Option<&Sweeps>, now: Ns) -> Option<Ns> {
        let start = tally.start()?;
        let middle = start + now.saturating_sub(start) / 2;
        let (cutoff, _) = tally.at(middle.min(sweeps?.judged_until()?))?;
        (cutoff > start).then_some(cutoff)
    }

    /// `alive` of the objects made up to `cutoff` and `outstanding` in all are in use.
    pub fn new(tally: &Tally, cutoff: Ns, alive: u64, outstanding: u64, now: Ns) -> Self {
        let early = tally.at(cutoff).map_or(0, |p| p.1);
        Self {
            early,
            alive: alive.min(early),
            later: tally.latest().saturating_sub(early),
            later_alive: outstanding.saturating_sub(alive),
            cutoff_age_s: now.saturating_sub(cutoff) as f64 / 1e9,
        }
    }

    pub fn share(&self) -> f64 {
        if self.early == 0 {
            return 0.0;
        }
        self.alive as f64 / self.early as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Ns = 1_000_000_000;

    #[test]
    fn a_tally_stays_bounded_and_answers_by_time() {
        let mut t = Tally::default();
        for i in 0..1000 {
            t.push(i * S, i * 10);
        }
        assert!(t.points.len() <= TALLY_POINTS);
        assert_eq!(t.start(), Some(0));
        assert_eq!(t.latest(), 9990);
        // Thinned: the answer is the nearest point at or before.
        let (_, mid) = t.at(500 * S).unwrap();
        assert!((4700..=5000).contains(&mid), "{mid} {:?}", t.points);
        assert_eq!(t.at(0), Some((0, 0)));
    }

    #[test]
    fn no_cutoff_before_a_gc_judged_anything() {
        let mut t = Tally::default();
        for i in 0..30 {
            t.push(i * S, i);
        }
        let mut sweeps = Sweeps::default();
        assert_eq!(Survival::cutoff(&t, Some(&sweeps), 30 * S), None);
        // Frees rose between the reads at 9 s and 10 s: objects made by 8 s
        // have been judged; the middle of the window (15 s) is later.
        for (i, freed) in [(9, 0), (10, 3), (11, 3)] {
            sweeps.update(freed, i * S);
        }
        assert_eq!(Survival::cutoff(&t, Some(&sweeps), 30 * S), Some(8 * S));
        sweeps.update(5, 25 * S);
        sweeps.update(9, 26 * S);
        assert_eq!(Survival::cutoff(&t, Some(&sweeps), 30 * S), Some(15 * S));
        assert_eq!(Survival::cutoff(&t, None, 30 * S), None);
    }

    #[test]
    fn survival_counts_early_and_later_objects() {
        let mut t = Tally::default();
        for i in 0..=30 {
            t.push(i * S, 2 * i);
        }
        let s = Survival::new(&t, 15 * S, 27, 55, 30 * S);
        assert_eq!((s.early, s.alive, s.later, s.later_alive), (30, 27, 30, 28));
        assert!((s.share() - 0.9).abs() < 1e-9);
        assert_eq!(s.cutoff_age_s, 15.0);
    }
}
