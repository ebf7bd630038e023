//! `#[repr(C)]` types shared by the eBPF programs and userspace.
//!
//! Every type here crosses the kernel/user boundary byte for byte: keep fields
//! naturally aligned, padding explicit, and layouts identical on both sides.
#![no_std]

/// Name of every map, so both sides agree without string literals scattered around.
pub mod maps {
    pub const ALLOCS: &str = "ALLOCS";
    pub const SITES: &str = "SITES";
    pub const STACKS: &str = "STACKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const EVENTS: &str = "EVENTS";
    pub const TARGETS: &str = "TARGETS";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const SYSCALLS: &str = "SYSCALLS";
    pub const GO_BEFORE_ATTACH: &str = "GO_BEFORE_ATTACH";
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
    pub const UNWIND_PAGES: &str = "UNWIND_PAGES";
    pub const MAPPINGS: &str = "MAPPINGS";
    pub const PAUSE: &str = "PAUSE";
    pub const FORKED: &str = "FORKED";
    pub const EXITING: &str = "EXITING";
    pub const LIVE_BLOCKS: &str = "LIVE_BLOCKS";
}

pub mod args;
pub mod unwind;

/// What a site holds on to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SiteKind {
    Heap = 0,
    Mmap = 1,
    /// Go's sampled heap: `SiteKey::extra` holds the object size (its profile bucket's).
    GoHeap = 2,
}

/// A stack in the kernel's `STACKS` map: the 64-bit hash of its return
/// addresses (top bit clear, never zero).
pub type StackId = u64;

/// `StackId` when the kernel could not record the stack (stack map full, or
/// the unwinder busy; counted in [`Counter::StackLost`]).
pub const NO_STACK: StackId = 0;

/// One call site: the process, the stack, and what is held there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    pub tgid: u32,
    pub kind: u32,
    pub stack_id: StackId,
    /// Go heap sites: the sampled objects' size, so userspace can scale each
    /// size class like pprof does. Zero otherwise.
    pub extra: u32,
    pub _pad: u32,
}

/// Per-site totals, updated atomically by the probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteStats {
    /// Bytes allocated and not yet freed.
    pub live_bytes: i64,
    /// Allocations not yet freed.
    pub live_count: i64,
    /// Bytes ever allocated at this site while traced.
    pub total_bytes: u64,
    /// Allocations ever made at this site while traced.
    pub total_count: u64,
}

/// Key of one outstanding heap allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// One outstanding heap allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocInfo {
    pub size: u64,
    /// `bpf_ktime_get_ns()` at allocation (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub site: SiteKey,
}

/// Which allocator entry point a thread is inside.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocFn {
    /// malloc, valloc, pvalloc: `(size)`.
    Malloc = 0,
    /// calloc: `(n, size)`.
    Calloc = 1,
    /// realloc: `(ptr, size)`; reallocarray: `(ptr, n, size)`.
    Realloc = 2,
    /// memalign, aligned_alloc: `(align, size)`.
    Memalign = 3,
    /// posix_memalign: `(void **out, align, size)`, returns 0 on success.
    PosixMemalign = 4,
}

/// Per-thread state between an allocator's entry and its return.
///
/// `depth` counts nested allocator calls (glibc's realloc calls malloc and free
/// internally); only the outermost call is accounted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    pub depth: u32,
    pub func: u32,
    pub size: u64,
    /// realloc's old pointer, posix_memalign's out-pointer.
    pub ptr: u64,
    /// User stack pointer at the outermost entry: nested calls run below it.
    /// It is also where the return address sits, which the pending uretprobe
    /// replaced with its trampoline.
    pub sp: u64,
    /// The real return address of the outermost call, read at entry.
    pub ret: u64,
}

/// Indexes of the per-CPU `COUNTERS` array: everything that was not accounted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An allocation could not be recorded: `ALLOCS` was full.
    AllocsFull = 0,
    /// A new site could not be recorded: `SITES` was full.
    SitesFull = 1,
    /// A stack could not be recorded (stack map full, or the unwinder busy on
    /// this CPU); the site is "unknown stack".
    StackLost = 2,
    /// An event could not be sent: the ring buffer was full.
    EventsLost = 3,
    /// A syscall's arguments could not be kept between entry and exit.
    SyscallsFull = 4,
    /// Heap allocations recorded.
    Allocs = 5,
    /// Frees of recorded allocations.
    Frees = 6,
    /// User stacks walked.
    StackWalks = 7,
    /// Frames recorded by those walks.
    StackFrames = 8,
    /// A process a target forked could not become a target: `TARGETS` was full.
    UnfollowedForks = 9,
    /// First of one slot per [`unwind::StackEnd`]: why each walk ended.
    StackEnds = 10,
}

pub const COUNTER_SLOTS: u32 = Counter::StackEnds as u32 + unwind::STACK_END_KINDS;

/// Kind tag leading every ring-buffer event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Mmap = 1,
    Munmap = 2,
    Mremap = 3,
    /// [`FdOpen`]: descriptors created.
    FdOpen = 4,
    /// [`FdClose`]: descriptors `first..=last` closed.
    FdClose = 5,
    /// [`ProcEvent`]: an `execve` succeeded: a new image, close-on-exec
    /// descriptors gone.
    Exec = 6,
    /// [`ProcEvent`]: a target made a new process (`child`), now a target too.
    Fork = 7,
    /// [`GoroutineEvent`]: a Go target started a goroutine.
    GoroutineNew = 8,
    /// [`GoroutineEvent`]: a goroutine exited (only `g` is set).
    GoroutineExit = 9,
    /// [`ProcEvent`]: an exec'd image reached its entry point (the loader has
    /// mapped its libraries).
    Entry = 10,
    /// [`ExitEvent`]: a target called the C library's `_exit`: its heap is
    /// still whole.
    Exit = 11,
}

/// Slots of the `PAUSE` array: what makes a target stop itself for userspace.
pub mod pause {
    /// New processes and images stop until their probes are attached.
    pub const NEW: u32 = 0;
    /// A process calling `_exit` stops until its heap is scanned.
    pub const EXIT: u32 = 1;
    pub const SLOTS: u32 = 2;
}

/// A target is exiting (`_exit`): its heap and the registers of the thread
/// exiting, the only ones readable without ptrace.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub tid: u32,
    /// 1: the process stopped itself (SIGSTOP) until userspace continues it.
    pub paused: u32,
    /// The exiting thread's general-purpose registers (rax…r15, rsp among them).
    pub regs: [u64; EXIT_REGS],
}

/// Registers an [`ExitEvent`] carries.
pub const EXIT_REGS: usize = 16;

/// A goroutine started or ended. Goroutines are told apart by their `g` (the
/// runtime reuses a `g` only after its goroutine has exited).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoroutineEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    /// Address of the goroutine's `runtime.g`.
    pub g: u64,
    /// Stack at `runtime.newproc`, in the creating goroutine.
    pub stack_id: StackId,
    /// Return address into the function holding the `go` statement: the stack
    /// walk at newproc's entry cannot see it.
    pub caller: u64,
    /// Entry of the function the goroutine runs.
    pub start_pc: u64,
    /// The creating goroutine's `runtime.g`.
    pub parent: u64,
}

/// A target forked (`child` is traced from its first instruction) or exec'd
/// (`child` is 0), sent by the process that is new: the child at its first
/// return to user space, the new image at exec's return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub child: u32,
    /// 1: the process stopped itself (SIGSTOP) until userspace continues it.
    pub paused: u32,
}

/// Bit in the `FAMILIES` global: which syscall families the tracepoints follow.
pub const FAMILY_MMAP: u32 = 1;
pub const FAMILY_FDS: u32 = 2;
/// Follow fork/clone into new processes (they become targets in the kernel).
pub const FAMILY_FORKS: u32 = 4;
/// Name of the eBPF global userspace sets before loading.
pub const FAMILIES_GLOBAL: &str = "FAMILIES";
/// Name of the eBPF global holding `offsetof(struct task_struct, tgid)` in the
/// running kernel (0: unknown, from no BTF).
pub const TASK_TGID_GLOBAL: &str = "TASK_TGID";

/// Bytes of a path or name copied with an open (NUL-terminated).
pub const FD_PATH_LEN: usize = 256;

/// One or two descriptors created by syscall `nr` (pipe and socketpair make two).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdOpen {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub nr: u32,
    pub fd: i32,
    /// The second descriptor of a pair, or -1.
    pub fd2: i32,
    pub _pad: u32,
    pub stack_id: StackId,
    /// The syscall's first three arguments (dirfd, socket family and type, old fd…).
    pub args: [u64; 3],
    /// R14 at the syscall: in Go code, the calling goroutine's `runtime.g`.
    pub g: u64,
    /// The path (open family) or name (memfd_create), NUL-terminated.
    pub path: [u8; FD_PATH_LEN],
}

/// Descriptors `first..=last` were closed (close, close_range).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FdClose {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub first: u32,
    pub last: u32,
}

/// An anonymous mapping was created, removed or moved by the target.
///
/// For `Mmap`: `addr`/`len` is the new mapping. For `Munmap`: the range removed.
/// For `Mremap`: `old_addr`/`old_len` moved to `addr`/`len`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MapEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    pub addr: u64,
    pub len: u64,
    pub old_addr: u64,
    pub old_len: u64,
    pub stack_id: StackId,
}

/// Syscall arguments kept between `sys_enter` and `sys_exit`, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SyscallArgs {
    pub nr: u64,
    pub args: [u64; 6],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are plain `#[repr(C)]` integers with explicit padding.
    unsafe impl aya::Pod for SiteKey {}
    unsafe impl aya::Pod for SiteStats {}
    unsafe impl aya::Pod for AllocKey {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for crate::unwind::UnwindRow {}
    unsafe impl aya::Pod for crate::unwind::PageIndex {}
    unsafe impl aya::Pod for crate::unwind::ProcMappings {}
    unsafe impl aya::Pod for crate::unwind::StackTrace {}
}

// The layouts both sides rely on.
const _: () = {
    assert!(size_of::<SiteKey>() == 24);
    assert!(size_of::<AllocInfo>() == 40);
    assert!(size_of::<Inflight>() == 40);
    assert!(size_of::<FdOpen>() == 72 + FD_PATH_LEN);
    assert!(size_of::<MapEvent>() == 56);
    assert!(size_of::<GoroutineEvent>() == 56);
    assert!(size_of::<ExitEvent>() == 24 + 8 * EXIT_REGS);
    assert!(size_of::<unwind::UnwindRow>() == 8);
    assert!(size_of::<unwind::Mapping>() == 40);
    assert!(size_of::<unwind::StackTrace>() == 8 + 8 * unwind::MAX_FRAMES);
};
