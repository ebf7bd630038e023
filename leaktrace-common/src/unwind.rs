//! Unwinding user stacks in the kernel from tables built out of each module's
//! `.eh_frame` (or `.debug_frame`): the rows, their page index, the executable
//! mappings of each process, and the stacks the walk produces.
//!
//! Userspace builds one table per file (shared by every process mapping it) and
//! appends it to `UNWIND_ROWS`/`UNWIND_PAGES`; each target's executable mappings
//! say where their module's table starts. The eBPF walk (leaktrace-ebpf's
//! `unwind` module) follows one row per frame.

/// Frames a stack holds at most (the walk's limit is set at load, ≤ this − 1).
pub const MAX_FRAMES: usize = 128;
/// The walk's default depth limit (`--max-depth`).
pub const DEFAULT_DEPTH: u32 = 64;
/// Executable mappings kept per process (sorted by start).
pub const MAX_MAPPINGS: usize = 128;
/// Pages of code indexed per entry of `UNWIND_PAGES`.
pub const PAGE_SHIFT: u32 = 12;
/// Binary-search steps among one page's rows: enough for 8,192 rows a page.
pub const ROW_SEARCH_STEPS: u32 = 13;
/// Binary-search steps among a process's mappings.
pub const MAPPING_SEARCH_STEPS: u32 = 7;
/// Bytes of user stack copied once per walk; reads inside it cost nothing.
pub const STACK_WINDOW: usize = 4096;

/// How a row computes the caller's frame.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// CFA = rsp + `cfa_off`.
    Rsp = 0,
    /// CFA = rbp + `cfa_off`.
    Rbp = 1,
    /// GCC's PLT entries: CFA = rsp + 8, +8 more past the entry's push.
    Plt = 2,
    /// The outermost frame (`_start`, a thread's start): the stack is complete.
    Stop = 3,
    /// A rule the walk cannot follow (a CFA expression, the return address not
    /// at CFA − 8).
    Unsupported = 4,
    /// No unwind info covers this code: follow the frame pointer (rbp chain).
    FramePointer = 5,
    /// A signal trampoline (`__restore_rt`): the interrupted registers are in
    /// the `ucontext` on the stack.
    Signal = 6,
}

/// `rbp_off` when rbp keeps its value in this frame.
pub const RBP_SAME: i8 = 0;

/// One unwind rule, valid from `pc` (ELF virtual address) to the next row's pc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u32,
    /// CFA offset from the register `kind` names.
    pub cfa_off: i16,
    /// Where the caller's rbp was saved, in 8-byte words from the CFA, or [`RBP_SAME`].
    pub rbp_off: i8,
    /// A [`RowKind`].
    pub kind: u8,
}

/// The rows covering one 4 KiB page of a module: `UNWIND_ROWS[lo..hi)`, with
/// `UNWIND_ROWS[lo].pc` at or before the page's start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageIndex {
    pub lo: u32,
    pub hi: u32,
}

/// One executable mapping of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Address − bias = the module's ELF virtual address.
    pub bias: u64,
    /// The module's first page in `UNWIND_PAGES`.
    pub page_base: u32,
    /// The first page (ELF virtual address >> [`PAGE_SHIFT`]) its table covers.
    pub first_page: u32,
    /// Pages its table covers; 0: no table, frame pointers only.
    pub n_pages: u32,
    /// [`MAPPING_NO_TABLE`] or 0.
    pub flags: u32,
}

/// The module has unwind info, but its table could not be loaded (the table
/// maps are full): a walk that reaches it ends with [`StackEnd::NoTable`].
pub const MAPPING_NO_TABLE: u32 = 1;

/// The executable mappings of a process, sorted by start.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcMappings {
    pub n: u32,
    pub _pad: u32,
    pub entries: [Mapping; MAX_MAPPINGS],
}

/// Why a walk ended (a slot each in the counters from `Counter::StackEnds`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackEnd {
    /// The outermost frame: the stack is whole.
    Complete = 0,
    /// The depth limit (`--max-depth`).
    Depth = 1,
    /// A return address in no executable mapping the unwinder knows (code
    /// mapped since the last refresh, JIT code, or a stack it cannot follow).
    NoMapping = 2,
    /// A rule the walk cannot follow.
    Unsupported = 3,
    /// Stack memory that could not be read.
    Unreadable = 4,
    /// The frame address did not move up the stack.
    NotAdvancing = 5,
    /// The module's unwind table is not loaded (the table maps were full).
    NoTable = 6,
}

pub const STACK_END_KINDS: u32 = 7;

impl StackEnd {
    pub const ALL: [StackEnd; STACK_END_KINDS as usize] = [
        StackEnd::Complete,
        StackEnd::Depth,
        StackEnd::NoMapping,
        StackEnd::Unsupported,
        StackEnd::Unreadable,
        StackEnd::NotAdvancing,
        StackEnd::NoTable,
    ];
}

/// One stack in the kernel's `STACKS` map: return addresses innermost first
/// (the first is the probed instruction itself).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackTrace {
    pub len: u32,
    /// A [`StackEnd`].
    pub end: u32,
    pub pcs: [u64; MAX_FRAMES],
}
