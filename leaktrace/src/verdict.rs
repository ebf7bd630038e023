//! Leak verdicts: does a site's outstanding amount keep growing and never come
//! back, or is it a plateau, a wave, or short-lived? The method, its thresholds
//! and its known false positives and negatives are in docs/verdicts.md.
use serde::Serialize;

use crate::{series::Point, survival::Survival};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Grows over the window, its floor rises, old allocations survive.
    Leak,
    /// Growth seen, not (yet) confident: window too short or evidence weak.
    Growing,
    /// Plateau or bounded oscillation: caches, pools, arenas, GC waves.
    Stable,
    /// Released shortly after allocation.
    Transient,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::Growing => "growing",
            Verdict::Stable => "stable",
            Verdict::Transient => "transient",
        }
    }
}

/// The verdict on one site with the numbers behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assessment {
    pub verdict: Verdict,
    /// 0..1: how strongly the evidence supports the verdict (docs/verdicts.md).
    pub confidence: f64,
    /// Theil–Sen slope of outstanding bytes and count over the window, per second.
    pub growth_bytes_per_s: f64,
    pub growth_count_per_s: f64,
}

/// What the classifier looks at besides the series.
#[derive(Clone, Copy, Debug)]
pub struct Evidence {
    /// Outstanding count now.
    pub live_count: u64,
    /// Age of the oldest outstanding allocation or handle, when known.
    pub oldest_age_s: Option<f64>,
    /// Classify on the count (handles) rather than on bytes (memory).
    pub by_count: bool,
    /// Sampled sites (Go heap): how many early samples are still in use.
    pub survival: Option<Survival>,
}

/// Fewer points than this cannot show a trend.
pub const MIN_POINTS: usize = 6;
/// A "leak" needs at least this much history; before, it is at most "growing".
pub const MIN_LEAK_WINDOW_S: f64 = 8.0;
/// One-sided z (Mann–Kendall) and autocorrelation-adjusted trend t for "leak".
const Z_LEAK: f64 = 3.0;
const T_LEAK: f64 = 4.0;
/// Trend t for "growing".
const T_GROWING: f64 = 2.0;
/// Over the most recent half: slope at least this share of the whole window's,
/// with at least this trend t.
const RECENT_SHARE: f64 = 0.3;
const T_RECENT: f64 = 1.0;
/// Everything outstanding younger than this share of the window (and 10 s) is transient.
const TRANSIENT_SHARE: f64 = 0.25;
const TRANSIENT_MAX_S: f64 = 10.0;
/// The oldest survivor must be at least this share of the window old for "leak".
const SURVIVOR_SHARE: f64 = 0.5;
/// Survival is evidence once this many early objects were sampled (and as
/// many since, for "still allocating").
const SURVIVAL_MIN_EARLY: u64 = 4;
const SURVIVAL_MIN_LATER: u64 = 3;
/// Early objects all but never freed, and those made since mostly in use: a leak.
const SURVIVAL_LEAK: f64 = 0.9;
/// Early objects nearly all freed: what grows is turnover, not a leak.
const SURVIVAL_TURNOVER: f64 = 0.1;

pub fn assess(points: &[Point], ev: Evidence) -> Assessment {
    let ts: Vec<f64> = points.iter().map(|p| p.t as f64).collect();
    let bytes: Vec<f64> = points.iter().map(|p| p.bytes as f64).collect();
    let count: Vec<f64> = points.iter().map(|p| p.count as f64).collect();
    let growth_bytes_per_s = theil_sen(&ts, &bytes);
    let growth_count_per_s = theil_sen(&ts, &count);
    let y = if ev.by_count { &count } else { &bytes };
    let curve = classify(&ts, y, ev);
    let (verdict, confidence) = match ev.survival {
        Some(s) if curve.0 != Verdict::Transient => with_survival(curve, s, window(&ts)),
        _ => curve,
    };
    Assessment {
        verdict,
        confidence,
        growth_bytes_per_s,
        growth_count_per_s,
    }
}

fn window(ts: &[f64]) -> f64 {
    match (ts.first(), ts.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    }
}

/// A sampled site's curve verdict, weighed with the survival of its early
/// samples: a few coarse steps cannot show a trend, but objects that a GC
/// left alive, at a site still allocating and keeping what it allocates, are
/// leaked; a site whose early objects nearly all died grows by turnover.
fn with_survival(curve: (Verdict, f64), s: Survival, window: f64) -> (Verdict, f64) {
    if s.early < SURVIVAL_MIN_EARLY || window < MIN_LEAK_WINDOW_S {
        return curve;
    }
    let share = s.share();
    let kept_since =
        s.later >= SURVIVAL_MIN_LATER && s.later_alive as f64 >= SURVIVAL_LEAK * s.later as f64;
    if share >= SURVIVAL_LEAK && kept_since {
        let evidence = (s.early.min(s.later) as f64 / 16.0).min(1.0);
        let coverage = (window / 30.0).min(1.0);
        let confidence = 0.5 + 0.5 * evidence * coverage;
        return match curve {
            (Verdict::Leak, c) => (Verdict::Leak, c.max(confidence)),
            _ => (Verdict::Leak, confidence),
        };
    }
    if share <= SURVIVAL_TURNOVER && curve.0 == Verdict::Leak {
        return (Verdict::Growing, 0.2 + 0.3 * (1.0 - share));
    }
    curve
}

fn classify(ts: &[f64], y: &[f64], ev: Evidence) -> (Verdict, f64) {
    let window = window(ts);
    if ev.live_count == 0 {
        return (Verdict::Transient, 1.0);
    }
    if let Some(age) = ev.oldest_age_s
        && window >= MIN_LEAK_WINDOW_S
        && age < (window * TRANSIENT_SHARE).min(TRANSIENT_MAX_S)
    {
        return (Verdict::Transient, 0.8);
    }
    let n = y.len();
    if n < MIN_POINTS {
        let rose = n >= 2 && y[n - 1] > y[0];
        return if rose {
            (Verdict::Growing, 0.1)
        } else {
            (Verdict::Stable, 0.1)
        };
    }
    let third = n / 3;
    let half = n / 2;
    let z_all = mann_kendall(y);
    // Still growing now, at a good part of the window's rate, not only earlier.
    let slope = theil_sen(ts, y);
    let recent_growth = theil_sen(&ts[half..], &y[half..]) >= RECENT_SHARE * slope
        && trend_t(&ts[half..], &y[half..]) >= T_RECENT;
    let trend = trend_t(ts, y);
    let floors = [
        min(&y[..third]),
        min(&y[third..n - third]),
        min(&y[n - third..]),
    ];
    let floor_rises = floors[0] < floors[1] && floors[1] < floors[2];
    let survivors_old = ev
        .oldest_age_s
        .is_none_or(|age| age >= window * SURVIVOR_SHARE);
    let strength = (z_all.min(trend) / (2.0 * T_LEAK)).clamp(0.0, 1.0);
    let leaking =
        z_all >= Z_LEAK && trend >= T_LEAK && recent_growth && floor_rises && survivors_old;
    if leaking && window >= MIN_LEAK_WINDOW_S {
        let coverage = (window / 30.0).min(1.0);
        return (Verdict::Leak, 0.5 + 0.5 * strength * coverage);
    }
    let still_rising = recent_growth && trend >= T_GROWING && floors[2] > floors[0];
    if leaking || still_rising {
        return (Verdict::Growing, 0.2 + 0.3 * strength);
    }
    // Flat recently: the less growth the whole window shows, the surer.
    (Verdict::Stable, 1.0 - 0.5 * strength)
}

fn min(y: &[f64]) -> f64 {
    y.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Mann–Kendall trend statistic as a z-score (ties corrected): large and positive
/// when later values tend to exceed earlier ones, whatever the noise's shape.
pub fn mann_kendall(y: &[f64]) -> f64 {
    let n = y.len();
    if n < 3 {
        return 0.0;
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            s += match y[j].partial_cmp(&y[i]) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    let mut sorted = y.to_vec();
    sorted.sort_by(f64::total_cmp);
    let ties: f64 = sorted
        .chunk_by(|a, b| a == b)
        .map(|g| g.len() as f64)
        .filter(|&t| t > 1.0)
        .map(|t| t * (t - 1.0) * (2.0 * t + 5.0))
        .sum();
    let nf = n as f64;
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - ties) / 18.0;
    if var <= 0.0 {
        return 0.0;
    }
    let s = s as f64;
    (s - s.signum()) / var.sqrt()
}

/// Least-squares trend as a t-statistic, its standard error widened for the
/// residuals' lag-1 autocorrelation (effective sample size n(1-ρ)/(1+ρ)):
/// white noise around a climb keeps it high, while a random walk or a single
/// jump, whose residuals are strongly autocorrelated, scores low.
pub fn trend_t(ts: &[f64], y: &[f64]) -> f64 {
    let n = y.len() as f64;
    if n < 3.0 {
        return 0.0;
    }
    let (tm, ym) = (ts.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxx: f64 = ts.iter().map(|t| (t - tm).powi(2)).sum();
    if sxx == 0.0 {
        return 0.0;
    }
    let slope = ts
        .iter()
        .zip(y)
        .map(|(t, v)| (t - tm) * (v - ym))
        .sum::<f64>()
        / sxx;
    let resid: Vec<f64> = ts
        .iter()
        .zip(y)
        .map(|(t, v)| v - ym - slope * (t - tm))
        .collect();
    let sse: f64 = resid.iter().map(|e| e * e).sum();
    // Relative to the level: float noise on a perfect line is not noise.
    if sse <= 1e-12 * y.iter().map(|v| v * v).sum::<f64>() {
        return if slope > 0.0 { f64::INFINITY } else { 0.0 };
    }
    let rho = (resid.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / sse).clamp(0.0, 0.95);
    let se = (sse / (n - 2.0) / sxx).sqrt();
    slope / se * ((1.0 - rho) / (1.0 + rho)).sqrt()
}

/// Theil–Sen slope: the median of the pairwise slopes, robust to outliers and waves.
pub fn theil_sen(ts: &[f64], y: &[f64]) -> f64 {
    let mut slopes = Vec::with_capacity(y.len() * y.len() / 2);
    for i in 0..y.len() {
        for j in i + 1..y.len() {
            let dt = ts[j] - ts[i];
            if dt > 0.0 {
                slopes.push((y[j] - y[i]) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_by(f64::total_cmp);
    let mid = slopes.len() / 2;
    if slopes.len() % 2 == 1 {
        slopes[mid]
    } else {
        (slopes[mid - 1] + slopes[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::Rng;

    /// One point per second for `secs` seconds.
    fn series(secs: usize, f: impl FnMut(f64) -> f64) -> Vec<Point> {
        let mut f = f;
        (0..secs)
            .map(|i| {
                let t = i as f64;
                let bytes = f(t).max(0.0);
                Point {
                    t: t as f32,
                    bytes: bytes as f32,
                    count: (bytes / 100.0) as f32,
                }
            })
            .collect()
    }

    fn verdict(points: &[Point], oldest_age_s: Option<f64>) -> Verdict {
        assess(
            points,
            Evidence {
                live_count: 1,
                oldest_age_s,
                by_count: false,
                survival: None,
            },
        )
        .verdict
    }

    /// Over many seeds, how often each case gets `want`.
    fn rate(seeds: u64, mut case: impl FnMut(&mut Rng) -> Verdict, want: Verdict) -> f64 {
        let hits = (1..=seeds)
            .filter(|&s| case(&mut Rng(s.wrapping_mul(0x9e37_79b9_7f4a_7c15))) == want)
            .count();
        hits as f64 / seeds as f64
    }

    #[test]
    fn linear_growth_with_noise_is_a_leak() {
        let leak = |r: &mut Rng| {
            let p = series(20, |t| 10_000.0 + 1_000.0 * t + 1_500.0 * r.normal());
            verdict(&p, Some(20.0))
        };
        assert!(rate(200, leak, Verdict::Leak) >= 0.95);
    }

    #[test]
    fn a_leak_in_bursts_is_a_leak() {
        // 64 KiB every third second, nothing in between.
        let p = series(24, |t| 65_536.0 * (t / 3.0).floor());
        assert_eq!(verdict(&p, Some(24.0)), Verdict::Leak);
    }

    #[test]
    fn step_then_plateau_is_stable() {
        let cache = |r: &mut Rng| {
            let p = series(20, |t| {
                (if t < 2.0 { 50_000.0 * t } else { 100_000.0 }) + 300.0 * r.normal()
            });
            verdict(&p, Some(20.0))
        };
        assert!(rate(200, cache, Verdict::Stable) >= 0.95);
        // A cache that fills over half the window, then stops: never a leak.
        let slow_fill = |r: &mut Rng| {
            let p = series(30, |t| 4_000.0 * t.min(15.0) + 500.0 * r.normal());
            verdict(&p, Some(30.0))
        };
        assert_eq!(rate(200, slow_fill, Verdict::Leak), 0.0);
    }

    #[test]
    fn sawtooth_gc_waves_are_stable() {
        let gc = |r: &mut Rng| {
            let phase = r.uniform() * 7.0;
            let p = series(40, |t| 4e6 + 1e6 * ((t + phase) % 7.0) + 5e4 * r.normal());
            verdict(&p, Some(40.0))
        };
        assert!(rate(200, gc, Verdict::Leak) <= 0.01);
        assert!(rate(200, gc, Verdict::Stable) >= 0.9);
        // Waves on a rising floor are a leak: what never comes back grows.
        let rising = |r: &mut Rng| {
            let phase = r.uniform() * 7.0;
            let p = series(40, |t| {
                4e6 + 2e5 * t + 1e6 * ((t + phase) % 7.0) + 5e4 * r.normal()
            });
            verdict(&p, Some(40.0))
        };
        assert!(rate(200, rising, Verdict::Leak) >= 0.9);
    }

    #[test]
    fn slow_growth_under_heavy_noise_needs_a_longer_window() {
        // 100 B/s under 5 KB of noise: not detectable in 20 s; must not be a
        // confident "leak" by chance, and over 10 minutes it is found.
        let short = |r: &mut Rng| {
            let p = series(20, |t| 1e6 + 100.0 * t + 5_000.0 * r.normal());
            verdict(&p, Some(20.0))
        };
        assert!(rate(200, short, Verdict::Leak) <= 0.02);
        let long = |r: &mut Rng| {
            let mut s = crate::series::Series::default();
            for p in series(600, |t| 1e6 + 100.0 * t + 5_000.0 * r.normal()) {
                s.push(p);
            }
            verdict(&s.points(), Some(600.0))
        };
        assert!(rate(100, long, Verdict::Leak) >= 0.9);
    }

    /// An upward random walk whose oldest items survive (a LIFO backlog) is the
    /// known false positive: over 30 s, 500 seeds, 8.8% were called "leak"
    /// (docs/verdicts.md). In a real FIFO backlog the survivors stay young.
    #[test]
    fn random_walk_is_rarely_a_leak() {
        let walk = |r: &mut Rng| {
            let mut level = 1e6;
            let p = series(30, |_| {
                level += 2_000.0 * r.normal();
                level
            });
            verdict(&p, Some(30.0))
        };
        assert!(rate(500, walk, Verdict::Leak) <= 0.10);
        let fifo = |r: &mut Rng| {
            let mut level = 1e6;
            let p = series(30, |_| {
                level += 2_000.0 * r.normal();
                level
            });
            verdict(&p, Some(4.0))
        };
        assert_eq!(rate(500, fifo, Verdict::Leak), 0.0);
    }

    #[test]
    fn pool_warm_up_is_stable() {
        // A pool that allocates 64 buffers in its first seconds and keeps them.
        let p = series(20, |t| 4096.0 * (t * 32.0).min(64.0));
        assert_eq!(verdict(&p, Some(20.0)), Verdict::Stable);
    }

    #[test]
    fn young_survivors_are_transient() {
        // Request buffers held 2 s: constant level, everything young.
        let p = series(20, |_| 20_000.0);
        assert_eq!(verdict(&p, Some(2.0)), Verdict::Transient);
        let none = assess(
            &p,
            Evidence {
                live_count: 0,
                oldest_age_s: None,
                by_count: false,
                survival: None,
            },
        );
        assert_eq!(none.verdict, Verdict::Transient);
    }

    #[test]
    fn a_short_window_is_at_most_growing() {
        let p = series(6, |t| 1_000.0 * t);
        assert_eq!(verdict(&p, Some(6.0)), Verdict::Growing);
    }

    #[test]
    fn theil_sen_ignores_outliers() {
        let ts: Vec<f64> = (0..20).map(f64::from).collect();
        let mut y: Vec<f64> = ts.iter().map(|t| 3.0 * t).collect();
        y[5] = 1e9;
        y[12] = -1e9;
        assert!((theil_sen(&ts, &y) - 3.0).abs() < 1e-9);
    }

    /// A sampled site over `secs` seconds: objects sampled at `per_s` a second
    /// (Poisson), each standing for `size` bytes, and freed at the first GC
    /// (every `gc_s`) after they turn `lifetime` old (None: never). Returns
    /// the per-second series and the survival of those made in the first half,
    /// judged at the end.
    fn sampled_site(
        r: &mut Rng,
        secs: usize,
        per_s: f64,
        size: f64,
        gc_s: f64,
        lifetime: Option<f64>,
    ) -> (Vec<Point>, Survival) {
        let mut births = Vec::new();
        let mut t = 0.0;
        loop {
            t += -(1.0 - r.uniform()).ln() / per_s;
            if t >= secs as f64 {
                break;
            }
            births.push(t);
        }
        let freed_at = |b: f64| lifetime.map(|l| ((b + l) / gc_s).ceil() * gc_s);
        let alive_at = |b: f64, at: f64| b <= at && freed_at(b).is_none_or(|f| f > at);
        let points = (0..=secs)
            .map(|s| {
                let n = births.iter().filter(|&&b| alive_at(b, s as f64)).count() as f32;
                Point {
                    t: s as f32,
                    bytes: n * size as f32,
                    count: n,
                }
            })
            .collect();
        let (mid, end) = (secs as f64 / 2.0, secs as f64);
        let early = births.iter().filter(|&&b| b <= mid).count() as u64;
        let alive = births
            .iter()
            .filter(|&&b| b <= mid && alive_at(b, end))
            .count() as u64;
        let outstanding = births.iter().filter(|&&b| alive_at(b, end)).count() as u64;
        let survival = Survival {
            early,
            alive,
            later: births.len() as u64 - early,
            later_alive: outstanding - alive,
            cutoff_age_s: mid,
        };
        (points, survival)
    }

    fn judged(points: &[Point], survival: Option<Survival>) -> Verdict {
        let live = points.last().map_or(0, |p| p.count as u64);
        assess(
            points,
            Evidence {
                live_count: live,
                oldest_age_s: None,
                by_count: false,
                survival,
            },
        )
        .verdict
    }

    #[test]
    fn survival_calls_coarse_sampled_leaks() {
        // A handler keeping 4 or 8 KiB a request at 50 requests/s under Go's
        // default 512 KiB sampling: ~0.4 or ~0.8 samples a second, 20 s.
        for (per_s, at_least) in [(0.4, 0.77), (0.8, 0.98)] {
            let coarse = |r: &mut Rng| sampled_site(r, 20, per_s, 512.0 * 1024.0, 2.0, None);
            let with = rate(
                1000,
                |r| {
                    let (p, s) = coarse(r);
                    judged(&p, Some(s))
                },
                Verdict::Leak,
            );
            let without = rate(1000, |r| judged(&coarse(r).0, None), Verdict::Leak);
            eprintln!(
                "{per_s} samples/s, 20 s: leak {with} with survival, {without} from the curve alone"
            );
            assert!(with >= at_least && with > without, "{with} {without}");
        }
        // At 64 KiB: ~3 samples a second.
        let fine = rate(
            200,
            |r| {
                let (p, s) = sampled_site(r, 60, 3.0, 65536.0, 2.0, None);
                judged(&p, Some(s))
            },
            Verdict::Leak,
        );
        assert_eq!(fine, 1.0);
    }

    #[test]
    fn survival_keeps_garbage_and_caches_from_leaks() {
        // Garbage: dies at the next GC (every 2 s).
        let garbage = rate(
            200,
            |r| {
                let (p, s) = sampled_site(r, 60, 30.0, 2.0 * 1024.0 * 1024.0, 2.0, Some(0.0));
                judged(&p, Some(s))
            },
            Verdict::Leak,
        );
        // A full cache evicting: entries live ~7 s.
        let cache = rate(
            200,
            |r| {
                let (p, s) = sampled_site(r, 60, 3.0, 65536.0, 2.0, Some(7.0));
                judged(&p, Some(s))
            },
            Verdict::Leak,
        );
        eprintln!("garbage leak {garbage}, evicting cache leak {cache}");
        assert_eq!((garbage, cache), (0.0, 0.0));
    }

    #[test]
    fn turnover_is_not_a_leak_even_on_a_rising_curve() {
        // Outstanding climbs steadily, but the early objects all died: a
        // growing backlog of short-lived objects.
        let p = series(30, |t| 100_000.0 * t);
        let turnover = Survival {
            early: 40,
            alive: 1,
            later: 60,
            later_alive: 58,
            cutoff_age_s: 15.0,
        };
        assert_eq!(judged(&p, None), Verdict::Leak);
        assert_eq!(judged(&p, Some(turnover)), Verdict::Growing);
        // Too few early samples to say.
        let few = Survival {
            early: 3,
            alive: 0,
            ..turnover
        };
        assert_eq!(judged(&p, Some(few)), Verdict::Leak);
    }
}
