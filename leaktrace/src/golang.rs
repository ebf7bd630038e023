//! Go targets: what leaktrace reads from a Go binary to probe its runtime.
//!
//! Runtime functions are found in `.gopclntab`, the table the runtime itself
//! symbolizes with: it survives `-ldflags="-s -w"`, so stripped and unstripped
//! binaries take the same path. The same table names Go frames when the binary
//! has no other symbols. `runtime.MemProfileRate` is a variable, not in the
//! table: it needs `.symtab`.
use std::{ops::Range, os::unix::fs::FileExt};

use leaktrace_common::{GoLayout, programs};

use crate::{
    allocator::{ExitPoint, ProbePoint},
    elf::ElfImage,
    placement,
    procmaps::ProcMaps,
};

#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error(
        "{path} is a Go binary but its runtime lacks {function}: Go 1.21 to 1.27 are supported"
    )]
    MissingFunction {
        path: String,
        function: &'static str,
    },
    #[error("cannot read the Go runtime's state in PID {pid}: {source}")]
    Memory {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0}: the runtime's variables are not found: no symbol table (stripped), and its \
         code does not read them as Go 1.21–1.27 do"
    )]
    NoSymbol(String),
    #[error("goroutines of {0} cannot be read: leaktrace knows the runtime of Go 1.21 to 1.27")]
    UnknownLayout(String),
}

/// A bucket of the runtime's heap profile with sampled objects in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapBucket {
    /// Address of the `runtime.bucket`: what `mProf_Free` is given.
    pub addr: u64,
    /// Size of its objects.
    pub size: u64,
    /// Return addresses of the allocating stack, innermost first.
    pub stack: Vec<u64>,
    /// Sampled objects allocated and not yet freed.
    pub in_use: u64,
}

/// `bucketType` of memory-profile buckets.
const MEM_PROFILE: u64 = 1;
/// Buckets read at most, and frames per bucket (the runtime keeps fewer).
const MAX_BUCKETS: usize = 1 << 16;
const MAX_BUCKET_FRAMES: u64 = 1024;
/// Bytes of `runtime.bucket`'s header; its stack follows, then its memRecord.
const BUCKET_HEADER: u64 = 48;
/// A memRecord holds the active cycle and three future ones.
const MEM_RECORD_CYCLES: usize = 4;

/// Sampled objects in use per cycle of a memRecord: each cycle is `{allocs,
/// frees}` (recent Go) or `{allocs, frees, alloc_bytes, free_bytes}` (Go 1.21).
/// Told apart by the values: in the long form the bytes are the counts times
/// the bucket's size. `None` while no cycle allocated anything.
fn cycle_words(record: &[u64], size: u64) -> Option<usize> {
    let (allocs, frees) = (record[0], record[1]);
    (allocs > 0).then(|| {
        if record[2] == allocs.wrapping_mul(size) && record[3] == frees.wrapping_mul(size) {
            4
        } else {
            2
        }
    })
}

/// A goroutine found alive in `runtime.allgs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveGoroutine {
    pub g: u64,
    pub goid: u64,
    /// Return address of the `go` statement that started it.
    pub gopc: u64,
    /// The id of the goroutine that started it (0: the runtime).
    pub parent_goid: u64,
    /// Entry of the function it runs.
    pub start_pc: u64,
    /// `atomicstatus` without the "being scanned" bit.
    pub status: u32,
    /// Where it was last switched out (`g.sched`: pc and frame pointer).
    pub sched_pc: u64,
    pub sched_bp: u64,
}

/// Bytes per page.
const PAGE: u64 = 4096;

/// `len` bytes at each of a set of addresses of a process, read one page at a
/// time: the runtime allocates `g`s side by side, and each read pins its
/// pages, so one read per `g` would cost a page's pinning per `g`.
struct GsRead {
    /// What was read: (address, bytes), by address.
    chunks: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl GsRead {
    fn of(pid: u32, at: impl Iterator<Item = u64>, len: u64) -> Self {
        let mut at: Vec<u64> = at.filter(|a| a.checked_add(len).is_some()).collect();
        at.sort_unstable();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for a in at {
            match ranges.last_mut() {
                Some(r) if a / PAGE == r.start / PAGE && a + len <= (a / PAGE + 1) * PAGE => {
                    r.end = r.end.max(a + len);
                }
                _ => ranges.push(a..a + len),
            }
        }
        let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
        crate::reach::process::read_ranges(pid, &ranges, &mut |at, bytes| {
            chunks.push((at, bytes.to_vec()));
        });
        chunks.sort_unstable_by_key(|c| c.0);
        Self { chunks, len }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The `len` bytes at `at`, if they were read.
    fn at(&self, at: u64) -> Option<&[u8]> {
        let i = self.chunks.partition_point(|c| c.0 <= at).checked_sub(1)?;
        let (start, bytes) = &self.chunks[i];
        let off = usize::try_from(at - start).ok()?;
        bytes.get(off..off.checked_add(usize::try_from(self.len).ok()?)?)
    }
}

/// `atomicstatus` values (runtime2.go).
pub const G_RUNNABLE: u32 = 1;
pub const G_RUNNING: u32 = 2;
pub const G_SYSCALL: u32 = 3;
pub const G_WAITING: u32 = 4;

/// Frames of a parked goroutine's stack read at most.
const MAX_PARKED_FRAMES: usize = 32;

/// `g.sched`'s offset in `runtime.g`, the same in every release 1.21–1.27
/// (assembly depends on it), and `gobuf.pc` in it.
const G_SCHED: u64 = 56;
const GOBUF_PC: u64 = 8;

/// `gobuf.bp` in the releases it was read from (the DWARF of a binary each
/// builds: 1.21 has `gobuf.ret` before it, 1.27 not); another release's is
/// read from the binary's own DWARF.
fn gobuf_bp_of(version: &str) -> Option<u64> {
    match version.strip_prefix("go1.")?.split('.').next()? {
        "21" => Some(48),
        "27" => Some(40),
        _ => None,
    }
}

/// The offset of member `member` of struct `name` in the binary's DWARF (Go
/// binaries that are not stripped keep it, compressed).
fn dwarf_member(image: &ElfImage, name: &str, member: &str) -> Option<u64> {
    use gimli::{AttributeValue, EndianSlice, LittleEndian};
    let info = image.uncompressed_section(".debug_info")?;
    let abbrev = image.uncompressed_section(".debug_abbrev")?;
    let str_ = image.uncompressed_section(".debug_str").unwrap_or_default();
    // A unit's line program header is read with the unit.
    let line = image
        .uncompressed_section(".debug_line")
        .unwrap_or_default();
    let dwarf = gimli::Dwarf {
        debug_info: gimli::DebugInfo::new(&info, LittleEndian),
        debug_abbrev: gimli::DebugAbbrev::new(&abbrev, LittleEndian),
        debug_str: gimli::DebugStr::new(&str_, LittleEndian),
        debug_line: gimli::DebugLine::new(&line, LittleEndian),
        ..Default::default()
    };
    let named = |unit: &gimli::Unit<EndianSlice<LittleEndian>>,
                 entry: &gimli::DebuggingInformationEntry<EndianSlice<LittleEndian>>,
                 wanted: &str| {
        entry
            .attr_value(gimli::DW_AT_name)
            .and_then(|v| dwarf.attr_string(unit, v).ok())
            .is_some_and(|n| n.slice() == wanted.as_bytes())
    };
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        // The depth of the struct wanted, while in it.
        let mut within: Option<isize> = None;
        while let Ok(Some(entry)) = entries.next_dfs() {
            let depth = entry.depth();
            if within.is_some_and(|d| depth <= d) {
                within = None;
            }
            if entry.tag() == gimli::DW_TAG_structure_type && named(&unit, entry, name) {
                within = Some(depth);
            } else if within == Some(depth - 1)
                && entry.tag() == gimli::DW_TAG_member
                && named(&unit, entry, member)
            {
                return match entry.attr_value(gimli::DW_AT_data_member_location)? {
                    AttributeValue::Udata(at) => Some(at),
                    AttributeValue::Data1(at) => Some(at.into()),
                    AttributeValue::Data2(at) => Some(at.into()),
                    AttributeValue::Data4(at) => Some(at.into()),
                    AttributeValue::Sdata(at) => u64::try_from(at).ok(),
                    _ => None,
                };
            }
        }
    }
    None
}

/// The runtime's variables leaktrace reads, found without a symbol table
/// (stripped binaries) in the code of runtime functions that read them: the
/// first global each loads, in every release 1.21–1.27 (checked against the
/// symbols of unstripped builds in the tests).
#[derive(Debug, Default, PartialEq, Eq)]
struct Variables {
    /// `allocmcache` reads `MemProfileRate` for the new cache's first sample.
    rate: Option<u64>,
    /// `forEachG` reads the `allgs` slice: its pointer, then its length.
    allgs: Option<u64>,
    /// `mProf_FlushLocked` walks the buckets from `mbuckets`.
    mbuckets: Option<u64>,
}

impl Variables {
    /// From the code of the runtime's functions, by name (address, bytes).
    fn decoded<'a>(code: &dyn Fn(&'static str) -> Option<(u64, &'a [u8])>) -> Self {
        let loads = |name| {
            code(name).map_or_else(Vec::new, |(start, body)| {
                placement::global_loads(body, start)
            })
        };
        let allgs = loads("runtime.forEachG");
        Self {
            rate: loads("runtime.allocmcache").first().copied(),
            allgs: match allgs[..] {
                [ptr, len, ..] if len == ptr + 8 => Some(ptr),
                _ => None,
            },
            mbuckets: loads("runtime.mProf_FlushLocked").first().copied(),
        }
    }
}

impl Variables {
    /// Those at a word of the binary's data sections; the others are dropped.
    fn in_data(self, image: &ElfImage) -> Self {
        let ranges: Vec<(u64, u64)> = [".data", ".noptrdata", ".bss", ".noptrbss"]
            .iter()
            .filter_map(|s| image.section_range(s))
            .collect();
        let data = |at: Option<u64>| {
            at.filter(|&a| {
                ranges
                    .iter()
                    .any(|&(lo, hi)| a >= lo && a.checked_add(8).is_some_and(|end| end <= hi))
            })
        };
        Self {
            rate: data(self.rate),
            allgs: data(self.allgs),
            mbuckets: data(self.mbuckets),
        }
    }
}

/// Why a goroutine waits, named as Go's goroutine profile names it, from
/// the functions of its parked stack (innermost first) and its status: the
/// runtime function that parked it tells, whatever the release's numbering
/// of its wait reasons.
pub fn wait_reason<'a>(status: u32, functions: impl IntoIterator<Item = &'a str>) -> &'static str {
    match status {
        G_RUNNING => return "running",
        G_SYSCALL => return "syscall",
        G_RUNNABLE => return "runnable",
        _ => {}
    }
    // The semaphore under a lock or a wait group says less than the lock.
    let mut semaphore = false;
    for f in functions {
        let reason = match f {
            "runtime.chansend" | "runtime.chansend1" => "chan send",
            "runtime.chanrecv" | "runtime.chanrecv1" | "runtime.chanrecv2" => "chan receive",
            "runtime.selectgo" => "select",
            "runtime.block" => "select (no cases)",
            "time.Sleep" | "runtime.timeSleep" => "sleep",
            "internal/poll.runtime_pollWait" | "runtime.netpollblock" => "IO wait",
            "sync.runtime_SemacquireMutex" | "internal/sync.runtime_SemacquireMutex" => {
                "sync.Mutex.Lock"
            }
            "sync.runtime_SemacquireRWMutexR" => "sync.RWMutex.RLock",
            "sync.runtime_SemacquireRWMutex" => "sync.RWMutex.Lock",
            "sync.runtime_SemacquireWaitGroup" | "sync.(*WaitGroup).Wait" => "sync.WaitGroup.Wait",
            "sync.runtime_notifyListWait" => "sync.Cond.Wait",
            "runtime.gcBgMarkWorker" => "GC worker (idle)",
            "runtime.forcegchelper" => "force gc (idle)",
            "runtime.bgsweep" => "GC sweep wait",
            "runtime.bgscavenge" => "GC scavenge wait",
            "runtime.runfinq" | "runtime.runFinalizersAndCleanups" => "finalizer wait",
            "sync.runtime_Semacquire" | "runtime.semacquire1" | "runtime.semacquire" => {
                semaphore = true;
                continue;
            }
            _ => continue,
        };
        return reason;
    }
    if semaphore { "semacquire" } else { "waiting" }
}

/// Goroutines read at most (a runaway `allgs` length read mid-update).
const MAX_GOROUTINES: u64 = 1 << 22;
const G_IDLE: u32 = 0;
const G_DEAD: u32 = 6;
const G_SCAN: u32 = 0x1000;

/// Where `runtime.g` keeps what leaktrace reads, per Go release on amd64: the
/// member offsets of `runtime.g` in the DWARF of a binary the release builds
/// (`readelf --debug-dump=info`). `atomicstatus` (u32) and `stackLock` (u32)
/// sit just before `goid` in every one of them. The releases the tests build,
/// 1.21.13 and 1.27.3, are checked end to end by tests/trace.rs
/// (`goroutines_and_go_heap_from_before_attach_are_counted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GLayout {
    goid: u64,
    gopc: u64,
    startpc: u64,
}

impl GLayout {
    /// The layout of "go1.MINOR[.PATCH]".
    fn of(version: &str) -> Option<Self> {
        let minor: u32 = version
            .strip_prefix("go1.")?
            .split('.')
            .next()?
            .parse()
            .ok()?;
        let (goid, gopc) = match minor {
            21 | 22 | 25 => (152, 280),
            23 | 24 => (160, 288),
            26 | 27 => (152, 288),
            _ => return None,
        };
        Some(Self {
            goid,
            gopc,
            startpc: gopc + 16,
        })
    }

    fn status(&self) -> u64 {
        self.goid - 8
    }

    /// Bytes of a g to read: up to the last field used.
    fn size(&self) -> u64 {
        self.startpc.max(G_SCHED + 64) + 8
    }
}

/// Runtime functions probed, with the eBPF program of each (see leaktrace-ebpf/src/go.rs).
const ENTRY_POINTS: &[(&str, &str)] = &[
    ("runtime.mProf_Malloc", programs::GO_MPROF_MALLOC),
    ("runtime.setprofilebucket", programs::GO_SET_PROFILE_BUCKET),
    ("runtime.freeSpecial", programs::GO_FREE_SPECIAL),
    ("runtime.mProf_Free", programs::GO_MPROF_FREE),
];
/// Where a new goroutine is first seen: the call of `runtime.runqput(pp, newg,
/// next)` that queues it, in the closure newproc runs on the system stack (a
/// `call` is emulated: ~1 µs); where that is not found, each RET of
/// `runtime.newproc1` (RAX is newg), which the kernel single-steps: measured
/// +28.6 µs per goroutine here (docs/performance.md).
const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
const RUNQPUT: &str = "runtime.runqput";
const NEWPROC1: &str = "runtime.newproc1";

/// The functions in a pclntab (`tab`, the binary's own bytes: untrusted, every
/// count and offset bounded by the data), sorted by address with an empty-named
/// end marker, and the text start. `text_section`: where `.text` starts, for a
/// PIE whose copy of the text start is relocated at run time (0 in the file).
fn parse_pclntab(tab: &[u8], text_section: Option<u64>) -> Option<(Vec<(u64, String)>, u64)> {
    let u32_at = |o: usize| {
        let end = o.checked_add(4)?;
        Some(u32::from_le_bytes(tab.get(o..end)?.try_into().ok()?))
    };
    let u64_at = |o: usize| Some(u64::from_le_bytes(tab.get(o..o + 8)?.try_into().ok()?));
    let magic = u32_at(0)?;
    if !(magic == 0xffff_fff1 || magic == 0xffff_fff0) || tab.get(7) != Some(&8) {
        return None;
    }
    let nfunc = usize::try_from(u64_at(8)?).ok()?;
    let text = match u64_at(24)? {
        0 => text_section?,
        t => t,
    };
    let names = usize::try_from(u64_at(32)?).ok()?;
    let functab = usize::try_from(u64_at(64)?).ok()?;
    // Each function has an 8-byte entry in the table: a count the data cannot
    // hold is a damaged (or hostile) table.
    if nfunc >= tab.len().saturating_sub(functab) / 8 {
        return None;
    }
    let mut funcs = Vec::with_capacity(nfunc + 1);
    for i in 0..=nfunc {
        let at = functab + 8 * i;
        let entry = text.wrapping_add(u64::from(u32_at(at)?));
        let name = if i < nfunc {
            let func = functab.checked_add(u32_at(at + 4)? as usize)?;
            let off = names.checked_add(u32_at(func.checked_add(4)?)? as usize)?;
            let rest = tab.get(off..)?;
            let end = rest.iter().take(MAX_NAME).position(|&b| b == 0)?;
            String::from_utf8_lossy(&rest[..end]).into_owned()
        } else {
            String::new()
        };
        funcs.push((entry, name));
    }
    funcs.sort_by_key(|f| f.0);
    Some((funcs, text))
}

/// The longest function name read from a pclntab.
const MAX_NAME: usize = 4096;

/// The functions of a Go binary, from its pclntab.
#[derive(Clone, Debug, Default)]
pub struct Pclntab {
    /// (entry address, name), sorted by address; the last entry's name is empty
    /// and marks the end of the text.
    funcs: Vec<(u64, String)>,
    /// What to add to a file offset in the text to get its address.
    offset_to_address: u64,
    /// The table itself, for its line and file tables (stripped binaries keep them).
    lines: Option<Lines>,
}

/// The parts of a pclntab that map a pc to its file and line.
#[derive(Clone, Debug, Default)]
struct Lines {
    tab: Vec<u8>,
    text: u64,
    nfunc: usize,
    functab: usize,
    pctab: usize,
    cutab: usize,
    filetab: usize,
}

/// Steps a pc-value table is read for at most (a function has a row per
/// change of value: thousands at most).
const MAX_PCVALUE_STEPS: usize = 1 << 16;

impl Lines {
    fn new(tab: &[u8], text: u64) -> Option<Self> {
        let at = |o: usize| -> Option<usize> {
            usize::try_from(u64::from_le_bytes(tab.get(o..o + 8)?.try_into().ok()?)).ok()
        };
        Some(Self {
            tab: tab.to_vec(),
            text,
            nfunc: at(8)?,
            cutab: at(40)?,
            filetab: at(48)?,
            pctab: at(56)?,
            functab: at(64)?,
        })
    }

    fn u32_at(&self, o: usize) -> Option<u32> {
        Some(u32::from_le_bytes(
            self.tab.get(o..o.checked_add(4)?)?.try_into().ok()?,
        ))
    }

    /// The file and line of the code at `address`.
    fn at(&self, address: u64) -> Option<(String, u32)> {
        let off = u32::try_from(address.checked_sub(self.text)?).ok()?;
        // The function table is sorted by entry: {entry offset, func offset}.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if self.u32_at(self.functab.checked_add(mid.checked_mul(8)?)?)? <= off {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let entry = self.u32_at(self.functab + 8 * lo)?;
        let func = self
            .functab
            .checked_add(self.u32_at(self.functab + 8 * lo + 4)? as usize)?;
        // _func: pcfile at 20, pcln at 24, cuOffset at 32.
        let field = |at: usize| self.u32_at(func.checked_add(at)?);
        let line = self.pcvalue(field(24)?, entry, off)?;
        let file = self.pcvalue(field(20)?, entry, off)?;
        let cu = field(32)? as usize;
        let index = cu.checked_add(usize::try_from(file).ok()?)?;
        let name = self
            .filetab
            .checked_add(self.u32_at(self.cutab.checked_add(4 * index)?)? as usize)?;
        let rest = self.tab.get(name..)?;
        let end = rest.iter().take(MAX_NAME).position(|&b| b == 0)?;
        Some((
            String::from_utf8_lossy(&rest[..end]).into_owned(),
            u32::try_from(line).ok()?,
        ))
    }

    /// The value a pc-value table (`table` past the pc tables' start) gives
    /// text offset `off`, in the function at `entry` (runtime/symtab.go's pcvalue).
    fn pcvalue(&self, table: u32, entry: u32, off: u32) -> Option<i64> {
        let mut p = self.pctab.checked_add(table as usize)?;
        let (mut pc, mut value) = (u64::from(entry), -1i64);
        for step in 0..MAX_PCVALUE_STEPS {
            let (delta, used) = uvarint(self.tab.get(p..)?)?;
            if delta == 0 && step > 0 {
                return None; // past the function's end
            }
            p += used;
            let delta = (if delta & 1 != 0 {
                !(delta >> 1)
            } else {
                delta >> 1
            }) as i64;
            let (pcdelta, used) = uvarint(self.tab.get(p..)?)?;
            p += used;
            value = value.wrapping_add(delta);
            pc = pc.checked_add(pcdelta)?;
            if u64::from(off) < pc {
                return Some(value);
            }
        }
        None
    }
}

impl Pclntab {
    /// Parses the pclntab of Go 1.20+ (magic 0xfffffff1; 1.18's 0xfffffff0 has
    /// the same header).
    pub fn read(image: &ElfImage) -> Option<Self> {
        let (_, tab) = image
            .section(".gopclntab")
            .or_else(|| image.section(".data.rel.ro.gopclntab"))?;
        let text_section = image.section_address(".text");
        let (funcs, text) = parse_pclntab(tab, text_section)?;
        let offset_to_address = text.wrapping_sub(image.file_offset(text)?);
        Some(Self {
            funcs,
            offset_to_address,
            lines: Lines::new(tab, text),
        })
    }

    /// `[start, end)` of the function called `name`.
    pub fn function(&self, name: &str) -> Option<(u64, u64)> {
        let i = self.funcs.iter().position(|f| f.1 == name)?;
        Some((self.funcs[i].0, self.funcs.get(i + 1)?.0))
    }

    /// The name of the function whose code is at `offset` in the file.
    pub fn name_at_offset(&self, offset: u64) -> Option<&str> {
        self.name_at(offset.wrapping_add(self.offset_to_address))
    }

    /// The file and line of the code at `offset` in the file.
    pub fn line_at_offset(&self, offset: u64) -> Option<(String, u32)> {
        self.lines
            .as_ref()?
            .at(offset.wrapping_add(self.offset_to_address))
    }

    /// The name of the function holding `address` (a file address).
    pub fn name_at(&self, address: u64) -> Option<&str> {
        let i = self
            .funcs
            .partition_point(|f| f.0 <= address)
            .checked_sub(1)?;
        let name = &self.funcs[i].1;
        (!name.is_empty() && i + 1 < self.funcs.len()).then_some(name.as_str())
    }
}

/// A Go binary's runtime, as leaktrace probes it.
#[derive(Clone, Debug)]
pub struct GoRuntime {
    /// The file probed (as leaktrace opens it).
    pub path: std::path::PathBuf,
    /// "go1.27.3", from `.go.buildinfo`.
    pub version: Option<String>,
    pub points: Vec<ProbePoint>,
    /// `runtime.exit`, which every way out of a Go program takes (returning
    /// from main, os.Exit, a fatal panic): it stops there for its last read.
    pub exit: Option<ExitPoint>,
    /// `runtime.MemProfileRate`'s file address, when the binary has `.symtab`.
    rate_symbol: Option<u64>,
    /// `runtime.allgs`'s file address, when the binary has `.symtab`.
    allgs_symbol: Option<u64>,
    /// `runtime.mbuckets`'s file address (the heap profile's buckets).
    mbuckets_symbol: Option<u64>,
    /// `bp` in `g.sched` when known (the releases read, else DWARF): where a
    /// parked goroutine's frame chain starts.
    gobuf_bp: Option<u64>,
    /// Where the file asks to be loaded: a PIE's bias is measured from it.
    load_address: u64,
}

impl GoRuntime {
    /// The runtime of `image`; `Ok(None)` when it is not a Go binary.
    pub fn inspect(image: &ElfImage) -> Result<Option<Self>, GoError> {
        let Some(tab) = Pclntab::read(image) else {
            return Ok(None);
        };
        let missing = |function| GoError::MissingFunction {
            path: image.path.display().to_string(),
            function,
        };
        let mut points = Vec::new();
        let point = |function: &str, program, address: u64, shift| -> Option<ProbePoint> {
            Some(ProbePoint {
                program,
                function: function.to_string(),
                returns: false,
                file_offset: image.file_offset(address)?,
                shift,
                cookie: 0,
            })
        };
        // A function's address and code.
        let code = |name| -> Option<(u64, &[u8])> {
            let (start, end) = tab.function(name)?;
            let offset = image.file_offset(start)?;
            Some((start, image.bytes_at(offset, (end - start) as usize)))
        };
        for &(name, program) in ENTRY_POINTS {
            let (start, body) = code(name).ok_or_else(|| missing(name))?;
            let shift = placement::go_entry_offset(body, start);
            points.extend(point(name, program, start, shift));
        }
        let queued = match (code(NEWPROC_CLOSURE), tab.function(RUNQPUT)) {
            (Some((start, body)), Some((runqput, _))) => {
                let calls = placement::call_offsets(body, start, runqput);
                (calls.len() == 1).then(|| {
                    point(
                        NEWPROC_CLOSURE,
                        programs::GO_NEWPROC_QUEUED,
                        start,
                        calls[0],
                    )
                })
            }
            _ => None,
        };
        match queued.flatten() {
            Some(p) => points.push(p),
            None => {
                let (start, body) = code(NEWPROC1).ok_or_else(|| missing(NEWPROC1))?;
                let rets = placement::return_offsets(body, start);
                if rets.is_empty() {
                    return Err(missing(NEWPROC1));
                }
                for ret in rets {
                    points.extend(point(NEWPROC1, programs::GO_NEWPROC1_RET, start, ret));
                }
            }
        }
        let version = build_version(image);
        // Without a symbol table, from the code that reads them: only words
        // of the runtime's data, which leaktrace may write (the rate).
        let variables = match image.has_symtab() {
            true => Variables::default(),
            false => Variables::decoded(&|name| code(name)).in_data(image),
        };
        // The releases read are known; another's DWARF (decompressed whole:
        // only when needed) says, if it was not stripped.
        let known = version.as_deref().and_then(gobuf_bp_of);
        // A word of gobuf (at most seven): the file says, it is not trusted.
        let gobuf_bp = known.or_else(|| {
            dwarf_member(image, "runtime.gobuf", "bp").filter(|&at| at % 8 == 0 && at <= 48)
        });
        log::debug!(
            "{}: gobuf.bp at {gobuf_bp:?} ({})",
            image.path.display(),
            if known.is_some() {
                "release table"
            } else {
                "DWARF"
            }
        );
        let exit = tab
            .function("runtime.exit")
            .and_then(|(start, _)| image.file_offset(start))
            .map(|file_offset| ExitPoint {
                path: image.path.clone(),
                file_offset,
            });
        Ok(Some(Self {
            path: image.path.clone(),
            gobuf_bp,
            version,
            points,
            exit,
            rate_symbol: image
                .symbol_address("runtime.MemProfileRate")
                .or(variables.rate),
            allgs_symbol: image.symbol_address("runtime.allgs").or(variables.allgs),
            mbuckets_symbol: image
                .symbol_address("runtime.mbuckets")
                .or(variables.mbuckets),
            load_address: image.load_address(),
        }))
    }

    /// Where the variable at file address `symbol` lives in process `pid`.
    fn address(&self, pid: u32, symbol: u64) -> Result<u64, GoError> {
        let memory = |source| GoError::Memory { pid, source };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(memory)?;
        let maps = ProcMaps::read(pid).map_err(memory)?;
        // The load bias: where the file's first page was mapped, less where it asked.
        let base = maps
            .mappings()
            .find(|m| m.offset == 0 && m.path.as_deref() == Some(exe.as_path()))
            .map(|m| m.start)
            .ok_or_else(|| memory(std::io::ErrorKind::NotFound.into()))?;
        (symbol.checked_add(base))
            .and_then(|a| a.checked_sub(self.load_address))
            .ok_or_else(|| memory(std::io::ErrorKind::InvalidData.into()))
    }

    fn rate_address(&self, pid: u32) -> Result<u64, GoError> {
        let symbol = self
            .rate_symbol
            .ok_or_else(|| GoError::NoSymbol(self.path.display().to_string()))?;
        self.address(pid, symbol)
    }

    /// The buckets of process `pid`'s heap profile with sampled objects in use,
    /// read from `runtime.mbuckets` (all cycles: in use now, unswept garbage too).
    pub fn heap_buckets(&self, pid: u32) -> Result<Vec<HeapBucket>, GoError> {
        let symbol = self
            .mbuckets_symbol
            .ok_or_else(|| GoError::NoSymbol(self.path.display().to_string()))?;
        let memory = |source| GoError::Memory { pid, source };
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(memory)?;
        let words = |addr: u64, n: u64| -> Result<Vec<u64>, GoError> {
            let mut bytes = vec![0u8; n as usize * 8];
            mem.read_exact_at(&mut bytes, addr).map_err(memory)?;
            Ok(bytes
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                .collect())
        };
        let mut layout = None;
        let mut raw = Vec::new();
        let mut next = words(self.address(pid, symbol)?, 1)?[0];
        while next != 0 && raw.len() < MAX_BUCKETS {
            // next, allnext, typ, hash, size, nstk
            let head = words(next, BUCKET_HEADER / 8)?;
            let (allnext, typ, size, nstk) = (head[1], head[2], head[4], head[5]);
            if typ != MEM_PROFILE || nstk > MAX_BUCKET_FRAMES {
                break; // not a heap-profile bucket: read mid-update, or not Go's layout
            }
            let rest = words(next + BUCKET_HEADER, nstk + 4 * MEM_RECORD_CYCLES as u64)?;
            let (stack, record) = rest.split_at(nstk as usize);
            if layout.is_none() {
                layout = cycle_words(record, size);
            }
            raw.push((next, size, stack.to_vec(), record.to_vec()));
            next = allnext;
        }
        let per_cycle = layout.unwrap_or(2);
        Ok(raw
            .into_iter()
            .filter_map(|(addr, size, stack, record)| {
                let in_use = record
                    .chunks(per_cycle)
                    .take(MEM_RECORD_CYCLES)
                    .fold(0i64, |n, c| n + c[0] as i64 - c[1] as i64);
                (in_use > 0).then_some(HeapBucket {
                    addr,
                    size,
                    stack,
                    in_use: in_use as u64,
                })
            })
            .collect())
    }

    /// Where the goroutine probes read a new goroutine's id and making;
    /// `None` for a release whose `runtime.g` layout is not known.
    pub fn probe_layout(&self) -> Option<GoLayout> {
        let layout = GLayout::of(self.version.as_deref()?)?;
        Some(GoLayout {
            goid: layout.goid as u32,
            gopc: layout.gopc as u32,
        })
    }

    /// Of goroutines `(g, goid)` of process `pid`, those that have ended: their
    /// `g` dead, or another goroutine's now (the runtime reuses a dead `g`).
    /// One small read per goroutine, 1,024 per system call. The runtime never
    /// unmaps a `g`: one that cannot be read while others can was no
    /// goroutine's (a hostile process can make the probe see any address)
    /// and ends; when none can be read (the process is going), none is judged.
    pub fn ended(&self, pid: u32, goroutines: &[(u64, u64)]) -> Vec<u64> {
        let Some(layout) = self.version.as_deref().and_then(GLayout::of) else {
            return Vec::new();
        };
        // atomicstatus (u32), stackLock (u32), goid: 16 bytes at `status`.
        let status = layout.status();
        let wanted: Vec<(u64, u64)> = goroutines
            .iter()
            .map(|&(g, goid)| (g.wrapping_add(status), goid))
            .collect();
        let read = GsRead::of(pid, wanted.iter().map(|w| w.0), 16);
        if read.is_empty() {
            return Vec::new();
        }
        wanted
            .iter()
            .filter(|&&(at, goid)| {
                let Some(bytes) = read.at(at) else {
                    return true;
                };
                let state = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
                let now = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
                state & !G_SCAN == G_DEAD || now != goid
            })
            .map(|&(at, _)| at.wrapping_sub(status))
            .collect()
    }

    /// The goroutines of process `pid` alive now (not dead, not idle), read
    /// from `runtime.allgs`; a best-effort snapshot of a running process.
    pub fn goroutines(&self, pid: u32) -> Result<Vec<LiveGoroutine>, GoError> {
        let layout = self
            .version
            .as_deref()
            .and_then(GLayout::of)
            .ok_or_else(|| GoError::UnknownLayout(self.version.clone().unwrap_or_default()))?;
        let symbol = self
            .allgs_symbol
            .ok_or_else(|| GoError::NoSymbol(self.path.display().to_string()))?;
        let memory = |source| GoError::Memory { pid, source };
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(memory)?;
        let read = |addr: u64, buf: &mut [u8]| mem.read_exact_at(buf, addr).map_err(memory);
        let word = |bytes: &[u8], at: u64| {
            let at = at as usize;
            u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
        };
        // A slice: pointer, length, capacity.
        let mut header = [0u8; 16];
        read(self.address(pid, symbol)?, &mut header)?;
        let (array, len) = (word(&header, 0), word(&header, 8).min(MAX_GOROUTINES));
        let mut pointers = vec![0u8; len as usize * 8];
        read(array, &mut pointers)?;
        let gs: Vec<u64> = (0..len)
            .map(|i| word(&pointers, i * 8))
            .filter(|&g| g != 0)
            .collect();
        // What is read of each g: from `sched` on (the lowest field used).
        let size = layout.size() - G_SCHED;
        let window = GsRead::of(pid, gs.iter().map(|g| g.wrapping_add(G_SCHED)), size);
        let mut live = Vec::new();
        for addr in gs {
            let Some(g) = window.at(addr.wrapping_add(G_SCHED)) else {
                continue;
            };
            let field = |offset: u64| word(g, offset - G_SCHED);
            let status = field(layout.status()) as u32;
            // Without the "being scanned" bit: 0 idle, 6 dead; the rest are goroutines.
            if matches!(status & !G_SCAN, G_IDLE | G_DEAD) {
                continue;
            }
            live.push(LiveGoroutine {
                g: addr,
                goid: field(layout.goid),
                gopc: field(layout.gopc),
                parent_goid: field(layout.gopc - 8),
                start_pc: field(layout.startpc),
                status: status & !G_SCAN,
                sched_pc: field(G_SCHED + GOBUF_PC),
                sched_bp: self.gobuf_bp.map_or(0, |bp| field(G_SCHED + bp)),
            });
        }
        Ok(live)
    }

    /// The return addresses of goroutine `g`'s stack where it is parked,
    /// innermost first, by its frame pointers (Go keeps them), read from its
    /// process's memory `mem` (`/proc/PID/mem`); empty for one running now,
    /// or when `g.sched`'s layout is not known.
    pub fn parked_stack(mem: &std::fs::File, g: &LiveGoroutine) -> Vec<u64> {
        if !matches!(g.status, G_WAITING | G_RUNNABLE) || g.sched_bp == 0 || g.sched_pc == 0 {
            return Vec::new();
        }
        let mut pcs = vec![g.sched_pc];
        let mut bp = g.sched_bp;
        let mut frame = [0u8; 16];
        while pcs.len() < MAX_PARKED_FRAMES && mem.read_exact_at(&mut frame, bp).is_ok() {
            let next = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
            let ra = u64::from_le_bytes(frame[8..].try_into().expect("8 bytes"));
            if ra == 0 {
                break;
            }
            pcs.push(ra);
            // Frames go up the stack: anything else is not a frame chain.
            if next <= bp {
                break;
            }
            bp = next;
        }
        pcs
    }

    /// The target's `runtime.MemProfileRate` now.
    pub fn mem_profile_rate(&self, pid: u32) -> Result<u64, GoError> {
        let addr = self.rate_address(pid)?;
        let mut word = [0u8; 8];
        std::fs::File::open(format!("/proc/{pid}/mem"))
            .and_then(|f| f.read_exact_at(&mut word, addr))
            .map_err(|source| GoError::Memory { pid, source })?;
        Ok(u64::from_le_bytes(word))
    }

    /// Sets the target's `runtime.MemProfileRate` (sampling off: see docs/go.md): the
    /// runtime samples from its next allocations on.
    pub fn set_mem_profile_rate(&self, pid: u32, rate: u64) -> Result<(), GoError> {
        let addr = self.rate_address(pid)?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .and_then(|f| f.write_all_at(&rate.to_le_bytes(), addr))
            .map_err(|source| GoError::Memory { pid, source })
    }
}

/// The Go version in `.go.buildinfo` (Go 1.18+ writes it inline as a
/// length-prefixed string after a 32-byte header).
fn build_version(image: &ElfImage) -> Option<String> {
    let (_, info) = image.section(".go.buildinfo")?;
    if !info.starts_with(b"\xff Go buildinf:") || info.get(15)? & 2 == 0 {
        return None;
    }
    let (len, used) = uvarint(info.get(32..)?)?;
    let start = 32 + used;
    let bytes = info.get(start..start + len as usize)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pclntab of two functions, `main.a` at text+0x10 and `main.b` at
    /// text+0x40, ending at text+0x80.
    fn pclntab() -> Vec<u8> {
        let mut tab = vec![0u8; 0x200];
        tab[0..4].copy_from_slice(&0xffff_fff1u32.to_le_bytes());
        tab[7] = 8;
        let put = |tab: &mut Vec<u8>, at: usize, v: u64| {
            tab[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut tab, 8, 2); // nfunc
        put(&mut tab, 24, 0x40_1000); // text start
        put(&mut tab, 32, 0x100); // names
        put(&mut tab, 64, 0x80); // functab
        let put32 = |tab: &mut Vec<u8>, at: usize, v: u32| {
            tab[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        // functab: (entry offset, func offset) pairs, then the end entry.
        put32(&mut tab, 0x80, 0x10);
        put32(&mut tab, 0x84, 0x40);
        put32(&mut tab, 0x88, 0x40);
        put32(&mut tab, 0x8c, 0x48);
        put32(&mut tab, 0x90, 0x80);
        // _func records at functab+0x40 and +0x48: their name offsets.
        put32(&mut tab, 0xc4, 0);
        put32(&mut tab, 0xcc, 7);
        tab[0x100..0x10e].copy_from_slice(b"main.a\0main.b\0");
        tab
    }

    #[test]
    fn pclntab_functions_are_read() {
        let (funcs, text) = parse_pclntab(&pclntab(), None).unwrap();
        assert_eq!(text, 0x40_1000);
        assert_eq!(
            funcs,
            [
                (0x40_1010, "main.a".to_string()),
                (0x40_1040, "main.b".to_string()),
                (0x40_1080, String::new())
            ]
        );
    }

    /// A damaged or hostile pclntab (any byte changed, counts and offsets out
    /// of range) is refused or read within its bounds: never a panic, never an
    /// allocation its size does not justify.
    #[test]
    fn damaged_pclntabs_are_bounded_by_their_data() {
        let good = pclntab();
        let mut huge = good.clone();
        huge[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(parse_pclntab(&huge, None).is_none());
        let mut rng = crate::testrng::Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut tab = good.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() % tab.len() as u64) as usize;
                tab[at] = rng.next() as u8;
            }
            let cut = (rng.next() % (tab.len() as u64 + 1)) as usize;
            if let Some((funcs, _)) = parse_pclntab(&tab[..cut], Some(0x1000)) {
                assert!(funcs.len() <= cut / 8 + 1);
            }
        }
    }

    /// tests/targets/go/waiting.go built by the Go `version` the toolchains
    /// `cargo xtask setup` installs have: symbols and DWARF kept.
    fn built(version: &str) -> ElfImage {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let go = root.join(format!("target/toolchains/go{version}/bin/go"));
        assert!(go.exists(), "{}: run cargo xtask setup", go.display());
        // Tests build side by side: each in a directory of its own.
        static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp =
            std::env::temp_dir().join(format!("leaktrace-go{version}-{}-{n}", std::process::id()));
        let exe = tmp.join("waiting");
        let status = std::process::Command::new(go)
            .env("GOTOOLCHAIN", "local")
            .env(
                "GOCACHE",
                root.join(format!("target/gocache-unit{version}")),
            )
            .env("GOPATH", tmp.join("gopath"))
            .env("GOFLAGS", "-buildvcs=false")
            .arg("build")
            .arg("-o")
            .arg(&exe)
            .arg(root.join("tests/targets/go/waiting.go"))
            .status()
            .unwrap();
        assert!(status.success());
        let image = ElfImage::open(&exe).unwrap();
        let _ = std::fs::remove_dir_all(tmp);
        image
    }

    /// Offsets read from a program's DWARF are those of the release table.
    #[test]
    fn the_runtimes_layout_is_read_from_dwarf() {
        for version in ["1.21.13", "1.27.3"] {
            let image = built(version);
            let release = format!("go{version}");
            assert_eq!(
                dwarf_member(&image, "runtime.gobuf", "bp"),
                gobuf_bp_of(&release)
            );
            assert_eq!(dwarf_member(&image, "runtime.g", "sched"), Some(G_SCHED));
            assert_eq!(dwarf_member(&image, "runtime.gobuf", "nothing"), None);
        }
    }

    /// What a stripped binary's code says of the runtime's variables is what
    /// the symbols of the same build say; its pclntab has the lines.
    #[test]
    fn the_runtimes_variables_and_lines_are_found_without_symbols() {
        for version in ["1.21.13", "1.27.3"] {
            let image = built(version);
            let tab = Pclntab::read(&image).unwrap();
            let code = |name: &'static str| -> Option<(u64, &[u8])> {
                let (start, end) = tab.function(name)?;
                let offset = image.file_offset(start)?;
                Some((start, image.bytes_at(offset, (end - start) as usize)))
            };
            // Lines from the pclntab alone (what a stripped build has).
            let (send, _) = tab.function("main.send").unwrap();
            let (file, line) = tab
                .line_at_offset(image.file_offset(send).unwrap())
                .unwrap();
            assert!(file.ends_with("tests/targets/go/waiting.go"), "{file}");
            assert_eq!(line, 14, "main.send's `func` line");
            let found = Variables::decoded(&code);
            let symbol = |name| image.symbol_address(name);
            assert_eq!(
                found,
                Variables {
                    rate: symbol("runtime.MemProfileRate"),
                    allgs: symbol("runtime.allgs"),
                    mbuckets: symbol("runtime.mbuckets"),
                },
                "go{version}"
            );
            assert!(found.rate.is_some() && found.allgs.is_some() && found.mbuckets.is_some());
        }
    }

    #[test]
    fn wait_reasons_come_from_the_function_that_parked() {
        let parked = |fs: &[&'static str]| wait_reason(G_WAITING, fs.iter().copied());
        assert_eq!(
            parked(&[
                "runtime.gopark",
                "runtime.chansend",
                "runtime.chansend1",
                "main.produce"
            ]),
            "chan send"
        );
        assert_eq!(
            parked(&["runtime.gopark", "runtime.selectgo", "main.loop"]),
            "select"
        );
        assert_eq!(
            parked(&["runtime.gopark", "time.Sleep", "main.nap"]),
            "sleep"
        );
        assert_eq!(
            parked(&[
                "runtime.gopark",
                "runtime.semacquire1",
                "sync.runtime_SemacquireWaitGroup",
                "sync.(*WaitGroup).Wait",
                "main.run"
            ]),
            "sync.WaitGroup.Wait"
        );
        assert_eq!(
            parked(&["runtime.gopark", "runtime.semacquire1", "main.x"]),
            "semacquire"
        );
        assert_eq!(parked(&["runtime.gopark", "main.custom"]), "waiting");
        assert_eq!(wait_reason(G_RUNNABLE, ["runtime.chansend"]), "runnable");
    }

    #[test]
    fn mem_record_layout_is_told_by_its_values() {
        // Go 1.21: {allocs, frees, alloc_bytes, free_bytes} of 64-byte objects.
        assert_eq!(cycle_words(&[3, 1, 192, 64, 0, 0, 0, 0], 64), Some(4));
        // Go 1.27: {allocs, frees} × 4 cycles.
        assert_eq!(cycle_words(&[3, 1, 2, 0, 5, 0, 0, 0], 64), Some(2));
        assert_eq!(cycle_words(&[0; 8], 64), None);
    }

    #[test]
    fn g_layouts_per_release() {
        let l = GLayout::of("go1.27.3").unwrap();
        assert_eq!((l.status(), l.gopc, l.startpc), (144, 288, 304));
        assert_eq!(GLayout::of("go1.23.0").unwrap().goid, 160);
        assert_eq!(GLayout::of("go1.21.13").unwrap().gopc, 280);
        assert_eq!(GLayout::of("go1.20.1"), None);
        assert_eq!(GLayout::of("devel"), None);
    }

    #[test]
    fn varints() {
        assert_eq!(uvarint(&[0x08]), Some((8, 1)));
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(uvarint(&[0x80]), None);
    }
}
