//! User stacks, unwound in the kernel from the tables userspace builds out of
//! each module's `.eh_frame` (leaktrace-common's `unwind` module describes them).
//!
//! One `bpf_loop` iteration per frame: find the mapping holding the pc, the
//! module's row for it (page index, then a binary search), compute the CFA from
//! rsp or rbp, read the return address at CFA − 8 and the caller's rbp where the
//! row says it was saved. Modules without unwind info (Go code) follow the rbp
//! chain. The walk never records an address outside the process's executable
//! mappings, and says why it ended.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    cty::c_void,
    helpers::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use leaktrace_common::{
    Counter, NO_STACK, StackId,
    unwind::{
        DEFAULT_DEPTH, MAPPING_NO_TABLE, MAPPING_SEARCH_STEPS, MAX_FRAMES, MAX_MAPPINGS, Mapping,
        PAGE_SHIFT, PageIndex, ProcMappings, ROW_SEARCH_STEPS, RowKind, STACK_WINDOW, StackEnd,
        StackTrace, UnwindRow,
    },
};

use crate::maps::{INFLIGHT, count, count_by, current_tgid_tid};

/// Every module's rows, appended by userspace (size set at load).
#[map]
pub static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, 0);

/// Every module's page index, appended by userspace (size set at load).
#[map]
pub static UNWIND_PAGES: Array<PageIndex> = Array::with_max_entries(1, 0);

/// Each target's executable mappings (tgid → mappings), kept by userspace,
/// copied at fork and dropped at exec here.
#[map]
pub static MAPPINGS: HashMap<u32, ProcMappings> = HashMap::with_max_entries(1024, 0);

/// Stacks by the hash of their return addresses (size set at load).
#[map]
pub static STACKS: HashMap<StackId, StackTrace> = HashMap::with_max_entries(1 << 14, 0);

/// Depth limit, set by userspace at load (`--max-depth`; leaktrace-common's
/// `globals::MAX_DEPTH` names it).
#[unsafe(no_mangle)]
static MAX_DEPTH: u32 = DEFAULT_DEPTH;

/// One walk's state, per CPU. Uprobe and syscall programs only disable
/// migration, so a walk preempted on this CPU may still be running when
/// another starts: each claims a free slot.
#[repr(C)]
pub struct Walk {
    busy: u32,
    /// The pc is the interrupted instruction itself, not a return address.
    exact: u32,
    pc: u64,
    sp: u64,
    bp: u64,
    hash: u64,
    tgid: u32,
    limit: u32,
    /// Follow the frame-pointer chain only (Go code).
    frame_pointers: u32,
    /// Where a pending uretprobe put its trampoline, and the real return address.
    ret_slot: u64,
    ret_addr: u64,
    /// The mapping of the previous frame (most frames stay in one module).
    mapping: Mapping,
    window_base: u64,
    window_len: u64,
    stack: StackTrace,
    window: [u8; STACK_WINDOW],
}

const SLOTS: u32 = 4;

#[map]
static WALKS: PerCpuArray<Walk> = PerCpuArray::with_max_entries(SLOTS, 0);

/// `struct ucontext`'s `uc_mcontext` on a signal frame, and the registers in it.
const UCONTEXT_MCONTEXT: u64 = 40;
const MCONTEXT_RBP: u64 = 80;
const MCONTEXT_RSP: u64 = 120;
const MCONTEXT_RIP: u64 = 128;

/// The stack of the user registers (`pc`, `sp`, `bp`) of the current thread,
/// stored in `STACKS`; `NO_STACK` (counted) when it could not be.
#[inline(always)]
pub fn stack_id(pc: u64, sp: u64, bp: u64) -> StackId {
    walk_from(pc, sp, bp, 1)
}

/// The stack of Go code from a caller's frame, by frame pointers alone (Go
/// keeps them; the chain costs two reads a frame, no table): `ret` the
/// return address into it, `bp` its frame pointer.
#[inline(always)]
pub fn go_stack_id(ret: u64, bp: u64) -> StackId {
    walk_from(ret, 0, bp, 0)
}

/// `exact`: `pc` is the interrupted instruction; else a return address into
/// Go code, walked by frame pointers (see [`go_stack_id`]).
#[inline(always)]
fn walk_from(pc: u64, sp: u64, bp: u64, exact: u32) -> StackId {
    let Some((slot, walk)) = claim() else {
        count(Counter::StackLost);
        return NO_STACK;
    };
    // SAFETY: this slot is ours until `busy` is cleared.
    let walk = unsafe { &mut *walk };
    let (tgid, tid) = current_tgid_tid();
    walk.exact = exact;
    walk.frame_pointers = 1 - exact;
    walk.pc = pc;
    walk.sp = sp;
    walk.bp = bp;
    walk.hash = 0xcbf2_9ce4_8422_2325;
    walk.tgid = tgid;
    // SAFETY: a global userspace writes before load; volatile so it is not folded.
    walk.limit = unsafe { core::ptr::read_volatile(&MAX_DEPTH) }.min(MAX_FRAMES as u32 - 1);
    walk.mapping.start = 0;
    walk.mapping.end = 0;
    walk.stack.len = 0;
    walk.stack.end = StackEnd::Depth as u32;
    walk.ret_slot = 0;
    // SAFETY: per-thread entry, read by its own thread.
    if let Some(call) = unsafe { INFLIGHT.get(tid) }
        && call.depth != 0
    {
        walk.ret_slot = call.sp;
        walk.ret_addr = call.ret;
    }
    walk.window_base = sp;
    // SAFETY: reads the target's stack into our slot; near the top of the
    // stack the whole window may fault, a smaller one may not.
    walk.window_len = unsafe {
        if walk.frame_pointers != 0 {
            0
        } else if bpf_probe_read_user_buf(sp as *const u8, &mut walk.window).is_ok() {
            STACK_WINDOW as u64
        } else if bpf_probe_read_user_buf(sp as *const u8, &mut walk.window[..512]).is_ok() {
            512
        } else {
            0
        }
    };
    let mut ctx = slot;
    // SAFETY: `step` has the callback signature; `ctx` outlives the loop.
    unsafe {
        bpf_loop(
            walk.limit + 1,
            step as *mut c_void,
            (&raw mut ctx).cast(),
            0,
        )
    };
    count(Counter::StackWalks);
    count_by(Counter::StackFrames as u32, walk.stack.len as u64);
    count_by(Counter::StackEnds as u32 + (walk.stack.end & 7), 1);
    let mut id = (walk.hash ^ walk.stack.len as u64) & !(1 << 63);
    if id == NO_STACK {
        id = 1;
    }
    // SAFETY: a map value copied into the map; EEXIST (the same stack stored
    // meanwhile) is fine. By reference: a copy would not fit the BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    if unsafe { STACKS.get(id) }.is_none()
        && STACKS.insert(id, &walk.stack, BPF_NOEXIST as u64).is_err()
        && unsafe { STACKS.get(id) }.is_none()
    {
        id = NO_STACK;
        count(Counter::StackLost);
    }
    walk.busy = 0;
    id
}

/// A free walk slot of this CPU.
#[inline(always)]
fn claim() -> Option<(u32, *mut Walk)> {
    for slot in 0..SLOTS {
        let walk = WALKS.get_ptr_mut(slot)?;
        // SAFETY: per-CPU slot; see `Walk` on preemption.
        unsafe {
            if (*walk).busy == 0 {
                (*walk).busy = 1;
                return Some((slot, walk));
            }
        }
    }
    None
}

/// One frame; returns 1 to end the loop.
#[inline(never)]
unsafe extern "C" fn step(_i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the slot number `stack_id` passed.
    let slot = unsafe { *(ctx as *const u32) };
    let Some(walk) = WALKS.get_ptr_mut(slot) else {
        return 1;
    };
    // SAFETY: the slot `stack_id` claimed.
    let walk = unsafe { &mut *walk };
    if walk.frame_pointers != 0 {
        go_frame(walk)
    } else {
        frame(walk)
    }
}

/// One frame of Go code: its return address and its caller's frame pointer
/// at the frame pointer. Frames stay in the first one's module (a Go
/// binary's code is one) and the chain must go up the stack.
#[inline(always)]
fn go_frame(walk: &mut Walk) -> i64 {
    let n = walk.stack.len;
    if n >= walk.limit {
        return end(walk, StackEnd::Depth);
    }
    let pc = walk.pc;
    if !(pc >= walk.mapping.start && pc < walk.mapping.end) {
        match find_mapping(walk.tgid, pc).filter(|_| n == 0) {
            Some(m) => walk.mapping = m,
            None => return end(walk, StackEnd::NoMapping),
        }
    }
    push(walk, pc);
    let bp = walk.bp;
    if bp == 0 {
        return end(walk, StackEnd::Complete);
    }
    // The saved frame pointer and the return address, in one read.
    // SAFETY: reads the target's memory; a fault returns Err.
    let Ok([next, ra]) = (unsafe { bpf_probe_read_user(bp as *const [u64; 2]) }) else {
        return end(walk, StackEnd::Unreadable);
    };
    if ra == 0 {
        return end(walk, StackEnd::Complete);
    }
    // 0: the outermost frame (runtime.goexit keeps none), next.
    if next != 0 && next <= bp {
        return end(walk, StackEnd::NotAdvancing);
    }
    walk.bp = next;
    walk.pc = ra;
    0
}

#[inline(always)]
fn end(walk: &mut Walk, why: StackEnd) -> i64 {
    walk.stack.end = why as u32;
    1
}

#[inline(always)]
fn frame(walk: &mut Walk) -> i64 {
    let n = walk.stack.len;
    if n >= walk.limit {
        return end(walk, StackEnd::Depth);
    }
    let pc = walk.pc;
    if !(pc >= walk.mapping.start && pc < walk.mapping.end) {
        match find_mapping(walk.tgid, pc) {
            Some(m) => walk.mapping = m,
            None => {
                // The probed instruction is real even where the maps are not known yet.
                if n == 0 {
                    push(walk, pc);
                }
                return end(walk, StackEnd::NoMapping);
            }
        }
    }
    push(walk, pc);
    let m = walk.mapping;
    if m.flags & MAPPING_NO_TABLE != 0 {
        return end(walk, StackEnd::NoTable);
    }
    // A return address follows its call: the caller's rule is the call's.
    let addr = pc
        .wrapping_sub(m.bias)
        .wrapping_sub(if walk.exact != 0 { 0 } else { 1 });
    walk.exact = 0;
    let row = row_for(&m, addr);
    let (cfa, rbp_off) = match row.kind {
        k if k == RowKind::Rsp as u8 => {
            (walk.sp.wrapping_add(row.cfa_off as i64 as u64), row.rbp_off)
        }
        k if k == RowKind::Rbp as u8 => {
            (walk.bp.wrapping_add(row.cfa_off as i64 as u64), row.rbp_off)
        }
        // Code no table covers: hand-written assembly. Innermost, with the
        // frame pointer below the stack pointer, it has no frame of its
        // own: a leaf (a syscall stub such as clone3's, past its CFI), its
        // return address on top of the stack.
        k if k == RowKind::FramePointer as u8 && n == 0 && walk.bp < walk.sp => {
            (walk.sp.wrapping_add(8), 0)
        }
        k if k == RowKind::FramePointer as u8 => {
            if walk.bp == 0 {
                return end(walk, StackEnd::Complete);
            }
            (walk.bp.wrapping_add(16), -2)
        }
        k if k == RowKind::Plt as u8 => (walk.sp + 8 + if (addr & 15) >= 11 { 8 } else { 0 }, 0),
        k if k == RowKind::Stop as u8 => return end(walk, StackEnd::Complete),
        k if k == RowKind::Signal as u8 => return signal_frame(walk),
        _ => return end(walk, StackEnd::Unsupported),
    };
    let slot = cfa.wrapping_sub(8);
    let ra = if slot == walk.ret_slot {
        walk.ret_addr
    } else {
        match read(walk, slot) {
            Some(ra) => ra,
            None => return end(walk, StackEnd::Unreadable),
        }
    };
    if rbp_off != 0 {
        match read(walk, cfa.wrapping_add((rbp_off as i64 * 8) as u64)) {
            Some(bp) => walk.bp = bp,
            None => return end(walk, StackEnd::Unreadable),
        }
    }
    if ra == 0 {
        return end(walk, StackEnd::Complete);
    }
    if cfa <= walk.sp {
        return end(walk, StackEnd::NotAdvancing);
    }
    walk.sp = cfa;
    walk.pc = ra;
    0
}

/// A signal trampoline: the interrupted registers are in the ucontext at sp.
#[inline(always)]
fn signal_frame(walk: &mut Walk) -> i64 {
    let mc = walk.sp.wrapping_add(UCONTEXT_MCONTEXT);
    let (Some(pc), Some(sp), Some(bp)) = (
        read(walk, mc + MCONTEXT_RIP),
        read(walk, mc + MCONTEXT_RSP),
        read(walk, mc + MCONTEXT_RBP),
    ) else {
        return end(walk, StackEnd::Unreadable);
    };
    if pc == 0 {
        return end(walk, StackEnd::Complete);
    }
    walk.pc = pc;
    walk.sp = sp;
    walk.bp = bp;
    walk.exact = 1;
    0
}

#[inline(always)]
fn push(walk: &mut Walk, pc: u64) {
    let n = walk.stack.len;
    walk.stack.pcs[(n as usize) & (MAX_FRAMES - 1)] = pc;
    walk.stack.len = n + 1;
    walk.hash = (walk.hash ^ pc)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29);
}

/// The mapping of `tgid` holding `pc`.
#[inline(always)]
fn find_mapping(tgid: u32, pc: u64) -> Option<Mapping> {
    // SAFETY: read-only use of a map value.
    let procs = unsafe { MAPPINGS.get(tgid) }?;
    let (mut lo, mut hi) = (0usize, (procs.n as usize).min(MAX_MAPPINGS));
    if hi == 0 {
        return None;
    }
    for _ in 0..MAPPING_SEARCH_STEPS {
        if hi - lo <= 1 {
            break;
        }
        let mid = (lo + hi) / 2;
        if procs.entries[mid & (MAX_MAPPINGS - 1)].start <= pc {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let m = procs.entries[lo & (MAX_MAPPINGS - 1)];
    (pc >= m.start && pc < m.end).then_some(m)
}

/// The row of module `m` for ELF address `addr`: frame pointers where its
/// table does not reach.
#[inline(always)]
fn row_for(m: &Mapping, addr: u64) -> UnwindRow {
    let frame_pointer = UnwindRow {
        pc: 0,
        cfa_off: 0,
        rbp_off: 0,
        kind: RowKind::FramePointer as u8,
    };
    let page = (addr >> PAGE_SHIFT) as u32;
    if addr >> 32 != 0 || page < m.first_page || page - m.first_page >= m.n_pages {
        return frame_pointer;
    }
    let Some(index) = UNWIND_PAGES.get(m.page_base + (page - m.first_page)) else {
        return frame_pointer;
    };
    let (mut lo, mut hi) = (index.lo, index.hi);
    let addr = addr as u32;
    for _ in 0..ROW_SEARCH_STEPS {
        if hi <= lo + 1 {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        match UNWIND_ROWS.get(mid) {
            Some(r) if r.pc <= addr => lo = mid,
            Some(_) => hi = mid,
            None => break,
        }
    }
    UNWIND_ROWS.get(lo).copied().unwrap_or(frame_pointer)
}

/// A word of the target's stack: from the window when it covers it.
#[inline(always)]
fn read(walk: &Walk, addr: u64) -> Option<u64> {
    let off = addr.wrapping_sub(walk.window_base);
    if off & 7 == 0 && off + 8 <= walk.window_len {
        let off = (off as usize) & (STACK_WINDOW - 8);
        // SAFETY: `off + 8` is inside the window (masked for the verifier).
        return Some(unsafe {
            core::ptr::read_unaligned(walk.window.as_ptr().add(off).cast::<u64>())
        });
    }
    // SAFETY: reads the target's memory; a fault returns Err.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// A fork's child has the parent's address space: and its mappings.
#[inline(always)]
pub fn inherit(parent: u32, child: u32) {
    if let Some(maps) = MAPPINGS.get_ptr(parent) {
        // SAFETY: a map value, copied by the helper (by reference: a copy
        // would not fit the BPF stack).
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = MAPPINGS.insert(child, unsafe { &*maps }, 0);
    }
}

/// An exec replaced the process's image: its old mappings mean nothing now.
#[inline(always)]
pub fn forget(tgid: u32) {
    let _ = MAPPINGS.remove(tgid);
}
