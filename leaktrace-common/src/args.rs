//! Where an allocator probe finds its arguments: the probe's attach cookie.
//!
//! Userspace may probe a few instructions into a function, at the first one
//! the kernel emulates rather than single-steps; by then the function may have
//! copied an argument to another register and reused the original. Each
//! attachment's cookie says, per argument the program reads ("slot"), which
//! register holds it there.

/// A general-purpose register, as numbered in the cookie (0 is "not given").
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    Rdi = 1,
    Rsi = 2,
    Rdx = 3,
    Rcx = 4,
    R8 = 5,
    R9 = 6,
    Rax = 7,
    Rbx = 8,
    Rbp = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

/// The System V argument registers, in order.
pub const ABI: [Reg; 6] = [Reg::Rdi, Reg::Rsi, Reg::Rdx, Reg::Rcx, Reg::R8, Reg::R9];

/// Slots a program can read (a nibble each).
pub const SLOTS: usize = 4;

impl Reg {
    // A match, not a table: the eBPF side must have no bounds-check panic.
    #[inline(always)]
    pub const fn from_code(code: u8) -> Option<Reg> {
        Some(match code {
            1 => Reg::Rdi,
            2 => Reg::Rsi,
            3 => Reg::Rdx,
            4 => Reg::Rcx,
            5 => Reg::R8,
            6 => Reg::R9,
            7 => Reg::Rax,
            8 => Reg::Rbx,
            9 => Reg::Rbp,
            10 => Reg::R10,
            11 => Reg::R11,
            12 => Reg::R12,
            13 => Reg::R13,
            14 => Reg::R14,
            15 => Reg::R15,
            _ => return None,
        })
    }
}

/// The cookie for an attachment whose slot `i` is in `regs[i]`.
pub const fn cookie(regs: [Reg; SLOTS]) -> u64 {
    let mut c = 0u64;
    let mut i = 0;
    while i < SLOTS {
        c |= (regs[i] as u64) << (4 * i);
        i += 1;
    }
    c
}

/// The register holding slot `slot` under `cookie`; slot `i` of a probe
/// attached without a cookie is the `i`-th argument register.
#[inline(always)]
pub const fn reg(cookie: u64, slot: usize) -> Reg {
    match Reg::from_code(((cookie >> (4 * (slot & 3))) & 0xf) as u8) {
        Some(r) => r,
        None => match slot {
            0 => Reg::Rdi,
            1 => Reg::Rsi,
            2 => Reg::Rdx,
            _ => Reg::Rcx,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_default_to_the_abi() {
        let c = cookie([Reg::Rsi, Reg::Rcx, Reg::R15, Reg::Rdi]);
        assert_eq!(reg(c, 0), Reg::Rsi);
        assert_eq!(reg(c, 1), Reg::Rcx);
        assert_eq!(reg(c, 2), Reg::R15);
        assert_eq!(reg(c, 3), Reg::Rdi);
        assert_eq!(reg(0, 0), Reg::Rdi);
        assert_eq!(reg(0, 2), Reg::Rdx);
    }
}
