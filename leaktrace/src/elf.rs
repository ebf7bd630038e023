//! What leaktrace needs from an ELF file: symbols, their file offsets and code,
//! and the libraries it asks for.
//!
//! Files are read on demand, a range at a time, never whole: a binary with
//! gigabytes of debug info costs its headers, symbol tables and the few
//! sections asked for. They are read, not mapped: a target that truncates a
//! file leaktrace has mapped would kill leaktrace (SIGBUS). The file is the
//! target's, so what it can make leaktrace read is bounded: one read at most
//! [`MAX_READ`] bytes, one file at most [`MAX_HELD`] bytes held.
use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    fs::File,
    io::{Cursor, Read, Seek, SeekFrom},
    ops::Range,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use object::{
    Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache, ReadRef, elf,
    read::elf::{
        Dyn as _, ElfFile64, ElfSymbol64, FileHeader as _, ProgramHeader as _, SectionHeader as _,
    },
};

use crate::procmaps::FileId;

/// The most one read of a file may ask for (a section, a symbol table).
pub const MAX_READ: u64 = 256 << 20;
/// The most of one file held in memory at once.
pub const MAX_HELD: u64 = 1 << 30;
/// What a string read outside any string table may hold (see
/// `ReadCache::read_bytes_at_until`), and what each costs besides.
const STRING_MAX: u64 = 4096;
const STRING_COST: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an x86-64 ELF file: {source}")]
    Parse {
        path: PathBuf,
        source: object::Error,
    },
}

/// Where an ELF file's bytes come from: the file, or memory (tests, fuzzing).
enum Source {
    File(File),
    Bytes(Cursor<Vec<u8>>),
}

/// A [`Source`] that counts the bytes read from it.
struct Counted {
    source: Source,
    read: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match &mut self.source {
            Source::File(f) => f.read(buf)?,
            Source::Bytes(b) => b.read(buf)?,
        };
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for Counted {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match &mut self.source {
            Source::File(f) => f.seek(pos),
            Source::Bytes(b) => b.seek(pos),
        }
    }
}

/// What an [`ElfData`] holds: the ranges read (the cache keeps each), the
/// strings read one by one, and their bytes.
#[derive(Default)]
struct Held {
    ranges: HashSet<(u64, u64)>,
    strings: HashSet<(u64, u8)>,
    bytes: u64,
}

/// An ELF file read on demand, through [`object`]'s [`ReadCache`], with
/// bounds: `&ElfData` is an [`object::ReadRef`] that refuses a read of more
/// than [`MAX_READ`] bytes, or one that would make it hold more than
/// [`MAX_HELD`]. A string is read with the whole string table holding it
/// (one read, not one per symbol name).
pub struct ElfData {
    cache: ReadCache<Counted>,
    read: Arc<AtomicU64>,
    held: RefCell<Held>,
    /// The `SHT_STRTAB` sections: where each ends in the file → where the
    /// first that ends there starts (a string is read up to its table's end).
    string_tables: HashMap<u64, u64>,
    limit: u64,
}

impl ElfData {
    /// The ELF file `file` (read from as needed; not read yet).
    pub fn new(file: File) -> Self {
        Self::with(Source::File(file), MAX_HELD)
    }

    /// An ELF file in memory.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        Self::with(Source::Bytes(Cursor::new(data)), MAX_HELD)
    }

    fn with(source: Source, limit: u64) -> Self {
        let read = Arc::new(AtomicU64::new(0));
        let mut data = ElfData {
            cache: ReadCache::new(Counted {
                source,
                read: read.clone(),
            }),
            read,
            held: RefCell::default(),
            string_tables: HashMap::new(),
            limit,
        };
        data.string_tables = data.find_string_tables();
        data
    }

    /// Bytes read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes of the file held in memory.
    pub fn bytes_held(&self) -> u64 {
        self.held.borrow().bytes
    }

    fn find_string_tables(&self) -> HashMap<u64, u64> {
        let mut tables = HashMap::new();
        let Ok(header) = elf::FileHeader64::<Endianness>::parse(self) else {
            return tables;
        };
        let Ok(endian) = header.endian() else {
            return tables;
        };
        let Ok(sections) = header.sections(endian, self) else {
            return tables;
        };
        let ranges = sections
            .iter()
            .filter(|s| s.sh_type(endian) == elf::SHT_STRTAB)
            .filter_map(|s| s.file_range(endian));
        for (offset, size) in ranges {
            if let Some(end) = offset.checked_add(size) {
                let start = tables.entry(end).or_insert(offset);
                *start = offset.min(*start);
            }
        }
        tables
    }

    /// Whether `size` more bytes may be held.
    fn admits(&self, held: &Held, size: u64) -> bool {
        size <= MAX_READ && held.bytes.saturating_add(size) <= self.limit
    }
}

impl<'a> ReadRef<'a> for &'a ElfData {
    fn len(self) -> Result<u64, ()> {
        (&self.cache).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        if size == 0 {
            return Ok(&[]);
        }
        let new = !self.held.borrow().ranges.contains(&(offset, size));
        if new && !self.admits(&self.held.borrow(), size) {
            return Err(());
        }
        let bytes = (&self.cache).read_bytes_at(offset, size)?;
        if new {
            let mut held = self.held.borrow_mut();
            held.ranges.insert((offset, size));
            held.bytes += size;
        }
        Ok(bytes)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        // In a string table: read it whole (once), find the string there.
        if let Some(&start) = self.string_tables.get(&range.end)
            && start <= range.start
            && let Ok(bytes) = self.read_bytes_at(start, range.end - start)
        {
            let rest = bytes
                .get(usize::try_from(range.start - start).map_err(|_| ())?..)
                .ok_or(())?;
            let end = rest.iter().position(|&b| b == delimiter).ok_or(())?;
            return Ok(&rest[..end]);
        }
        // Elsewhere (or a table too big to read whole): by itself.
        let key = (range.start, delimiter);
        let new = !self.held.borrow().strings.contains(&key);
        if new && !self.admits(&self.held.borrow(), STRING_MAX + STRING_COST) {
            return Err(());
        }
        let bytes = (&self.cache).read_bytes_at_until(range, delimiter)?;
        if new {
            let mut held = self.held.borrow_mut();
            held.strings.insert(key);
            held.bytes += bytes.len() as u64 + STRING_COST;
        }
        Ok(bytes)
    }
}

/// A parsed ELF file, read on demand.
pub struct ElfImage {
    pub path: PathBuf,
    data: ElfData,
    /// The file opened (`None` for bytes in memory).
    id: Option<FileId>,
}

type Parsed<'a> = ElfFile64<'a, Endianness, &'a ElfData>;

/// A function found in an ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    /// Virtual address in the file (`st_value`).
    pub address: u64,
    /// Where the first instruction lives in the file: what uprobes attach by.
    pub file_offset: u64,
    /// `st_size`: 0 when the symbol does not say (hand-written assembly).
    pub size: u64,
}

/// A defined function: what [`ElfImage::function`] and
/// [`ElfImage::functions`] look at.
fn is_function<'a>(sym: &ElfSymbol64<'a, '_, Endianness, &'a ElfData>) -> bool {
    sym.is_definition() && sym.kind() == object::SymbolKind::Text
}

/// Whether `sym` is called `name`, versioned or not.
fn is_named<'a>(sym: &ElfSymbol64<'a, '_, Endianness, &'a ElfData>, name: &str) -> bool {
    sym.name().is_ok_and(|n| n.split('@').next() == Some(name))
}

/// Opens `path` for reading: a regular file only (opening a FIFO would wait
/// for a writer, a device could be read forever).
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The identity and GNU build ID (lowercase hex) of the ELF file at `path`,
/// reading its headers and notes only (opening an [`ElfImage`] reads its
/// symbol tables too).
pub fn identify(path: &Path) -> Result<(FileId, Option<String>), ElfError> {
    let read_error = |source| ElfError::Read {
        path: path.into(),
        source,
    };
    let file = open_regular(path).map_err(read_error)?;
    let id = FileId::of(&file.metadata().map_err(read_error)?);
    let data = ElfData::new(file);
    elf::FileHeader64::<Endianness>::parse(&data).map_err(|source| ElfError::Parse {
        path: path.into(),
        source,
    })?;
    Ok((id, gnu_build_id(&data)))
}

/// The `NT_GNU_BUILD_ID` note, from the sections or else the segments (as
/// `object` looks for it), without parsing the symbol tables.
fn gnu_build_id(data: &ElfData) -> Option<String> {
    let header = elf::FileHeader64::<Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let mut notes = Vec::new();
    if sections.is_empty() {
        for segment in header.program_headers(endian, data).ok()? {
            notes.extend(segment.notes(endian, data).ok().flatten());
        }
    } else {
        for section in sections.iter() {
            notes.extend(section.notes(endian, data).ok().flatten());
        }
    }
    for mut iter in notes {
        while let Ok(Some(note)) = iter.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(note.desc().iter().map(|b| format!("{b:02x}")).collect());
            }
        }
    }
    None
}

impl ElfImage {
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let read_error = |source| ElfError::Read {
            path: path.into(),
            source,
        };
        let file = open_regular(path).map_err(read_error)?;
        let id = FileId::of(&file.metadata().map_err(read_error)?);
        let mut image = Self::from_data(path.into(), ElfData::new(file))?;
        image.id = Some(id);
        Ok(image)
    }

    /// The ELF file `data`, read from `path`.
    #[cfg(test)]
    pub fn from_bytes(path: PathBuf, data: Vec<u8>) -> Result<Self, ElfError> {
        Self::from_data(path, ElfData::from_bytes(data))
    }

    fn from_data(path: PathBuf, data: ElfData) -> Result<Self, ElfError> {
        let image = Self {
            path,
            data,
            id: None,
        };
        image.parse()?;
        Ok(image)
    }

    fn parse(&self) -> Result<Parsed<'_>, ElfError> {
        ElfFile64::parse(&self.data).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// The file opened (device and inode), `None` for bytes in memory: what
    /// the file is, whatever its path names now.
    pub fn file_id(&self) -> Option<FileId> {
        self.id
    }

    /// The file as it is read, on demand (what reading it has cost so far).
    #[cfg(test)]
    pub fn data(&self) -> &ElfData {
        &self.data
    }

    /// The GNU build ID as lowercase hex, if the file has one.
    #[cfg(test)]
    pub fn build_id(&self) -> Option<String> {
        gnu_build_id(&self.data)
    }

    /// A defined function named `name`, from `.dynsym` or else `.symtab`
    /// (versioned names like `malloc@@GLIBC_2.2.5` match `malloc`).
    pub fn function(&self, name: &str) -> Option<Function> {
        let file = self.parse().ok()?;
        let sym = file
            .dynamic_symbols()
            .find(|s| is_function(s) && is_named(s, name))
            .or_else(|| file.symbols().find(|s| is_function(s) && is_named(s, name)))?;
        let address = sym.address();
        Some(Function {
            name: name.into(),
            address,
            file_offset: self.file_offset(address)?,
            size: sym.size(),
        })
    }

    /// The defined functions whose names `wanted` maps to a name of ours, in
    /// one pass over `.dynsym` and `.symtab` (`.dynsym` wins; versioned names
    /// are passed without their version).
    pub fn functions(&self, wanted: impl Fn(&str) -> Option<String>) -> HashMap<String, Function> {
        let mut found = HashMap::new();
        let Ok(file) = self.parse() else {
            return found;
        };
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if !is_function(&sym) {
                continue;
            }
            let Some(name) = sym
                .name()
                .ok()
                .and_then(|n| n.split('@').next())
                .and_then(&wanted)
            else {
                continue;
            };
            if found.contains_key(&name) {
                continue;
            }
            let address = sym.address();
            if let Some(file_offset) = self.file_offset(address) {
                found.insert(
                    name.clone(),
                    Function {
                        name,
                        address,
                        file_offset,
                        size: sym.size(),
                    },
                );
            }
        }
        found
    }

    /// `PT_INTERP`: the dynamic loader a dynamic executable asks for.
    pub fn interpreter(&self) -> Option<String> {
        let (_, bytes) = self.section(".interp")?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// The address of a defined symbol of any kind (a variable too), from `.symtab`.
    pub fn symbol_address(&self, name: &str) -> Option<u64> {
        let file = self.parse().ok()?;
        file.symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    }

    /// A section's address and contents (read now; `None` when it is larger
    /// than [`MAX_READ`] or the file holds less).
    pub fn section(&self, name: &str) -> Option<(u64, &[u8])> {
        let file = self.parse().ok()?;
        let section = file.section_by_name(name)?;
        let (offset, size) = section.file_range()?;
        let data = (&self.data).read_bytes_at(offset, size).ok()?;
        Some((section.address(), data))
    }

    /// A section's contents decompressed (Go compresses its DWARF), bounded
    /// like every read: `None` when it would be larger than [`MAX_READ`].
    pub fn uncompressed_section(&self, name: &str) -> Option<Vec<u8>> {
        let file = self.parse().ok()?;
        let section = file.section_by_name(name)?;
        if section.compressed_file_range().ok()?.uncompressed_size > MAX_READ {
            return None;
        }
        Some(section.uncompressed_data().ok()?.into_owned())
    }

    /// A section's `[start, end)` addresses, without reading it.
    pub fn section_range(&self, name: &str) -> Option<(u64, u64)> {
        let file = self.parse().ok()?;
        let section = file.section_by_name(name)?;
        Some((
            section.address(),
            section.address().checked_add(section.size())?,
        ))
    }

    /// A section's address, without reading it.
    pub fn section_address(&self, name: &str) -> Option<u64> {
        let file = self.parse().ok()?;
        Some(file.section_by_name(name)?.address())
    }

    /// The lowest address a loadable segment asks for: where a position-independent
    /// file's load bias is measured from.
    pub fn load_address(&self) -> u64 {
        let Ok(file) = self.parse() else { return 0 };
        file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff
    }

    /// Maps a virtual address to its offset in the file, through the loadable segments.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        let file = self.parse().ok()?;
        file.segments().find_map(|seg| {
            let (offset, size) = seg.file_range();
            let start = seg.address();
            (address >= start && address - start < size).then(|| address - start + offset)
        })
    }

    /// Up to `len` bytes of the file at `offset` (fewer at its end, and at
    /// most [`MAX_READ`]; none when they cannot be read).
    pub fn bytes_at(&self, offset: u64, len: usize) -> &[u8] {
        let Ok(file_len) = (&self.data).len() else {
            return &[];
        };
        let start = offset.min(file_len);
        let len = (len as u64).min(file_len - start).min(MAX_READ);
        (&self.data).read_bytes_at(start, len).unwrap_or(&[])
    }
    /// `DT_NEEDED` entries, in order.
    pub fn needed(&self) -> Vec<String> {
        self.dynamic_strings(elf::DT_NEEDED)
    }

    /// `DT_RUNPATH` and `DT_RPATH` directories, with `$ORIGIN` expanded.
    pub fn run_paths(&self) -> Vec<PathBuf> {
        let origin = self
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .to_string_lossy()
            .into_owned();
        let mut dirs = self.dynamic_strings(elf::DT_RUNPATH);
        dirs.extend(self.dynamic_strings(elf::DT_RPATH));
        dirs.iter()
            .flat_map(|d| d.split(':'))
            .filter(|d| !d.is_empty())
            .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin)))
            .collect()
    }

    /// Whether the file has a `.symtab`, i.e. was not stripped.
    pub fn has_symtab(&self) -> bool {
        self.parse().is_ok_and(|f| f.symbols().next().is_some())
    }

    pub fn is_dynamic(&self) -> bool {
        self.parse()
            .is_ok_and(|f| f.section_by_name(".interp").is_some())
    }

    fn dynamic_strings(&self, tag: u32) -> Vec<String> {
        let Ok(file) = self.parse() else {
            return Vec::new();
        };
        let endian = file.endian();
        let Some(dynamic) = file
            .elf_section_table()
            .iter()
            .find(|s| s.sh_type(endian) == elf::SHT_DYNAMIC)
        else {
            return Vec::new();
        };
        let Ok(Some((entries, link))) = dynamic.dynamic(endian, &self.data) else {
            return Vec::new();
        };
        let Ok(strings) = file.elf_section_table().strings(endian, &self.data, link) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|d| d.d_tag(endian) as u32 == tag)
            .filter_map(|d| strings.get(u32::try_from(d.d_val(endian)).ok()?).ok())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Write, os::unix::fs::FileExt};

    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    /// A fresh directory for one test's files.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leaktrace-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The section header of `name` in `data`: where its `sh_offset` and
    /// `sh_size` fields are in the file.
    fn header_fields(data: &[u8], name: &str) -> (u64, u64) {
        let file = ElfFile64::<Endianness>::parse(data).unwrap();
        let index = file.section_by_name(name).unwrap().index().0 as u64;
        let shoff = file.elf_header().e_shoff.get(file.endian());
        let header = shoff + 64 * index;
        (header + 0x18, header + 0x20)
    }

    /// What allocator discovery asks of libc.
    fn query(image: &ElfImage) -> (Option<String>, Vec<String>, HashMap<String, Function>) {
        let wanted = |n: &str| {
            ["malloc", "free", "calloc", "realloc", "_exit"]
                .contains(&n)
                .then(|| n.to_string())
        };
        (image.build_id(), image.needed(), image.functions(wanted))
    }

    #[test]
    fn libc_is_read_in_parts_with_the_same_answers() {
        let size = fs::metadata(LIBC).unwrap().len();
        let image = ElfImage::open(Path::new(LIBC)).unwrap();
        let answers = query(&image);
        assert!(image.function("malloc").is_some());
        let read = image.data().bytes_read();
        assert!(read < size / 4, "{read} of {size} bytes read");
        assert_eq!(image.file_id(), FileId::of_path(Path::new(LIBC)));
        // The build ID alone: the notes, hardly anything else.
        let (id, build_id) = identify(Path::new(LIBC)).unwrap();
        assert_eq!((Some(id), build_id), (image.file_id(), image.build_id()));
        // Symbol names come from their string tables, read whole once.
        assert!(image.data().held.borrow().strings.is_empty());

        let whole = ElfImage::from_bytes(LIBC.into(), fs::read(LIBC).unwrap()).unwrap();
        assert_eq!(query(&whole), answers);
        assert!(answers.0.is_some() && answers.2.len() == 5, "{answers:?}");
        // And object itself, from the bytes, agrees.
        let data = fs::read(LIBC).unwrap();
        let file = ElfFile64::<Endianness>::parse(&*data).unwrap();
        let malloc = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok("malloc"))
            .unwrap();
        assert_eq!(answers.2["malloc"].address, malloc.address());
    }

    /// libc with the section `name` moved past its end and made `size` bytes
    /// long: a file (sparse) of over 4 GiB.
    fn with_huge_section(dir: &Path, name: &str, size: u64) -> PathBuf {
        let data = fs::read(LIBC).unwrap();
        let (offset_at, size_at) = header_fields(&data, name);
        let path = dir.join(name.trim_start_matches('.'));
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(&data).unwrap();
        let far = 4u64 << 30;
        file.write_all_at(&far.to_le_bytes(), offset_at).unwrap();
        file.write_all_at(&size.to_le_bytes(), size_at).unwrap();
        file.set_len(far + size).unwrap();
        path
    }

    #[test]
    fn a_huge_section_is_refused_unread() {
        let dir = scratch("huge-section");
        // A section asked for by name.
        let path = with_huge_section(&dir, ".gnu_debuglink", MAX_READ + 1);
        let image = ElfImage::open(&path).unwrap();
        assert_eq!(image.section(".gnu_debuglink"), None);
        assert!(image.function("malloc").is_some(), "the rest still reads");
        assert!(
            image.data().bytes_read() < 1 << 20,
            "{}",
            image.data().bytes_read()
        );
        // A symbol table every query reads: the file is refused.
        let path = with_huge_section(&dir, ".dynsym", 3 << 30);
        let Err(ElfError::Parse { .. }) = ElfImage::open(&path) else {
            panic!("a 3 GiB .dynsym was read");
        };
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_a_file_makes_held_is_bounded() {
        let data = ElfData::with(Source::Bytes(Cursor::new(vec![7; 1 << 20])), 64 << 10);
        // Looking for an ELF header read some.
        let before = data.bytes_held();
        let mut read = 0;
        for i in 0..64 {
            if (&data).read_bytes_at(i * 4096, 4096).is_ok() {
                read += 1;
            }
        }
        assert_eq!(read, ((64 << 10) - before) / 4096, "64 KiB held at most");
        assert!(data.bytes_held() <= 64 << 10);
        // What is held can still be read.
        assert_eq!((&data).read_bytes_at(0, 4096).map(<[u8]>::len), Ok(4096));
        // One read larger than MAX_READ is refused whatever the limit.
        let data = ElfData::with(Source::Bytes(Cursor::new(Vec::new())), u64::MAX);
        assert!((&data).read_bytes_at(0, MAX_READ + 1).is_err());
        assert_eq!(data.bytes_read(), 0);
    }

    #[test]
    fn only_regular_files_are_opened() {
        let dir = scratch("fifo");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Would wait for a writer if opened for reading as usual.
        assert!(matches!(ElfImage::open(&fifo), Err(ElfError::Read { .. })));
        assert!(ElfImage::open(Path::new("/dev/zero")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
