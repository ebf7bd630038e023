//! Go's heap profile is sampled: what a sample stands for (pprof's scaling),
//! shared by the model and the runtime's readers.

/// Go's default `runtime.MemProfileRate`: one sample per 512 KiB allocated.
pub const DEFAULT_MEM_PROFILE_RATE: u64 = 512 * 1024;

/// How many objects and bytes `count` sampled objects of `size` bytes stand for,
/// at sampling rate `rate` (pprof's scaling of Go heap profiles).
pub fn scale(count: f64, size: u64, rate: u64) -> (f64, f64) {
    if rate <= 1 || size == 0 {
        return (count, count * size as f64);
    }
    let factor = 1.0 / (1.0 - (-(size as f64) / rate as f64).exp());
    (count * factor, count * size as f64 * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_follows_pprof() {
        // A 64 KiB object at the default rate stands for ~8.5 of them.
        let (n, bytes) = scale(1.0, 65536, DEFAULT_MEM_PROFILE_RATE);
        assert!((n - 8.51).abs() < 0.01, "{n}");
        assert!((bytes - 8.51 * 65536.0).abs() < 700.0);
        // Objects far bigger than the rate are always sampled.
        assert!((scale(3.0, 64 << 20, DEFAULT_MEM_PROFILE_RATE).0 - 3.0).abs() < 1e-6);
        // Rate 1 records every allocation.
        assert_eq!(scale(5.0, 100, 1), (5.0, 500.0));
    }
}
