//! What the eBPF programs and userspace share, defined once: the `#[repr(C)]`
//! types, the ring-buffer event tags ([`EventKind`], [`EventHeader`]), the
//! syscall numbers ([`syscalls`]) and the names userspace finds programs, maps
//! and globals by ([`programs`], [`maps`], [`globals`]).
//!
//! Every type here crosses the kernel/user boundary byte for byte: keep fields
//! naturally aligned, padding explicit, and layouts identical on both sides (the
//! sizes are asserted at the end of this file).
#![no_std]

/// Name of every map userspace opens: the name of its `static` in
/// leaktrace-ebpf (`#[map] pub static ALLOCS`). leaktrace's unit tests find
/// each in the compiled object.
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
    pub const GO_LAYOUT: &str = "GO_LAYOUT";
    pub const GO_CREATORS: &str = "GO_CREATORS";

    /// Every name above.
    pub const ALL: [&str; 18] = [
        ALLOCS,
        SITES,
        STACKS,
        COUNTERS,
        EVENTS,
        TARGETS,
        INFLIGHT,
        SYSCALLS,
        GO_BEFORE_ATTACH,
        UNWIND_ROWS,
        UNWIND_PAGES,
        MAPPINGS,
        PAUSE,
        FORKED,
        EXITING,
        LIVE_BLOCKS,
        GO_LAYOUT,
        GO_CREATORS,
    ];
}

/// Name of every eBPF program userspace loads: the name of its function in
/// leaktrace-ebpf (`#[uprobe] pub fn image_exit` is "image_exit"). The eBPF
/// macros take the function's name, not a constant: leaktrace's unit tests
/// check every name here against the compiled object, both ways.
pub mod programs {
    // Allocator uprobes (leaktrace-ebpf/src/alloc.rs).
    pub const MALLOC_ENTER: &str = "malloc_enter";
    pub const CALLOC_ENTER: &str = "calloc_enter";
    pub const REALLOC_ENTER: &str = "realloc_enter";
    pub const REALLOCARRAY_ENTER: &str = "reallocarray_enter";
    pub const MEMALIGN_ENTER: &str = "memalign_enter";
    pub const POSIX_MEMALIGN_ENTER: &str = "posix_memalign_enter";
    pub const FREE_ENTER: &str = "free_enter";
    /// The one return probe, shared by every allocating function.
    pub const ALLOC_RETURN: &str = "alloc_return";

    // A target's `_exit` (exit.rs) and a new image's entry point (fork.rs).
    pub const IMAGE_EXIT: &str = "image_exit";
    pub const IMAGE_ENTRY: &str = "image_entry";

    // Tracepoints: sys_enter/sys_exit on each followed call's syscalls:sys_{enter,exit}_NAME
    // (syscalls.rs), sched_process_fork raw (fork.rs).
    pub const SYS_ENTER: &str = "sys_enter";
    pub const SYS_EXIT: &str = "sys_exit";
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";

    // The Go runtime (go.rs): its sampled heap…
    pub const GO_MPROF_MALLOC: &str = "go_mprof_malloc";
    pub const GO_SET_PROFILE_BUCKET: &str = "go_set_profile_bucket";
    pub const GO_FREE_SPECIAL: &str = "go_free_special";
    pub const GO_MPROF_FREE: &str = "go_mprof_free";
    // …and its goroutines.
    pub const GO_NEWPROC_QUEUED: &str = "go_newproc_queued";
    pub const GO_NEWPROC1_RET: &str = "go_newproc1_ret";

    /// The Go programs that follow goroutines; the other Go ones follow the heap.
    pub const GOROUTINE: [&str; 2] = [GO_NEWPROC_QUEUED, GO_NEWPROC1_RET];

    /// Every program in the object.
    pub const ALL: [&str; 19] = [
        MALLOC_ENTER,
        CALLOC_ENTER,
        REALLOC_ENTER,
        REALLOCARRAY_ENTER,
        MEMALIGN_ENTER,
        POSIX_MEMALIGN_ENTER,
        FREE_ENTER,
        ALLOC_RETURN,
        IMAGE_EXIT,
        IMAGE_ENTRY,
        SYS_ENTER,
        SYS_EXIT,
        SCHED_PROCESS_FORK,
        GO_MPROF_MALLOC,
        GO_SET_PROFILE_BUCKET,
        GO_FREE_SPECIAL,
        GO_MPROF_FREE,
        GO_NEWPROC_QUEUED,
        GO_NEWPROC1_RET,
    ];
}

/// Name of every eBPF global userspace sets before loading (a `#[no_mangle]
/// static` in leaktrace-ebpf, named as here).
pub mod globals {
    /// `u32`: which syscall families the tracepoints follow ([`FAMILY_MMAP`](crate::FAMILY_MMAP)…).
    pub const FAMILIES: &str = "FAMILIES";
    /// `u32`: `offsetof(struct task_struct, tgid)` in the running kernel (0:
    /// unknown, from no BTF).
    pub const TASK_TGID: &str = "TASK_TGID";
    /// `u32`: frames a stack walk follows at most (`--max-depth`).
    pub const MAX_DEPTH: &str = "MAX_DEPTH";

    pub const ALL: [&str; 3] = [FAMILIES, TASK_TGID, MAX_DEPTH];
}

pub mod args;
pub mod syscalls;
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

/// Kind tag leading every ring-buffer event (the `kind` of its [`EventHeader`]).
/// A new kind goes into [`EventKind::from_raw`] and [`EventKind::event_size`] too.
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
    /// [`GoroutineEvent`]: a Go target started a goroutine (userspace finds
    /// its end in the runtime's memory: no probe on the way out).
    GoroutineNew = 8,
    /// [`ProcEvent`]: an exec'd image reached its entry point (the loader has
    /// mapped its libraries).
    Entry = 10,
    /// [`ExitEvent`]: a target called the C library's `_exit`: its heap is
    /// still whole.
    Exit = 11,
    /// [`ThreadEvent`]: a target made a thread.
    ThreadNew = 12,
    /// [`ThreadEvent`]: one of a target's threads ended (only `tid` is set).
    ThreadExit = 13,
}

impl EventKind {
    /// The kind a ring-buffer event's tag names; `None` for a tag no event has.
    pub const fn from_raw(tag: u32) -> Option<EventKind> {
        Some(match tag {
            1 => EventKind::Mmap,
            2 => EventKind::Munmap,
            3 => EventKind::Mremap,
            4 => EventKind::FdOpen,
            5 => EventKind::FdClose,
            6 => EventKind::Exec,
            7 => EventKind::Fork,
            8 => EventKind::GoroutineNew,
            10 => EventKind::Entry,
            11 => EventKind::Exit,
            12 => EventKind::ThreadNew,
            13 => EventKind::ThreadExit,
            _ => return None,
        })
    }

    /// Bytes of the event this kind tags: the size of its struct.
    pub const fn event_size(self) -> usize {
        match self {
            EventKind::Mmap | EventKind::Munmap | EventKind::Mremap => size_of::<MapEvent>(),
            EventKind::FdOpen => size_of::<FdOpen>(),
            EventKind::FdClose => size_of::<FdClose>(),
            EventKind::Exec | EventKind::Fork | EventKind::Entry => size_of::<ProcEvent>(),
            EventKind::GoroutineNew => size_of::<GoroutineEvent>(),
            EventKind::Exit => size_of::<ExitEvent>(),
            EventKind::ThreadNew | EventKind::ThreadExit => size_of::<ThreadEvent>(),
        }
    }
}

impl TryFrom<u32> for EventKind {
    /// The tag itself, which no event has.
    type Error = u32;

    fn try_from(tag: u32) -> Result<Self, u32> {
        EventKind::from_raw(tag).ok_or(tag)
    }
}

/// What every ring-buffer event starts with: each event struct's first three
/// fields are these, at these offsets (asserted below).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`], as `u32`.
    pub kind: u32,
    /// The process the event is about (a fork's parent).
    pub tgid: u32,
    /// `bpf_ktime_get_ns()` when it was sent (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

impl EventHeader {
    /// The header at the start of a ring-buffer record; `None` when it is shorter.
    pub fn read(record: &[u8]) -> Option<EventHeader> {
        let word = |at: usize| record.get(at..at + 4)?.try_into().ok();
        let kind = u32::from_ne_bytes(word(0)?);
        let tgid = u32::from_ne_bytes(word(4)?);
        let ts_ns = u64::from_ne_bytes(record.get(8..16)?.try_into().ok()?);
        Some(EventHeader { kind, tgid, ts_ns })
    }

    /// The event's kind; `None` for a tag no event has.
    pub const fn kind(&self) -> Option<EventKind> {
        EventKind::from_raw(self.kind)
    }
}

/// The header fields of an event struct, typed.
macro_rules! event_header {
    ($($event:ty),*) => {$(
        impl $event {
            /// This event's kind; `None` for a tag no event has.
            pub const fn event_kind(&self) -> Option<EventKind> {
                EventKind::from_raw(self.kind)
            }

            /// This event's header fields.
            pub const fn header(&self) -> EventHeader {
                EventHeader {
                    kind: self.kind,
                    tgid: self.tgid,
                    ts_ns: self.ts_ns,
                }
            }
        }

        const _: () = {
            assert!(core::mem::offset_of!($event, kind) == core::mem::offset_of!(EventHeader, kind));
            assert!(core::mem::offset_of!($event, tgid) == core::mem::offset_of!(EventHeader, tgid));
            assert!(core::mem::offset_of!($event, ts_ns) == core::mem::offset_of!(EventHeader, ts_ns));
        };
    )*};
}

event_header!(
    MapEvent,
    FdOpen,
    FdClose,
    ProcEvent,
    GoroutineEvent,
    ExitEvent,
    ThreadEvent
);

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
    /// Address of the goroutine's `runtime.g`, and its id (`g.goid`).
    pub g: u64,
    pub goid: u64,
    /// Stack where newproc queues it: on the thread's system stack, through
    /// `systemstack` into the creating goroutine's frames.
    pub stack_id: StackId,
    /// `g.gopc`: return address into the function holding the `go` statement.
    pub caller: u64,
    /// `g.startpc`: entry of the function the goroutine runs.
    pub start_pc: u64,
    /// `g.parentGoid`: the creating goroutine's id.
    pub parent_goid: u64,
}

/// Where a Go target's runtime keeps, in a `runtime.g`, the goroutine's id
/// and its `go` statement (`gopc`); `parentGoid` is the word before `gopc`
/// and `startpc` two after it in Go 1.21–1.27. Set per target by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoLayout {
    pub goid: u32,
    pub gopc: u32,
}

/// Goroutines a `go` statement may announce each second, each with its
/// creation stack; past that, one in [`GO_SAMPLE`]. Userspace finds the
/// others in the runtime's list of goroutines.
pub const GO_EXACT_PER_SECOND: u64 = 1000;
/// One goroutine in this many of a busy `go` statement is announced.
pub const GO_SAMPLE: u64 = 64;

/// Goroutines made at one `go` statement of one process (`GO_CREATORS`, keyed
/// by [`AllocKey`] with the statement's `gopc`): all of them, and those made
/// in the current second (of the kernel's clock, in 2^30 ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCreator {
    pub made: u64,
    pub second: u64,
    pub in_second: u64,
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

/// Bit in the [`globals::FAMILIES`] global: which syscall families the tracepoints follow.
pub const FAMILY_MMAP: u32 = 1;
pub const FAMILY_FDS: u32 = 2;
/// Follow fork/clone into new processes (they become targets in the kernel).
pub const FAMILY_FORKS: u32 = 4;
/// Threads made (clone with `CLONE_THREAD`) and ended (`exit`).
pub const FAMILY_THREADS: u32 = 8;

/// A target made a thread (`ThreadNew`, with the stack that made it) or one
/// of its threads ended (`ThreadExit`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadEvent {
    pub kind: u32,
    pub tgid: u32,
    pub ts_ns: u64,
    /// The thread's id.
    pub tid: u32,
    pub _pad: u32,
    /// Stack at the `clone` that made it (ThreadNew only).
    pub stack_id: StackId,
}

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
    /// A [`syscalls`] number.
    pub nr: u32,
    pub _pad: u32,
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
    unsafe impl aya::Pod for crate::GoLayout {}
    unsafe impl aya::Pod for crate::GoCreator {}
    unsafe impl aya::Pod for crate::unwind::UnwindRow {}
    unsafe impl aya::Pod for crate::unwind::PageIndex {}
    unsafe impl aya::Pod for crate::unwind::ProcMappings {}
    unsafe impl aya::Pod for crate::unwind::StackTrace {}
}

// The layouts both sides rely on: sizes as they are, and the alignment of
// those holding a u64 (the eBPF side has the same).
const _: () = {
    assert!(size_of::<SiteKey>() == 24);
    assert!(size_of::<SiteStats>() == 32);
    assert!(size_of::<AllocKey>() == 16);
    assert!(size_of::<AllocInfo>() == 40);
    assert!(size_of::<Inflight>() == 40);
    assert!(size_of::<EventHeader>() == 16);
    assert!(size_of::<ExitEvent>() == 24 + 8 * EXIT_REGS);
    assert!(size_of::<GoroutineEvent>() == 64);
    assert!(size_of::<GoLayout>() == 8);
    assert!(size_of::<GoCreator>() == 24);
    assert!(size_of::<ProcEvent>() == 24);
    assert!(size_of::<FdOpen>() == 72 + FD_PATH_LEN);
    assert!(size_of::<FdClose>() == 24);
    assert!(size_of::<MapEvent>() == 56);
    assert!(size_of::<ThreadEvent>() == 32);
    assert!(size_of::<SyscallArgs>() == 56);
    assert!(size_of::<unwind::UnwindRow>() == 8);
    assert!(size_of::<unwind::PageIndex>() == 8);
    assert!(size_of::<unwind::Mapping>() == 40);
    assert!(size_of::<unwind::ProcMappings>() == 8 + 40 * unwind::MAX_MAPPINGS);
    assert!(size_of::<unwind::StackTrace>() == 8 + 8 * unwind::MAX_FRAMES);

    assert!(align_of::<SiteKey>() == 8);
    assert!(align_of::<SiteStats>() == 8);
    assert!(align_of::<AllocKey>() == 8);
    assert!(align_of::<AllocInfo>() == 8);
    assert!(align_of::<Inflight>() == 8);
    assert!(align_of::<EventHeader>() == 8);
    assert!(align_of::<ExitEvent>() == 8);
    assert!(align_of::<GoroutineEvent>() == 8);
    assert!(align_of::<ProcEvent>() == 8);
    assert!(align_of::<FdOpen>() == 8);
    assert!(align_of::<FdClose>() == 8);
    assert!(align_of::<MapEvent>() == 8);
    assert!(align_of::<ThreadEvent>() == 8);
    assert!(align_of::<SyscallArgs>() == 8);
    assert!(align_of::<unwind::UnwindRow>() == 4);
    assert!(align_of::<unwind::PageIndex>() == 4);
    assert!(align_of::<unwind::Mapping>() == 8);
    assert!(align_of::<unwind::ProcMappings>() == 8);
    assert!(align_of::<unwind::StackTrace>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_round_trips_through_its_tag() {
        let mut kinds = 0;
        for tag in 0..64 {
            if let Some(kind) = EventKind::from_raw(tag) {
                assert_eq!(kind as u32, tag);
                assert_eq!(EventKind::try_from(tag), Ok(kind));
                kinds += 1;
            } else {
                assert_eq!(EventKind::try_from(tag), Err(tag));
            }
        }
        assert_eq!(kinds, 13);
    }

    #[test]
    fn a_header_reads_from_the_start_of_a_record() {
        let event = ProcEvent {
            kind: EventKind::Fork as u32,
            tgid: 42,
            ts_ns: 1234,
            child: 43,
            paused: 1,
        };
        // SAFETY: a #[repr(C)] struct of integers without padding, as bytes.
        let bytes: [u8; size_of::<ProcEvent>()] = unsafe { core::mem::transmute(event) };
        let header = EventHeader::read(&bytes).unwrap();
        assert_eq!(header, event.header());
        assert_eq!(header.kind(), Some(EventKind::Fork));
        assert_eq!(event.event_kind(), Some(EventKind::Fork));
        assert_eq!(EventKind::Fork.event_size(), bytes.len());
        assert_eq!(EventHeader::read(&bytes[..15]), None);
    }
}
