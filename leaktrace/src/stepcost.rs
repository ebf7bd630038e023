//! What a uprobe costs here, emulated and single-stepped: measured in
//! leaktrace's own process on two tiny functions, for the warning about
//! allocator functions that could only be probed on an instruction the kernel
//! single-steps (see placement.rs).
use std::{arch::global_asm, hint::black_box, time::Instant};

use crate::{
    probes::{ProbeError, Probes},
    procmaps::ProcMaps,
};

// Two functions the compiler cannot reshape: one starting with an
// instruction the kernel single-steps, one with one it emulates.
global_asm!(
    ".globl leaktrace_probe_stepped",
    ".type leaktrace_probe_stepped,@function",
    "leaktrace_probe_stepped:",
    "mov rax, rdi",
    "ret",
    ".globl leaktrace_probe_emulated",
    ".type leaktrace_probe_emulated,@function",
    "leaktrace_probe_emulated:",
    "push rbp",
    "pop rbp",
    "mov rax, rdi",
    "ret",
);

unsafe extern "C" {
    fn leaktrace_probe_stepped(x: u64) -> u64;
    fn leaktrace_probe_emulated(x: u64) -> u64;
}

/// Nanoseconds a probe adds to each call.
#[derive(Clone, Copy, Debug)]
pub struct Costs {
    pub stepped_ns: f64,
    pub emulated_ns: f64,
}

const CALLS: u32 = 2000;

/// Measures both costs (~20 ms in a VM).
pub fn measure(probes: &mut Probes) -> Result<Costs, ProbeError> {
    let maps = ProcMaps::read(std::process::id()).unwrap_or_default();
    let mut cost = |f: unsafe extern "C" fn(u64) -> u64| -> Result<f64, ProbeError> {
        let addr = f as usize as u64;
        let Some((path, offset)) = maps
            .lookup(addr)
            .and_then(|m| Some((m.path.clone()?, addr - m.start + m.offset)))
        else {
            return Ok(f64::NAN);
        };
        let untraced = time(f);
        let link = probes.attach_calibration(&path, offset)?;
        let traced = time(f);
        probes.detach_calibration(link);
        Ok((traced - untraced).max(0.0))
    };
    Ok(Costs {
        stepped_ns: cost(leaktrace_probe_stepped)?,
        emulated_ns: cost(leaktrace_probe_emulated)?,
    })
}

/// Nanoseconds per call of `f`.
fn time(f: unsafe extern "C" fn(u64) -> u64) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        // SAFETY: both functions only copy their argument to the result.
        black_box(unsafe { f(black_box(0)) });
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}
