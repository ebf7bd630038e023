//! Where to put an entry uprobe so the kernel emulates the probed instruction
//! instead of single-stepping it out of line (a second trap: several µs per
//! call, see docs/performance.md).
//!
//! x86 uprobes emulate `push reg`, `nop` and relative `jmp`/`call`/`jcc`. An
//! allocator's fast path often starts with something else (jemalloc's malloc
//! compares its size argument first), so the probe goes to the first emulated
//! instruction that every call passes exactly once with its arguments still in
//! registers and its stack pointer untouched: straight-line code from the
//! entry, no branch into it from the rest of the function. The instructions
//! skipped may copy an argument to another register and reuse the original:
//! the attach cookie then says where the probe finds it (leaktrace-common's
//! `args`). The return probe goes to the same point: the return address is
//! still on top of the stack there.
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};
use leaktrace_common::args::{self, Reg};

/// Where an allocator function is probed, and where its arguments are there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Bytes from the function's start to the probed instruction.
    pub shift: u64,
    /// The attach cookie: the register of each argument the program reads.
    pub cookie: u64,
    /// Whether the kernel emulates the probed instruction (else it is
    /// single-stepped: no emulated instruction qualified).
    pub emulated: bool,
}

/// Instructions looked at past the entry.
const PREFIX_LEN: usize = 24;

/// Where to probe the function at `address` whose code is `code` (its whole
/// body when the size is known: a branch back into the prologue rules out the
/// points after its target). `slots[i]` is the argument index (System V order)
/// that the probe program reads as its slot `i`.
pub fn place(code: &[u8], address: u64, slots: &[usize]) -> Placement {
    let body: Vec<Instruction> = Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|ins| !ins.is_invalid())
        .collect();
    let targets: Vec<u64> = body
        .iter()
        .filter(|ins| is_near_branch(ins))
        .map(Instruction::near_branch_target)
        .filter(|&t| t > address && t < address + code.len() as u64)
        .collect();
    // Per slot, the registers holding its value (bit = `Reg` code).
    let mut holders: Vec<u16> = slots
        .iter()
        .map(|&a| args::ABI.get(a).map_or(0, |r| 1 << *r as u16))
        .collect();
    let at_entry = Placement {
        shift: 0,
        cookie: cookie(slots, &holders),
        emulated: body.first().is_some_and(is_emulated),
    };
    let mut factory = InstructionInfoFactory::new();
    for ins in body.iter().take(PREFIX_LEN) {
        if ins.ip() != address && targets.contains(&ins.ip()) {
            break;
        }
        let offset = (ins.ip() - address) as usize;
        if is_emulated(ins)
            && !has_legacy_prefix(&code[offset..])
            && holders.iter().all(|&h| h != 0)
        {
            return Placement {
                shift: offset as u64,
                cookie: cookie(slots, &holders),
                emulated: true,
            };
        }
        if ins.flow_control() != FlowControl::Next {
            break;
        }
        let copied = register_copy(ins);
        let mut clobbers_sp = false;
        for used in factory.info(ins).used_registers() {
            if !matches!(
                used.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            ) {
                continue;
            }
            let full = used.register().full_register();
            if full == Register::RSP {
                clobbers_sp = true;
            }
            if let Some(bit) = reg_bit(full) {
                for h in &mut holders {
                    *h &= !bit;
                }
            }
        }
        if clobbers_sp {
            break;
        }
        if let Some((dst, src)) = copied {
            for h in &mut holders {
                if *h & src != 0 {
                    *h |= dst;
                }
            }
        }
    }
    at_entry
}

/// The cookie for `slots`: each slot's ABI register while it still holds the
/// value, else the lowest-numbered register that does.
fn cookie(slots: &[usize], holders: &[u16]) -> u64 {
    let mut regs: [Reg; args::SLOTS] = [args::ABI[0], args::ABI[1], args::ABI[2], args::ABI[3]];
    for (i, (&arg, &held)) in slots.iter().zip(holders).enumerate().take(args::SLOTS) {
        let abi = args::ABI.get(arg).copied();
        regs[i] = match abi {
            Some(r) if held & (1 << r as u16) != 0 => r,
            _ => (1..=15)
                .find(|&code| held & (1 << code) != 0)
                .and_then(Reg::from_code)
                .or(abi)
                .unwrap_or(Reg::Rdi),
        };
    }
    args::cookie(regs)
}

/// `mov r64, r64`: (destination bit, source bit).
fn register_copy(ins: &Instruction) -> Option<(u16, u16)> {
    if !matches!(ins.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64)
        || ins.op0_kind() != OpKind::Register
        || ins.op1_kind() != OpKind::Register
    {
        return None;
    }
    Some((reg_bit(ins.op0_register())?, reg_bit(ins.op1_register())?))
}

/// The bit of a 64-bit register in a holders mask.
fn reg_bit(reg: Register) -> Option<u16> {
    let r = match reg {
        Register::RDI => Reg::Rdi,
        Register::RSI => Reg::Rsi,
        Register::RDX => Reg::Rdx,
        Register::RCX => Reg::Rcx,
        Register::R8 => Reg::R8,
        Register::R9 => Reg::R9,
        Register::RAX => Reg::Rax,
        Register::RBX => Reg::Rbx,
        Register::RBP => Reg::Rbp,
        Register::R10 => Reg::R10,
        Register::R11 => Reg::R11,
        Register::R12 => Reg::R12,
        Register::R13 => Reg::R13,
        Register::R14 => Reg::R14,
        Register::R15 => Reg::R15,
        _ => return None,
    };
    Some(1 << r as u16)
}

fn is_near_branch(ins: &Instruction) -> bool {
    matches!(
        ins.flow_control(),
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call
    ) && ins.op0_kind() == OpKind::NearBranch64
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

/// The addresses of the 8-byte words a function whose code is `code` loads
/// into a register from fixed places (`mov reg64, [rip+X]`), in code order:
/// the globals it reads.
pub fn global_loads(code: &[u8], address: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|ins| !ins.is_invalid())
        .filter(|ins| {
            ins.mnemonic() == Mnemonic::Mov
                && ins.op_count() == 2
                && ins.op0_kind() == OpKind::Register
                && ins.op0_register().is_gpr64()
                && ins.op1_kind() == OpKind::Memory
                && ins.is_ip_rel_memory_operand()
        })
        .map(|ins| ins.ip_rel_memory_address())
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

/// Whether the kernel's x86 uprobe code emulates this instruction.
pub fn is_emulated(ins: &Instruction) -> bool {
    match ins.mnemonic() {
        Mnemonic::Push => ins.op0_kind() == OpKind::Register && ins.op0_register().is_gpr64(),
        Mnemonic::Nop => ins.len() == 1,
        _ => is_near_branch(ins),
    }
}

/// Whether `bytes`, an instruction, starts with a legacy prefix: the kernel
/// refuses some on any probe (segment, lock) and 0x66 on branches.
fn has_legacy_prefix(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| {
        matches!(
            b,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::elf::ElfImage;

    // Byte sequences as glibc 2.36 (Debian 12) starts these functions.
    const FREE: &[u8] = &[
        0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48, 0x8d,
    ];
    const MALLOC: &[u8] = &[0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb];
    const MEMALIGN: &[u8] = &[0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];

    /// The registers a placement reads its `n` slots from.
    fn regs(p: Placement, n: usize) -> Vec<Reg> {
        (0..n).map(|i| args::reg(p.cookie, i)).collect()
    }

    #[test]
    fn free_is_probed_at_its_null_check() {
        let p = place(FREE, 0x98ef0, &[0]);
        assert_eq!((p.shift, p.emulated), (3, true));
        assert_eq!(regs(p, 1), [Reg::Rdi]);
    }

    #[test]
    fn emulated_first_instruction_stays_at_entry() {
        assert_eq!(place(MALLOC, 0x1000, &[0]).shift, 0);
        // cmp byte [rip+…], 0; je: the je
        assert_eq!(place(MEMALIGN, 0x1000, &[0, 1]).shift, 7);
    }

    #[test]
    fn endbr64_is_skipped_when_the_next_instruction_is_emulated() {
        let code = [0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5];
        assert_eq!(place(&code, 0x1000, &[0]).shift, 4);
    }

    #[test]
    fn an_argument_copied_before_the_probe_is_read_from_its_copy() {
        // mimalloc 2.0's mi_malloc: mov rax,[rip+…]; mov rsi,rdi;
        // mov rdi,fs:[rax]; cmp rsi,0x400; ja
        let code = [
            0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38,
            0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, 0x77, 0x29,
        ];
        let p = place(&code, 0x10b70, &[0]);
        assert_eq!((p.shift, p.emulated), (21, true));
        assert_eq!(regs(p, 1), [Reg::Rsi]);
    }

    #[test]
    fn a_lost_argument_keeps_the_probe_at_the_entry() {
        // mov rdi,[rip+0]; push rbp: the argument is gone by the push.
        let code = [0x48, 0x8b, 0x3d, 0, 0, 0, 0, 0x55];
        let p = place(&code, 0x1000, &[0]);
        assert_eq!((p.shift, p.emulated), (0, false));
        assert_eq!(regs(p, 1), [Reg::Rdi]);
    }

    #[test]
    fn a_moved_stack_pointer_keeps_the_probe_at_the_entry() {
        // sub rsp,8; push rbp: the return address is no longer on top.
        let code = [0x48, 0x83, 0xec, 0x08, 0x55];
        assert_eq!(place(&code, 0x1000, &[0]).shift, 0);
    }

    #[test]
    fn a_branch_back_into_the_prologue_keeps_the_probe_before_its_target() {
        // 0: cmp rdi,0x10; 4: mov rax,rdi; 7: jne 4; 9: ret. The jne is
        // passed more than once per call.
        let code = [0x48, 0x83, 0xff, 0x10, 0x48, 0x89, 0xf8, 0x75, 0xfb, 0xc3];
        assert_eq!(place(&code, 0x1000, &[0]).shift, 0);
    }

    /// Checks a placement on its own terms: the instructions before it run
    /// straight through without moving the stack pointer, no branch of the
    /// function lands among them, and the slots' registers hold the arguments.
    fn assert_sound(code: &[u8], address: u64, slots: &[usize], p: Placement, what: &str) {
        let body: Vec<Instruction> = Decoder::with_ip(64, code, address, DecoderOptions::NONE)
            .into_iter()
            .take_while(|i| !i.is_invalid())
            .collect();
        let probed = address + p.shift;
        for ins in body.iter().filter(|i| is_near_branch(i)) {
            let t = ins.near_branch_target();
            assert!(
                !(t > address && t <= probed),
                "{what}: a branch at {:#x} lands before the probe",
                ins.ip()
            );
        }
        let abi = [
            Register::RDI,
            Register::RSI,
            Register::RDX,
            Register::RCX,
            Register::R8,
            Register::R9,
        ];
        let mut holders: Vec<Vec<Register>> = slots.iter().map(|&a| vec![abi[a]]).collect();
        let mut factory = InstructionInfoFactory::new();
        for ins in body.iter().take_while(|i| i.ip() < probed) {
            assert_eq!(
                ins.flow_control(),
                FlowControl::Next,
                "{what}: at {:#x}",
                ins.ip()
            );
            let copy = (matches!(ins.code(), Code::Mov_r64_rm64 | Code::Mov_rm64_r64)
                && ins.op0_kind() == OpKind::Register
                && ins.op1_kind() == OpKind::Register)
                .then(|| (ins.op0_register(), ins.op1_register()));
            let before = holders.clone();
            for used in factory.info(ins).used_registers() {
                if matches!(used.access(), OpAccess::Read | OpAccess::CondRead) {
                    continue;
                }
                let full = used.register().full_register();
                assert_ne!(
                    full,
                    Register::RSP,
                    "{what}: {:#x} moves the stack pointer",
                    ins.ip()
                );
                holders.iter_mut().for_each(|h| h.retain(|&r| r != full));
            }
            if let Some((dst, src)) = copy {
                for (h, was) in holders.iter_mut().zip(&before) {
                    if was.contains(&src) {
                        h.push(dst);
                    }
                }
            }
        }
        let names = [
            (Reg::Rdi, Register::RDI),
            (Reg::Rsi, Register::RSI),
            (Reg::Rdx, Register::RDX),
            (Reg::Rcx, Register::RCX),
            (Reg::R8, Register::R8),
            (Reg::R9, Register::R9),
            (Reg::Rax, Register::RAX),
            (Reg::Rbx, Register::RBX),
        ];
        for (i, h) in holders.iter().enumerate() {
            let read = args::reg(p.cookie, i);
            let reg = names.iter().find(|(r, _)| *r == read).map(|(_, x)| *x);
            assert!(
                reg.is_some_and(|r| h.contains(&r)),
                "{what}: slot {i} is read from {read:?}, the argument is in {h:?}"
            );
        }
    }

    /// Each allocator as Debian ships it here (cargo xtask setup installs
    /// them): where its functions are probed and where the arguments are.
    #[test]
    fn real_allocators_are_probed_on_emulated_instructions() {
        let lib = |name: &str| Path::new("/usr/lib/x86_64-linux-gnu").join(name);
        // (library, function, argument of each slot, shift, slot registers)
        type Case = (
            std::path::PathBuf,
            &'static str,
            &'static [usize],
            u64,
            &'static [Reg],
        );
        let cases: &[Case] = &[
            (lib("libc.so.6"), "malloc", &[0], 0, &[Reg::Rdi]),
            (lib("libc.so.6"), "free", &[0], 3, &[Reg::Rdi]),
            (lib("libjemalloc.so.2"), "malloc", &[0], 7, &[Reg::Rdi]),
            (lib("libjemalloc.so.2"), "free", &[0], 48, &[Reg::Rdi]),
            (
                lib("libjemalloc.so.2"),
                "calloc",
                &[0, 1],
                0,
                &[Reg::Rdi, Reg::Rsi],
            ),
            (
                lib("libjemalloc.so.2"),
                "realloc",
                &[0, 1],
                0,
                &[Reg::Rdi, Reg::Rsi],
            ),
            (
                lib("libtcmalloc_minimal.so.4"),
                "malloc",
                &[0],
                10,
                &[Reg::Rdi],
            ),
            (
                lib("libtcmalloc_minimal.so.4"),
                "free",
                &[0],
                10,
                &[Reg::Rdi],
            ),
            (lib("libmimalloc.so.2"), "mi_malloc", &[0], 21, &[Reg::Rsi]),
            (lib("libmimalloc.so.2"), "mi_free", &[0], 6, &[Reg::Rdi]),
            (
                lib("libmimalloc.so.2"),
                "mi_malloc_aligned",
                &[0],
                20,
                &[Reg::Rsi],
            ),
            (
                "/usr/lib/x86_64-linux-musl/libc.so".into(),
                "malloc",
                &[0],
                0,
                &[Reg::Rdi],
            ),
            (
                "/usr/lib/x86_64-linux-musl/libc.so".into(),
                "free",
                &[0],
                0,
                &[Reg::Rdi],
            ),
        ];
        for (path, name, slots, shift, regs_want) in cases {
            if !path.exists() {
                eprintln!("skipped: no {} (cargo xtask setup)", path.display());
                continue;
            }
            let image = ElfImage::open(path).unwrap();
            let f = image.function(name).unwrap();
            let code = image.bytes_at(f.file_offset, f.size.clamp(16, 4096) as usize);
            let p = place(code, f.address, slots);
            let what = format!("{name} in {}", path.display());
            assert!(p.emulated, "{what}");
            assert_eq!(p.shift, *shift, "{what}");
            assert_eq!(regs(p, slots.len()), *regs_want, "{what}");
            assert_sound(code, f.address, slots, p, &what);
        }
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
