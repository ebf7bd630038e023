//! The user stack of a syscall, as userspace needs it to find the call site.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    helpers::bpf_probe_read_user_buf,
    programs::{RawTracePointContext, tracing::StackIdContext},
};
use leaktrace_common::{Counter, NO_STACK, USER_STACK_WORDS, USER_STACK_WORDS_NEAR_TOP};

use crate::maps::{STACKS, count};

/// The id of the current user stack (frame-pointer walk) in `STACKS`, or
/// `NO_STACK` (counted) when it could not be stored.
#[inline(always)]
pub fn id<C: EbpfContext + StackIdContext>(ctx: &C) -> u32 {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as u32,
        Err(_) => {
            count(Counter::StackLost);
            NO_STACK
        }
    }
}

/// The frame-pointer stack id, and the words at the user stack pointer `sp`: the
/// walk skips the caller of a frameless libc wrapper (glibc's mmap, open…), and
/// userspace finds its return address among these words.
#[inline(always)]
pub fn capture(ctx: &RawTracePointContext, sp: u64, words: &mut [u64; USER_STACK_WORDS]) -> u32 {
    let id = id(ctx);
    // SAFETY: plain integers; any byte pattern is a valid [u64; N].
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), USER_STACK_WORDS * 8)
    };
    // SAFETY: reads the target's stack; a fault leaves zeros. Near the top of
    // the stack the whole copy would fault: a shorter one still finds the caller.
    unsafe {
        if bpf_probe_read_user_buf(sp as *const u8, bytes).is_err() {
            *words = [0; USER_STACK_WORDS];
            let near = &mut bytes[..USER_STACK_WORDS_NEAR_TOP * 8];
            let _ = bpf_probe_read_user_buf(sp as *const u8, near);
        }
    }
    id
}
