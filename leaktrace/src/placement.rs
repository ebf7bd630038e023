//! Where to put an entry uprobe so the kernel emulates the probed instruction
//! instead of single-stepping it out of line (a second trap: ~10 µs per call in a
//! VM, see docs/performance.md).
//!
//! x86 uprobes emulate `push reg`, `nop` and relative `jmp`/`call`/`jcc`. A function
//! whose first instruction is something else is probed a little later when that
//! is equivalent: after `endbr64` (a no-op for us), and — for free-like functions,
//! where a NULL first argument means "nothing to do" — after a leading
//! `test rdi, rdi; je …`, whose fall-through is the only path that matters.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, OpKind, Register,
};

/// Offset from the function's start at which to attach its entry probe.
///
/// `skip_null_check` allows skipping `test rdi,rdi; je`: only for functions that do
/// nothing when their first argument is NULL. Registers the probe reads are never
/// written by the skipped instructions.
pub fn entry_offset(code: &[u8], address: u64, skip_null_check: bool) -> u64 {
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take(4)
        .collect();
    let mut candidates = vec![0usize];
    let mut i = 0;
    if insns.get(i).is_some_and(|ins| ins.code() == Code::Endbr64) {
        i += 1;
        candidates.push(i);
    }
    if skip_null_check
        && insns.get(i).is_some_and(is_test_rdi_rdi)
        && insns
            .get(i + 1)
            .is_some_and(|ins| matches!(ins.code(), Code::Je_rel8_64 | Code::Je_rel32_64))
    {
        i += 2;
        candidates.push(i);
    }
    let chosen = candidates
        .iter()
        .rev()
        .copied()
        .find(|&c| insns.get(c).is_some_and(is_emulated))
        .unwrap_or(0);
    insns.get(chosen).map_or(0, |ins| ins.ip() - address)
}

/// Offset at which to probe a Go function's entry: past its stack-bound check
/// (`cmp rsp,[r14+16]; jbe morestack`, or `lea r12,[rsp-N]; cmp r12,[r14+16]; jbe`
/// for big frames) when the next instruction is emulated. The check is not
/// emulated, and when it fails, morestack restarts the function from its first
/// instruction, so the later point is still passed exactly once per call; the
/// check writes no register the probes read (only r12 in the long form).
pub fn go_entry_offset(code: &[u8], address: u64) -> u64 {
    let insns: Vec<Instruction> = Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take(4)
        .collect();
    let bound_check = |ins: &Instruction, reg: Register| {
        ins.mnemonic() == Mnemonic::Cmp
            && ins.op0_kind() == OpKind::Register
            && ins.op0_register() == reg
            && ins.op1_kind() == OpKind::Memory
            && ins.memory_base() == Register::R14
    };
    let after = if insns.first().is_some_and(|i| bound_check(i, Register::RSP)) {
        1
    } else if insns
        .first()
        .is_some_and(|i| i.mnemonic() == Mnemonic::Lea && i.op0_register() == Register::R12)
        && insns.get(1).is_some_and(|i| bound_check(i, Register::R12))
    {
        2
    } else {
        return 0;
    };
    let jbe = insns
        .get(after)
        .is_some_and(|i| matches!(i.code(), Code::Jbe_rel8_64 | Code::Jbe_rel32_64));
    match insns.get(after + 1) {
        Some(next) if jbe && is_emulated(next) => next.ip() - address,
        _ => 0,
    }
}

/// Offsets of the direct calls to `target` in a function whose code is `code`.
pub fn call_offsets(code: &[u8], address: u64, target: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|ins| !ins.is_invalid())
        .filter(|ins| ins.mnemonic() == Mnemonic::Call && ins.near_branch_target() == target)
        .map(|ins| ins.ip() - address)
        .collect()
}

/// Offsets of the `ret` instructions of a function whose code is `code`.
pub fn return_offsets(code: &[u8], address: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|ins| !ins.is_invalid())
        .filter(|ins| ins.mnemonic() == Mnemonic::Ret)
        .map(|ins| ins.ip() - address)
        .collect()
}

fn is_test_rdi_rdi(ins: &Instruction) -> bool {
    ins.code() == Code::Test_rm64_r64
        && ins.op0_kind() == OpKind::Register
        && ins.op0_register() == Register::RDI
        && ins.op1_register() == Register::RDI
}

/// Whether the kernel's x86 uprobe code emulates this instruction.
pub fn is_emulated(ins: &Instruction) -> bool {
    match ins.mnemonic() {
        Mnemonic::Push => ins.op0_kind() == OpKind::Register && ins.op0_register().is_gpr64(),
        Mnemonic::Nop => ins.len() == 1,
        _ => {
            matches!(
                ins.flow_control(),
                FlowControl::UnconditionalBranch
                    | FlowControl::ConditionalBranch
                    | FlowControl::Call
            ) && ins.op0_kind() == OpKind::NearBranch64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Byte sequences as glibc 2.36 (Debian 12) starts these functions.
    const FREE: &[u8] = &[
        0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d,
    ];
    const MALLOC: &[u8] = &[0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb];
    const MEMALIGN: &[u8] = &[0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];

    #[test]
    fn free_is_probed_after_its_null_check() {
        assert_eq!(entry_offset(FREE, 0x98ef0, true), 9);
        assert_eq!(entry_offset(FREE, 0x98ef0, false), 0);
    }

    #[test]
    fn emulated_first_instruction_stays_at_entry() {
        assert_eq!(entry_offset(MALLOC, 0x1000, false), 0);
        assert_eq!(entry_offset(MEMALIGN, 0x1000, false), 0);
    }

    #[test]
    fn endbr64_is_skipped_when_the_next_instruction_is_emulated() {
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5];
        assert_eq!(entry_offset(&code, 0x1000, false), 4);
    }

    #[test]
    fn go_functions_are_probed_past_their_stack_check() {
        // runtime.freeSpecial (Go 1.27): cmp rsp,[r14+0x10]; jbe; push rbp
        let short = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x5f, 0x03, 0x00, 0x00, 0x55, 0x48, 0x89, 0xe5,
        ];
        assert_eq!(go_entry_offset(&short, 0x437ac0), 10);
        // lea r12,[rsp-0x98]; cmp r12,[r14+0x10]; jbe; push rbp
        let long = [
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86,
            0x10, 0x02, 0x00, 0x00, 0x55,
        ];
        assert_eq!(go_entry_offset(&long, 0x1000), 18);
        // No check (a leaf): stays at the entry.
        assert_eq!(go_entry_offset(&[0x55, 0x48, 0x89, 0xe5], 0x1000), 0);
    }

    #[test]
    fn calls_are_found_by_decoding() {
        // runtime.newproc.func1 (Go 1.21): call newproc1; mov rbx,rax; call runqput
        let code = [
            0xe8, 0x41, 0x00, 0x00, 0x00, 0x48, 0x89, 0xc3, 0xe8, 0x99, 0x40, 0x00, 0x00,
        ];
        let start = 0x43bafa;
        assert_eq!(call_offsets(&code, start, 0x43fba0), [8]);
        assert_eq!(call_offsets(&code, start, 0x43bb40), [0]);
        assert!(call_offsets(&code, start, 0x1000).is_empty());
    }

    #[test]
    fn returns_are_found_by_decoding() {
        // push rbp; mov rbp,rsp; test eax,eax; je +2; pop rbp; ret; pop rbp; ret
        let code = [
            0x55, 0x48, 0x89, 0xe5, 0x85, 0xc0, 0x74, 0x02, 0x5d, 0xc3, 0x5d, 0xc3,
        ];
        assert_eq!(return_offsets(&code, 0x1000), [9, 11]);
    }
}
