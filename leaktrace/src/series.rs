//! A bounded time series of one site's outstanding bytes and count: one point
//! per sample until full, then pairs of points merge (their means) and later
//! samples are averaged by the same stride, so a long run keeps evenly spaced,
//! coarser points in constant memory.

/// One point: seconds since tracing began, mean outstanding bytes and count
/// (f32: 12 bytes a point, 768 a site, for 100k sites).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub t: f32,
    pub bytes: f32,
    pub count: f32,
}

impl Point {
    fn mean(self, other: Point, weight_other: f32) -> Point {
        let w = weight_other / (1.0 + weight_other);
        Point {
            t: self.t + (other.t - self.t) * w,
            bytes: self.bytes + (other.bytes - self.bytes) * w,
            count: self.count + (other.count - self.count) * w,
        }
    }
}

/// Points kept per site, whatever the length of the run.
pub const CAPACITY: usize = 64;

#[derive(Clone, Debug, Default)]
pub struct Series {
    points: Vec<Point>,
    /// Samples per point.
    stride: u32,
    /// The point being filled and how many samples it holds.
    pending: Option<(Point, u32)>,
}

impl Series {
    pub fn push(&mut self, sample: Point) {
        let stride = self.stride.max(1);
        let (point, n) = match self.pending.take() {
            Some((p, n)) => (p.mean(sample, 1.0 / n as f32), n + 1),
            None => (sample, 1),
        };
        if n < stride {
            self.pending = Some((point, n));
            return;
        }
        if self.points.len() == CAPACITY {
            // The point just completed covers `stride` samples: it becomes the
            // start of the first point of the doubled stride.
            self.points = self
                .points
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => a.mean(*b, 1.0),
                    [a] => *a,
                    _ => unreachable!(),
                })
                .collect();
            self.stride = stride * 2;
            self.pending = Some((point, n));
            return;
        }
        if self.points.is_empty() {
            self.points.reserve_exact(CAPACITY);
        }
        self.points.push(point);
    }

    /// This series plus `other` (sampled on the same ticks, maybe from
    /// later on): each point gains the value of `other`'s point nearest in
    /// time, when one is within half this series' spacing (a point covers
    /// `stride` one-second samples).
    pub fn plus(&self, other: &Series) -> Series {
        let theirs = other.points();
        let half = self.stride.max(1) as f32 / 2.0;
        let add = |p: Point| {
            let near = theirs
                .iter()
                .min_by(|a, b| (a.t - p.t).abs().total_cmp(&(b.t - p.t).abs()))
                .filter(|q| (q.t - p.t).abs() <= half);
            match near {
                Some(q) => Point {
                    t: p.t,
                    bytes: p.bytes + q.bytes,
                    count: p.count + q.count,
                },
                None => p,
            }
        };
        Series {
            points: self.points.iter().map(|&p| add(p)).collect(),
            stride: self.stride,
            pending: self.pending.map(|(p, n)| (add(p), n)),
        }
    }

    /// The points, oldest first, with the partly filled one last.
    pub fn points(&self) -> Vec<Point> {
        let mut points = self.points.clone();
        points.extend(self.pending.map(|(p, _)| p));
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64) -> Point {
        Point {
            t: t as f32,
            bytes: t as f32 * 10.0,
            count: t as f32,
        }
    }

    #[test]
    fn keeps_every_sample_until_full() {
        let mut s = Series::default();
        for i in 0..CAPACITY {
            s.push(sample(i as f64));
        }
        assert_eq!(s.points().len(), CAPACITY);
        assert_eq!(s.points()[5], sample(5.0));
    }

    #[test]
    fn a_later_series_adds_on_its_ticks() {
        let mut early = Series::default();
        let mut late = Series::default();
        for i in 0..10 {
            early.push(sample(i as f64));
            if i >= 4 {
                late.push(Point {
                    t: i as f32,
                    bytes: 1000.0,
                    count: 1.0,
                });
            }
        }
        let sum = early.plus(&late).points();
        assert_eq!(sum.len(), 10);
        // A long series keeps its spacing: its points cover several samples.
        let mut long = Series::default();
        for i in 0..300 {
            long.push(sample(i as f64));
        }
        let joined = long.plus(&late);
        assert_eq!(joined.stride, long.stride);
        assert_eq!(joined.points().len(), long.points().len());
        assert_eq!(sum[3], sample(3.0));
        assert_eq!(sum[4].bytes, 40.0 + 1000.0);
        assert_eq!(sum[9].count, 9.0 + 1.0);
    }

    #[test]
    fn stays_bounded_and_evenly_spaced() {
        let mut s = Series::default();
        for i in 0..10_000 {
            s.push(sample(i as f64));
        }
        let points = s.points();
        assert!(points.len() <= CAPACITY + 1, "{}", points.len());
        assert!(points.len() >= CAPACITY / 2);
        // A linear input stays linear through the merges: means of means.
        for p in &points {
            assert!(
                (p.bytes - p.t * 10.0).abs() < 1e-3 * p.bytes.max(1.0),
                "{p:?}"
            );
        }
        let steps: Vec<f32> = points.windows(2).map(|w| w[1].t - w[0].t).collect();
        let full = &steps[..steps.len() - 1];
        assert!(full.iter().all(|d| (d - full[0]).abs() < 1e-3), "{steps:?}");
        assert!(points.last().unwrap().t > 9_000.0);
    }
}
