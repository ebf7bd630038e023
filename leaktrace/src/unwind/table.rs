//! A module's unwind table, built from its `.eh_frame` (or `.debug_frame`):
//! one [`UnwindRow`] per change of rule, sorted by address, and a page index.
//!
//! Only what the eBPF walk can follow becomes a rule: a CFA of rsp or rbp plus
//! an offset, the return address at CFA − 8, rbp saved at a multiple of 8 from
//! the CFA, GCC's PLT expression, signal trampolines. Anything else (glibc's
//! `__longjmp`, `_dl_runtime_resolve`) is an [`RowKind::Unsupported`] row, so
//! the walk stops there rather than guessing. Code no FDE covers gets
//! [`RowKind::FramePointer`] rows.
use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, Reader, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use leaktrace_common::unwind::{PAGE_SHIFT, RBP_SAME, RowKind, UnwindRow};
use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef, SegmentFlags, elf::PF_X,
};

/// Rows a module may have: bounds the work a hostile file can cause.
const MAX_ROWS: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read its section: {0}")]
    Section(#[from] object::Error),
    #[error("unwind info: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("more than {MAX_ROWS} unwind rows")]
    TooManyRows,
    #[error("code above 4 GiB of the module's address space")]
    TooHigh,
    #[error("{0} is {1} bytes uncompressed, more than {max}", max = crate::elf::MAX_READ)]
    TooBig(&'static str, u64),
}

/// A module's rows and, for each page of code they cover, the rows that apply
/// there (indexes into `rows`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleTable {
    pub rows: Vec<UnwindRow>,
    pub first_page: u32,
    pub pages: Vec<(u32, u32)>,
}

/// Where (file offset, vaddr, size) each executable segment of a file lies:
/// turns a code mapping's file offset into the module's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments(pub Vec<(u64, u64, u64)>);

impl Segments {
    /// The module address at file offset `offset` of a code mapping. The
    /// mapping starts at the page holding the segment's first byte, which may
    /// lie before it (lld puts code at offset 0x13840, address 0x14840).
    pub fn address_of(&self, offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|&&(o, _, size)| offset >= o & !0xfff && offset < o + size.max(1))
            .map(|&(o, vaddr, _)| (offset + vaddr).wrapping_sub(o))
    }
}

/// What the walk needs of one file.
#[derive(Debug)]
pub struct FileUnwind {
    /// `None`: no unwind info (Go code, hand-written assembly): frame pointers.
    pub table: Result<Option<ModuleTable>, TableError>,
    pub segments: Segments,
}

/// Reads the segments and the unwind info of the ELF file `data`.
pub fn read<'d, R: ReadRef<'d>>(data: R) -> Result<FileUnwind, object::Error> {
    let obj = object::File::parse(data)?;
    let segments = Segments(
        obj.segments()
            .filter(|s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect(),
    );
    Ok(FileUnwind {
        table: table(&obj),
        segments,
    })
}

/// The unwind table of `obj`; `None` when it has no unwind info.
fn table<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>) -> Result<Option<ModuleTable>, TableError> {
    let plt: Vec<(u64, u64)> = obj
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".plt")))
        .map(|s| (s.address(), s.address() + s.size()))
        .collect();
    let mut bases = BaseAddresses::default();
    if let Some(text) = obj.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    if let Some(got) = obj.section_by_name(".got") {
        bases = bases.set_got(got.address());
    }
    let mut raw = Vec::new();
    // Go compresses its DWARF sections (.debug_frame among them): what the
    // file says they decompress to is bounded before they are.
    let uncompressed = |section: &object::Section<'d, '_, R>, name| {
        let size = section.compressed_file_range()?.uncompressed_size;
        if size > crate::elf::MAX_READ {
            return Err(TableError::TooBig(name, size));
        }
        Ok(section.uncompressed_data()?)
    };
    if let Some(eh) = obj.section_by_name(".eh_frame") {
        let bases = bases.clone().set_eh_frame(eh.address());
        let data = uncompressed(&eh, ".eh_frame")?;
        collect(&EhFrame::new(&data, LittleEndian), &bases, &plt, &mut raw)?;
    } else if let Some(debug) = obj.section_by_name(".debug_frame") {
        let data = uncompressed(&debug, ".debug_frame")?;
        collect(
            &DebugFrame::new(&data, LittleEndian),
            &bases,
            &plt,
            &mut raw,
        )?;
    }
    if raw.is_empty() {
        return Ok(None);
    }
    // Go's outermost functions are entered by a jump: their CFI does not say
    // the stack ends there.
    for sym in obj.symbols() {
        if sym
            .name()
            .is_ok_and(|n| OUTERMOST.contains(&n.trim_end_matches(".abi0")))
        {
            let (start, end) = (sym.address(), sym.address() + sym.size());
            for (_, _, row) in raw.iter_mut().filter(|r| r.0 >= start && r.0 < end) {
                row.kind = RowKind::Stop as u8;
            }
        }
    }
    index(raw).map(Some)
}

/// Functions where a stack starts though their unwind info does not say so.
const OUTERMOST: [&str; 3] = ["runtime.rt0_go", "runtime.mstart", "runtime.goexit"];

/// Every row of every FDE of `section`, as (start, end, row).
fn collect<R: Reader, S: UnwindSection<R>>(
    section: &S,
    bases: &BaseAddresses,
    plt: &[(u64, u64)],
    out: &mut Vec<(u64, u64, UnwindRow)>,
) -> Result<(), TableError>
where
    R::Offset: Default,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // A damaged FDE leaves its code to the frame-pointer rows.
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        let signal = fde.is_signal_trampoline();
        let Ok(mut rows) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        while let Ok(Some(r)) = rows.next_row() {
            if out.len() >= MAX_ROWS {
                return Err(TableError::TooManyRows);
            }
            let start = r.start_address();
            let in_plt = plt.iter().any(|&(a, b)| start >= a && start < b);
            out.push((start, r.end_address(), rule::<R::Offset>(r, signal, in_plt)));
        }
    }
    Ok(())
}

/// The walk's rule for one CFI row.
fn rule<T: gimli::ReaderOffset>(
    r: &gimli::UnwindTableRow<T>,
    signal: bool,
    in_plt: bool,
) -> UnwindRow {
    let mut row = UnwindRow {
        pc: 0,
        cfa_off: 0,
        rbp_off: RBP_SAME,
        kind: RowKind::Unsupported as u8,
    };
    if signal {
        row.kind = RowKind::Signal as u8;
        return row;
    }
    match r.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => {
            row.kind = RowKind::Stop as u8;
            return row;
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return row,
    }
    match r.cfa() {
        CfaRule::RegisterAndOffset { register, offset }
            if (*register == X86_64::RSP || *register == X86_64::RBP)
                && i16::try_from(*offset).is_ok() =>
        {
            row.kind = if *register == X86_64::RSP {
                RowKind::Rsp
            } else {
                RowKind::Rbp
            } as u8;
            row.cfa_off = *offset as i16;
        }
        CfaRule::Expression(_) if in_plt => row.kind = RowKind::Plt as u8,
        _ => return row,
    }
    match r.register(X86_64::RBP) {
        Some(RegisterRule::Offset(o)) if o % 8 == 0 && o != 0 && i8::try_from(o / 8).is_ok() => {
            row.rbp_off = (o / 8) as i8;
        }
        // Not saved in this frame: the caller's value is still in rbp.
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => {}
        // Saved somewhere the walk cannot follow: its callers' rbp-based rules
        // would read garbage.
        _ => row.kind = RowKind::Unsupported as u8,
    }
    row
}

/// Sorts the rows, fills gaps with frame-pointer rows, merges equal neighbours
/// and builds the page index.
fn index(mut raw: Vec<(u64, u64, UnwindRow)>) -> Result<ModuleTable, TableError> {
    raw.sort_by_key(|r| r.0);
    let last = raw.iter().map(|r| r.1).max().unwrap_or(0);
    if last > u64::from(u32::MAX) {
        return Err(TableError::TooHigh);
    }
    let first_page = (raw[0].0 >> PAGE_SHIFT) as u32;
    let gap = |pc: u64| UnwindRow {
        pc: pc as u32,
        cfa_off: 0,
        rbp_off: RBP_SAME,
        kind: RowKind::FramePointer as u8,
    };
    let same = |a: &UnwindRow, b: &UnwindRow| {
        a.kind == b.kind && a.cfa_off == b.cfa_off && a.rbp_off == b.rbp_off
    };
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(raw.len());
    let mut covered = u64::from(first_page) << PAGE_SHIFT;
    let push = |rows: &mut Vec<UnwindRow>, row: UnwindRow| match rows.last_mut() {
        Some(last) if last.pc == row.pc => *last = row,
        Some(last) if same(last, &row) => {}
        _ => rows.push(row),
    };
    for (start, end, mut row) in raw {
        if start > covered {
            push(&mut rows, gap(covered));
        }
        // Overlapping FDEs (rare, broken): the first keeps its range.
        if end <= covered && start < covered {
            continue;
        }
        row.pc = start.max(covered) as u32;
        push(&mut rows, row);
        covered = covered.max(end);
    }
    push(&mut rows, gap(covered));
    let last_page = (covered >> PAGE_SHIFT) as u32;
    let pages = (first_page..=last_page)
        .map(|p| {
            let start = u64::from(p) << PAGE_SHIFT;
            let end = start + (1 << PAGE_SHIFT);
            let lo = rows
                .partition_point(|r| u64::from(r.pc) <= start)
                .saturating_sub(1);
            let hi = rows.partition_point(|r| u64::from(r.pc) < end);
            (lo as u32, hi.max(lo + 1) as u32)
        })
        .collect();
    Ok(ModuleTable {
        rows,
        first_page,
        pages,
    })
}

#[cfg(test)]
impl ModuleTable {
    /// The row for module address `addr`, found as the eBPF walk finds it
    /// (the tests' model of the kernel's lookup).
    pub fn row_at(&self, addr: u64) -> Option<UnwindRow> {
        let page = u32::try_from(addr >> PAGE_SHIFT).ok()?;
        let &(lo, hi) = self
            .pages
            .get(page.checked_sub(self.first_page)? as usize)?;
        let rows = &self.rows[lo as usize..hi as usize];
        let i = rows.partition_point(|r| u64::from(r.pc) <= addr);
        rows.get(i.checked_sub(1)?).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    fn kind(row: UnwindRow) -> RowKind {
        [
            RowKind::Rsp,
            RowKind::Rbp,
            RowKind::Plt,
            RowKind::Stop,
            RowKind::Unsupported,
            RowKind::FramePointer,
            RowKind::Signal,
        ][row.kind as usize]
    }

    #[test]
    fn every_function_of_libc_starts_with_the_return_address_at_rsp() {
        let data = std::fs::read(LIBC).unwrap();
        let unwind = read(&*data).unwrap();
        let table = unwind.table.unwrap().expect("libc has .eh_frame");
        assert!(table.rows.len() > 5_000, "{}", table.rows.len());
        let obj = object::File::parse(&*data).unwrap();
        let mut checked = 0;
        for sym in obj.dynamic_symbols() {
            let name = sym.name().unwrap_or("");
            if sym.kind() != object::SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            // Functions that are not entered by a call (CFI says so).
            if [
                "_start",
                "__restore_rt",
                "__longjmp",
                "____longjmp_chk",
                "setcontext",
            ]
            .iter()
            .any(|n| name.contains(n))
            {
                continue;
            }
            let row = table.row_at(sym.address()).unwrap();
            if kind(row) == RowKind::FramePointer {
                continue; // a symbol without CFI (a few in glibc's assembly)
            }
            assert_eq!(
                (kind(row), row.cfa_off),
                (RowKind::Rsp, 8),
                "{name} at {:#x}",
                sym.address()
            );
            checked += 1;
        }
        assert!(checked > 1_000, "{checked}");
    }

    #[test]
    fn glibc_open64_keeps_rbp_as_a_register_and_the_rule_knows_it() {
        // glibc 2.36 open64 moves the path pointer into rbp: the CFA is rsp-based
        // and rbp is saved on the stack, never a frame pointer.
        let data = std::fs::read(LIBC).unwrap();
        let table = read(&*data).unwrap().table.unwrap().unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let open = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("open64"))
            .unwrap();
        let rows: Vec<UnwindRow> = (open.address()..open.address() + open.size())
            .filter_map(|a| table.row_at(a))
            .collect();
        assert!(rows.iter().all(|r| kind(*r) == RowKind::Rsp), "{rows:?}");
        assert!(rows.iter().any(|r| r.cfa_off > 8 && r.rbp_off != RBP_SAME));
    }

    #[test]
    fn code_mappings_find_their_segment_when_it_starts_mid_page() {
        // lld: code at file offset 0x13840, address 0x14840; the kernel maps it
        // from offset 0x13000.
        let lld = Segments(vec![(0x13840, 0x14840, 0x3000)]);
        assert_eq!(lld.address_of(0x13000), Some(0x14000));
        // GNU ld: offset and address agree.
        let bfd = Segments(vec![(0x1000, 0x1000, 0x2000)]);
        assert_eq!(bfd.address_of(0x1000), Some(0x1000));
        assert_eq!(bfd.address_of(0x4000), None);
    }

    #[test]
    fn pages_point_at_the_rows_covering_them() {
        let data = std::fs::read(LIBC).unwrap();
        let table = read(&*data).unwrap().table.unwrap().unwrap();
        for (i, &(lo, hi)) in table.pages.iter().enumerate() {
            let start = (u64::from(table.first_page) + i as u64) << PAGE_SHIFT;
            assert!(lo < hi && (hi as usize) <= table.rows.len());
            assert!(u64::from(table.rows[lo as usize].pc) <= start);
        }
        assert!(table.rows.windows(2).all(|w| w[0].pc < w[1].pc));
    }

    #[test]
    fn damaged_files_are_errors_or_frame_pointers_never_panics() {
        let data = std::fs::read(LIBC).unwrap();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..40 {
            let mut copy = data.clone();
            for _ in 0..64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng as usize) % copy.len();
                copy[i] = rng as u8;
            }
            let _ = read(&*copy);
        }
        assert!(read(&b"not an elf"[..]).is_err());
    }
}
