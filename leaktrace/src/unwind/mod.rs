//! The unwinder's userspace half: builds each mapped file's unwind table once
//! (keyed by the file's identity, shared by every process that maps it), loads
//! it into the kernel's table maps, and keeps each target's executable mappings
//! there up to date (libraries loaded later are picked up at the next refresh).
pub mod table;

use std::{collections::HashMap, path::PathBuf};

use leaktrace_common::unwind::{MAPPING_NO_TABLE, MAX_MAPPINGS, Mapping, PageIndex, ProcMappings};
use log::{debug, warn};

use crate::{
    elf::{ElfData, open_regular},
    probes::{ProbeError, Probes},
    procmaps::{FileId, ProcMaps},
    target::in_root,
};
use table::FileUnwind;

/// Where a file's table sits in the kernel's maps.
#[derive(Clone, Copy, Debug)]
enum Loaded {
    Table {
        page_base: u32,
        first_page: u32,
        n_pages: u32,
    },
    /// No unwind info: frame pointers.
    FramePointers,
    /// Unreadable, or no room left in the table maps: walks stop there.
    Missing,
}

struct KnownFile {
    loaded: Loaded,
    segments: table::Segments,
}

impl KnownFile {
    /// A file whose table is not in the kernel: walks stop in it.
    fn missing(segments: table::Segments) -> Self {
        KnownFile {
            loaded: Loaded::Missing,
            segments,
        }
    }
}

/// One executable mapping as /proc/PID/maps shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CodeMapping {
    start: u64,
    end: u64,
    offset: u64,
    file: FileId,
    path: PathBuf,
}

#[derive(Default)]
pub struct Unwinder {
    files: HashMap<FileId, KnownFile>,
    /// What each target's kernel entry was last built from.
    pushed: HashMap<u32, Vec<CodeMapping>>,
    rows_used: u32,
    pages_used: u32,
    /// Mappings left out of some process's entry (more than the kernel keeps).
    pub mappings_dropped: u64,
}

impl Unwinder {
    /// Brings `pid`'s executable mappings in the kernel in line with `maps`,
    /// building and loading the tables of files seen for the first time.
    pub fn update(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        maps: &ProcMaps,
    ) -> Result<(), ProbeError> {
        let code: Vec<CodeMapping> = maps
            .code()
            .filter_map(|m| {
                Some(CodeMapping {
                    start: m.start,
                    end: m.end,
                    offset: m.offset,
                    file: m.file?,
                    path: m.path.clone()?,
                })
            })
            .collect();
        // Unchanged, unless an exec made the kernel drop the entry (an image
        // without ASLR maps where the last one did).
        if self.pushed.get(&pid) == Some(&code) && probes.has_mappings(pid) {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(code.len());
        for m in &code {
            if !self.files.contains_key(&m.file) {
                let known = self.load(probes, pid, m)?;
                self.files.insert(m.file, known);
            }
            let known = &self.files[&m.file];
            let Some(vaddr) = known.segments.address_of(m.offset) else {
                debug!("{}: no segment at offset {:#x}", m.path.display(), m.offset);
                continue;
            };
            let mut entry = Mapping {
                start: m.start,
                end: m.end,
                bias: m.start.wrapping_sub(vaddr),
                ..Mapping::default()
            };
            match known.loaded {
                Loaded::Table {
                    page_base,
                    first_page,
                    n_pages,
                } => {
                    entry.page_base = page_base;
                    entry.first_page = first_page;
                    entry.n_pages = n_pages;
                }
                Loaded::FramePointers => {}
                Loaded::Missing => entry.flags = MAPPING_NO_TABLE,
            }
            entries.push(entry);
        }
        entries.sort_by_key(|e| e.start);
        if entries.len() > MAX_MAPPINGS {
            self.mappings_dropped += (entries.len() - MAX_MAPPINGS) as u64;
            warn!(
                "PID {pid}: {} executable mappings, stacks through the last {} end there",
                entries.len(),
                entries.len() - MAX_MAPPINGS
            );
            entries.truncate(MAX_MAPPINGS);
        }
        let mut value = ProcMappings {
            n: entries.len() as u32,
            _pad: 0,
            entries: [Mapping::default(); MAX_MAPPINGS],
        };
        value.entries[..entries.len()].copy_from_slice(&entries);
        probes.set_mappings(pid, &value)?;
        self.pushed.insert(pid, code);
        Ok(())
    }

    /// Forgets a process that has exited (also one whose entry the kernel
    /// copied at its fork before userspace pushed one).
    pub fn remove(&mut self, probes: &mut Probes, pid: u32) {
        self.pushed.remove(&pid);
        probes.remove_mappings(pid);
    }

    /// Reads the file behind mapping `m` of `pid` (the mapped file itself, even
    /// when the path now names another) and loads its table.
    fn load(
        &mut self,
        probes: &mut Probes,
        pid: u32,
        m: &CodeMapping,
    ) -> Result<KnownFile, ProbeError> {
        let mapped = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
        let file = open_regular(&mapped).or_else(|_| {
            let path = in_root(pid, &m.path);
            let file = open_regular(&path)?;
            // The path may name a newer file than the one mapped (an upgrade).
            if FileId::of(&file.metadata()?) == m.file {
                Ok(file)
            } else {
                Err(std::io::Error::other("replaced since it was mapped"))
            }
        });
        let unwind = match file {
            Ok(file) => table::read(&ElfData::new(file)),
            Err(e) => {
                warn!("{}: cannot read its unwind info: {e}", m.path.display());
                return Ok(KnownFile::missing(table::Segments::default()));
            }
        };
        let FileUnwind { table, segments } = match unwind {
            Ok(u) => u,
            Err(e) => {
                warn!(
                    "{}: not an ELF file leaktrace can read: {e}",
                    m.path.display()
                );
                return Ok(KnownFile::missing(table::Segments::default()));
            }
        };
        let table = match table {
            Ok(table) => table,
            Err(e) => {
                warn!(
                    "{}: unwind info not used, stacks stop in it: {e}",
                    m.path.display()
                );
                return Ok(KnownFile::missing(segments));
            }
        };
        let Some(table) = table else {
            debug!("{}: no unwind info, frame pointers", m.path.display());
            return Ok(KnownFile {
                loaded: Loaded::FramePointers,
                segments,
            });
        };
        let (rows_cap, pages_cap) = probes.unwind_capacity();
        let rows = table.rows.len() as u32;
        let pages = table.pages.len() as u32;
        if self.rows_used + rows > rows_cap || self.pages_used + pages > pages_cap {
            warn!(
                "{}: no room for its {rows} unwind rows: stacks stop in it (raise --max-unwind-rows)",
                m.path.display()
            );
            return Ok(KnownFile::missing(segments));
        }
        let row_base = self.rows_used;
        let page_base = self.pages_used;
        probes.append_unwind_rows(row_base, &table.rows)?;
        let index: Vec<PageIndex> = table
            .pages
            .iter()
            .map(|&(lo, hi)| PageIndex {
                lo: lo + row_base,
                hi: hi + row_base,
            })
            .collect();
        probes.append_unwind_pages(page_base, &index)?;
        self.rows_used += rows;
        self.pages_used += pages;
        debug!("{}: {rows} unwind rows, {pages} pages", m.path.display());
        Ok(KnownFile {
            loaded: Loaded::Table {
                page_base,
                first_page: table.first_page,
                n_pages: pages,
            },
            segments,
        })
    }
}
