//! What leaktrace needs from an ELF file: symbols, their file offsets and code,
//! and the libraries it asks for.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, elf,
    read::elf::{Dyn as _, ElfFile64, SectionHeader as _},
};

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

/// A parsed ELF file, kept as bytes so symbols can be read repeatedly.
pub struct ElfImage {
    pub path: PathBuf,
    data: Vec<u8>,
}

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

impl ElfImage {
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let data = fs::read(path).map_err(|source| ElfError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_bytes(path.into(), data)
    }

    /// The ELF file `data`, read from `path`.
    pub fn from_bytes(path: PathBuf, data: Vec<u8>) -> Result<Self, ElfError> {
        let image = Self { path, data };
        image.parse()?;
        Ok(image)
    }

    fn parse(&self) -> Result<ElfFile64<'_>, ElfError> {
        ElfFile64::parse(&*self.data).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// The GNU build ID as lowercase hex, if the file has one.
    pub fn build_id(&self) -> Option<String> {
        let id = self.parse().ok()?.build_id().ok()??;
        Some(id.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A defined function named `name`, from `.dynsym` or else `.symtab`
    /// (versioned names like `malloc@@GLIBC_2.2.5` match `malloc`).
    pub fn function(&self, name: &str) -> Option<Function> {
        let file = self.parse().ok()?;
        let matches = |sym: &object::read::elf::ElfSymbol64<'_, '_>| {
            sym.is_definition()
                && sym.kind() == object::SymbolKind::Text
                && sym.name().is_ok_and(|n| n.split('@').next() == Some(name))
        };
        let sym = file
            .dynamic_symbols()
            .find(|s| matches(s))
            .or_else(|| file.symbols().find(|s| matches(s)))?;
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
            if !sym.is_definition() || sym.kind() != object::SymbolKind::Text {
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

    /// A section's address and contents.
    pub fn section(&self, name: &str) -> Option<(u64, &[u8])> {
        let file = self.parse().ok()?;
        let section = file.section_by_name(name)?;
        let (offset, size) = section.file_range()?;
        let data = self.data.get(offset as usize..(offset + size) as usize)?;
        Some((section.address(), data))
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

    /// Up to `len` bytes of the file at `offset`.
    pub fn bytes_at(&self, offset: u64, len: usize) -> &[u8] {
        let start = (offset as usize).min(self.data.len());
        &self.data[start..(start + len).min(self.data.len())]
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
        let Ok(Some((entries, link))) = dynamic.dynamic(endian, &*self.data) else {
            return Vec::new();
        };
        let Ok(strings) = file.elf_section_table().strings(endian, &*self.data, link) else {
            return Vec::new();
        };
        entries
            .iter()
            .filter(|d| d.d_tag(endian) as u32 == tag)
            .filter_map(|d| d.string(endian, strings).ok())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }
}
