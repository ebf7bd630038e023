//! Turning return addresses into frames: module + offset via the target's memory
//! map, then function, file, line and inlined frames via blazesym.
//!
//! Results are cached per (mapped file, file offset), so ASLR and PIE do not
//! matter and every target sharing libc shares its symbols. A mapped file is
//! known by its identity (device and inode, from the memory map), not by its
//! path: two containers can map different files at one path (`/usr/bin/app`),
//! and an upgrade puts a new file at the old one's path.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    CodeInfo, Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Source},
};
use serde::Serialize;

use crate::{
    elf::{self, ElfError, ElfImage},
    golang::Pclntab,
    procmaps::{FileId, Mapping, ProcMaps},
    target::mapped_file,
};

/// A symbolized stack, innermost frame first: shared by a site and every
/// report of it, its frames shared with the other stacks through the same code.
pub type Frames = Arc<[Arc<Frame>]>;

/// One stack frame, innermost first in a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The file the code lives in; `None` when no mapping covers the address.
    pub module: Option<String>,
    /// Offset in `module` (the absolute address when there is no module).
    #[serde(serialize_with = "hex")]
    pub address: u64,
    /// The function was inlined into the next frame.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

impl Frame {
    /// A frame that only says something ("[opened before attach]").
    pub fn note(text: &str) -> Arc<Self> {
        Arc::new(Frame {
            function: Some(text.into()),
            file: None,
            line: None,
            module: None,
            address: 0,
            inlined: false,
        })
    }

    /// `function (file:line)`, or `module+0xoffset` when there is no symbol.
    pub fn short(&self) -> String {
        let place = match (&self.file, self.line) {
            (Some(file), Some(line)) => {
                let name = Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                format!(" ({}:{line})", name.unwrap_or_else(|| file.clone()))
            }
            _ => String::new(),
        };
        match &self.function {
            Some(f) => format!("{f}{place}"),
            None => self.location(),
        }
    }

    /// Whether this is the program's own code, not its language's runtime
    /// or standard library, a system library, or a note: what a site is
    /// named after in tables (see [`headline`]).
    pub fn is_own_code(&self) -> bool {
        let Some(f) = self.function.as_deref() else {
            // Unnamed code: own code when it is in no system library.
            return self.module.is_some() && !self.in_system_library();
        };
        let note = self.module.is_none() && self.address == 0;
        !(note
            || self.in_system_library()
            // C and C++ reserve these names for the implementation.
            || f.starts_with("__")
            || f == "_start"
            || RUNTIME_PREFIXES.iter().any(|p| f.starts_with(p))
            || is_go_std(f))
    }

    /// In a library the system installed (the C library and its loader,
    /// libstdc++, libgcc…), not in the program's executable.
    fn in_system_library(&self) -> bool {
        let Some(m) = self.module.as_deref() else {
            return false;
        };
        let dirs = ["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/"];
        let name = Path::new(m).file_name().map(|n| n.to_string_lossy());
        dirs.iter().any(|d| m.starts_with(d))
            && name.is_some_and(|n| n.starts_with("lib") || n.starts_with("ld-"))
    }

    pub fn location(&self) -> String {
        match &self.module {
            Some(m) => {
                let name = Path::new(m)
                    .file_name()
                    .map_or(m.clone(), |n| n.to_string_lossy().into_owned());
                format!("{name}+{:#x}", self.address)
            }
            None => format!("{:#x}", self.address),
        }
    }
}

/// Functions of C++'s, Rust's and cgo's runtime and standard library.
const RUNTIME_PREFIXES: &[&str] = &[
    "std::",
    "<std::",
    "core::",
    "<core::",
    "alloc::",
    "<alloc::",
    "hashbrown::",
    "__gnu_cxx::",
    "operator new",
    "operator delete",
    "_cgo_",
    "x_cgo_",
];

/// Go's standard library: its packages' first path element (user packages
/// are `main` or under a module path).
const GO_STD: &[&str] = &[
    "archive",
    "bufio",
    "bytes",
    "cmp",
    "compress",
    "container",
    "context",
    "crypto",
    "database",
    "debug",
    "embed",
    "encoding",
    "errors",
    "expvar",
    "flag",
    "fmt",
    "go",
    "hash",
    "html",
    "image",
    "index",
    "internal",
    "io",
    "iter",
    "log",
    "maps",
    "math",
    "mime",
    "net",
    "os",
    "path",
    "plugin",
    "reflect",
    "regexp",
    "runtime",
    "slices",
    "sort",
    "strconv",
    "strings",
    "structs",
    "sync",
    "syscall",
    "testing",
    "text",
    "time",
    "unicode",
    "unique",
    "unsafe",
    "vendor",
    "weak",
];

/// `net/http.(*Client).Do`, `runtime.mallocgc`, `internal/poll.(*FD).Read`:
/// a Go standard-library function.
fn is_go_std(f: &str) -> bool {
    // The package path ends at the first '.' after its last '/'.
    let slash = f.rfind('/').map_or(0, |i| i + 1);
    let Some(dot) = f[slash..].find('.') else {
        return false;
    };
    let path = &f[..slash + dot];
    let first = path.split('/').next().unwrap_or(path);
    GO_STD.contains(&first) && !f.contains(' ') && !f.contains("::")
}

/// The index of the first frame of the program's own code in `frames`
/// (innermost first), else 0: what tables name a site after, past allocator
/// wrappers, system-call wrappers and the runtime.
pub fn headline(frames: &[Arc<Frame>]) -> usize {
    frames.iter().position(|f| f.is_own_code()).unwrap_or(0)
}

/// A file that code was mapped from, as leaktrace can open it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Module {
    /// Path as the target sees it (shown to the user).
    shown: PathBuf,
    /// Path we open (through /proc/PID/root for other mount namespaces, or
    /// /proc/PID/map_files when the path names another file now).
    open: PathBuf,
    /// The mapped file; `None` when the memory map does not say.
    file: Option<FileId>,
}

/// What is known of a file's contents is kept under: its identity, or when
/// that is not known, a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum FileKey {
    Id(FileId),
    Path(PathBuf),
}

impl FileKey {
    fn of(file: Option<FileId>, path: &Path) -> Self {
        file.map_or_else(|| FileKey::Path(path.to_path_buf()), FileKey::Id)
    }
}

/// Frames are kept under the mapped file (its identity; the path when it has
/// none), the path shown in them, and the file offset.
type FrameKey = (Option<FileId>, PathBuf, u64);

pub struct Symbolizer {
    blaze: Blaze,
    /// Go function tables of modules, for Go binaries without other symbols.
    go_tables: HashMap<FileKey, Option<Pclntab>>,
    /// Frames by mapped file and offset: sites through the same code share them.
    cache: HashMap<FrameKey, Vec<Arc<Frame>>>,
    build_ids: HashMap<FileKey, Option<String>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        let blaze = Blaze::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        Self {
            blaze,
            go_tables: HashMap::new(),
            cache: HashMap::new(),
            build_ids: HashMap::new(),
        }
    }

    /// The build ID of the file `pid` maps at `m` (cached per file; `None`
    /// also when the file mapped cannot be opened now).
    pub fn build_id(&mut self, pid: u32, m: &Mapping) -> Option<String> {
        let key = FileKey::of(m.file, m.path.as_deref()?);
        if let Some(known) = self.build_ids.get(&key) {
            return known.clone();
        }
        let id = match elf::identify(&mapped_file(pid, m)?) {
            // What the path names now may not be what was mapped.
            Ok((file, _)) if m.file.is_some_and(|m| m != file) => return None,
            Ok((_, build_id)) => build_id,
            // Another process may still let it be opened.
            Err(ElfError::Read { .. }) => return None,
            Err(ElfError::Parse { .. }) => None,
        };
        self.build_ids.insert(key, id.clone());
        id
    }

    /// Frames for a stack of return addresses of process `pid`, innermost first.
    pub fn stack(&mut self, pid: u32, maps: &ProcMaps, return_addrs: &[u64]) -> Vec<Arc<Frame>> {
        return_addrs
            .iter()
            .flat_map(|&addr| self.frames(pid, maps, addr))
            .collect()
    }

    /// The frames (one, or more with inlining) at one return address.
    fn frames(&mut self, pid: u32, maps: &ProcMaps, addr: u64) -> Vec<Arc<Frame>> {
        let unknown = || {
            vec![Arc::new(Frame {
                function: None,
                file: None,
                line: None,
                module: None,
                address: addr,
                inlined: false,
            })]
        };
        let Some((mapping, shown, offset)) = locate(maps, addr) else {
            return unknown();
        };
        let key = (mapping.file, shown.clone(), offset);
        if let Some(frames) = self.cache.get(&key) {
            return frames.clone();
        }
        let Some(module) = module(pid, mapping) else {
            return unknown();
        };
        let frames: Vec<Arc<Frame>> = self
            .lookup(&module, offset)
            .into_iter()
            .map(Arc::new)
            .collect();
        self.cache.insert(key, frames.clone());
        frames
    }

    /// The name of the function whose first instruction is at `entry`.
    pub fn function_at(&mut self, pid: u32, maps: &ProcMaps, entry: u64) -> Option<String> {
        let (module, offset) = resolve(pid, maps, entry)?;
        let src = Source::Elf(Elf::new(&module.open));
        match self.blaze.symbolize_single(&src, Input::FileOffset(offset)) {
            Ok(Symbolized::Sym(sym)) => Some(sym.name.to_string()),
            _ => self.go_name(&module, offset),
        }
    }

    /// The Go function at `offset` of `module`, from its pclntab (stripped Go binaries).
    fn go_name(&mut self, module: &Module, offset: u64) -> Option<String> {
        Some(self.go_table(module)?.name_at_offset(offset)?.to_string())
    }

    /// `module`'s pclntab, read once.
    fn go_table(&mut self, module: &Module) -> Option<&Pclntab> {
        self.go_tables
            .entry(FileKey::of(module.file, &module.open))
            .or_insert_with(|| Pclntab::read(&ElfImage::open(&module.open).ok()?))
            .as_ref()
    }

    fn lookup(&mut self, module: &Module, offset: u64) -> Vec<Frame> {
        let shown = module.shown.to_string_lossy().into_owned();
        let bare = Frame {
            function: None,
            file: None,
            line: None,
            module: Some(shown.clone()),
            address: offset,
            inlined: false,
        };
        let src = Source::Elf(Elf::new(&module.open));
        // A return address points after the call: look up the call itself.
        let input = Input::FileOffset(offset.saturating_sub(1));
        let Ok(Symbolized::Sym(sym)) = self.blaze.symbolize_single(&src, input) else {
            // A stripped Go binary: its pclntab names the function, its file and line.
            let call = offset.saturating_sub(1);
            let Some(table) = self.go_table(module) else {
                return vec![bare];
            };
            let function = table.name_at_offset(call).map(str::to_string);
            let (file, line) = table
                .line_at_offset(call)
                .map_or((None, None), |(file, line)| (Some(file), Some(line)));
            return vec![Frame {
                function,
                file,
                line,
                ..bare
            }];
        };
        let with_code = |name: &str, code: Option<&CodeInfo<'_>>, inlined: bool| {
            let (file, line) = code.map_or((None, None), |c| (Some(code_path(c)), c.line));
            Frame {
                function: Some(name.to_string()),
                file,
                line,
                inlined,
                ..bare.clone()
            }
        };
        // blazesym lists inlined calls outermost first; frames go innermost first.
        let mut frames: Vec<Frame> = sym
            .inlined
            .iter()
            .rev()
            .map(|f| with_code(&f.name, f.code_info.as_ref(), true))
            .collect();
        frames.push(with_code(&sym.name, sym.code_info.as_deref(), false));
        frames
    }
}

fn code_path(code: &CodeInfo<'_>) -> String {
    match &code.dir {
        Some(dir) => dir.join(&*code.file).to_string_lossy().into_owned(),
        None => Path::new(&*code.file).to_string_lossy().into_owned(),
    }
}

/// The file mapping holding `addr`, its path, and the file offset of `addr`.
fn locate(maps: &ProcMaps, addr: u64) -> Option<(&Mapping, &PathBuf, u64)> {
    let mapping = maps.lookup(addr)?;
    let path = mapping.path.as_ref()?;
    Some((mapping, path, addr - mapping.start + mapping.offset))
}

/// The file `pid` maps at `mapping`, as leaktrace can open it.
fn module(pid: u32, mapping: &Mapping) -> Option<Module> {
    Some(Module {
        shown: mapping.path.clone()?,
        open: mapped_file(pid, mapping)?,
        file: mapping.file,
    })
}

fn resolve(pid: u32, maps: &ProcMaps, addr: u64) -> Option<(Module, u64)> {
    let (mapping, _, offset) = locate(maps, addr)?;
    Some((module(pid, mapping)?, offset))
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
    const LOADER: &str = "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";

    /// A memory map with one code mapping at 0x7f0000000000 of the file now at
    /// `path`, as a process that mapped it would show it.
    fn mapping_of(path: &Path) -> ProcMaps {
        let meta = fs::metadata(path).unwrap();
        ProcMaps::parse(&format!(
            "7f0000000000-7f0000400000 r-xp 00000000 {:x}:{:x} {} {}\n",
            libc::major(meta.dev()),
            libc::minor(meta.dev()),
            meta.ino(),
            path.display()
        ))
    }

    #[test]
    fn files_at_one_path_are_told_apart_by_their_identity() {
        let dir = std::env::temp_dir().join(format!("leaktrace-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let app = dir.join("app");
        let pid = std::process::id();
        let malloc = ElfImage::open(Path::new(LIBC))
            .unwrap()
            .function("malloc")
            .unwrap()
            .file_offset;
        // A return address just past malloc's first byte.
        let addr = 0x7f00_0000_0000 + malloc + 1;
        let mut sym = Symbolizer::new();

        // One container (or before an upgrade): libc at /…/app.
        fs::copy(LIBC, &app).unwrap();
        let first = mapping_of(&app);
        let libc_frames = sym.stack(pid, &first, &[addr]);
        let name = libc_frames[0].function.clone();
        assert!(
            name.as_deref().is_some_and(|n| n.contains("malloc")),
            "{name:?}"
        );
        let m = first.lookup(addr).unwrap().clone();
        let libc_id = sym.build_id(pid, &m);
        assert_eq!(libc_id, ElfImage::open(Path::new(LIBC)).unwrap().build_id());

        // Another one: another file at the same path, the same offset in it.
        fs::rename(&app, dir.join("old")).unwrap();
        fs::copy(LOADER, &app).unwrap();
        let second = mapping_of(&app);
        assert_ne!(second.lookup(addr).unwrap().file, m.file);
        let frames = sym.stack(pid, &second, &[addr]);
        assert_eq!(frames[0].module, libc_frames[0].module, "same path shown");
        assert_ne!(frames[0].function, name, "not the other file's frame");
        let loader_id = sym.build_id(pid, second.lookup(addr).unwrap());
        assert_eq!(
            loader_id,
            ElfImage::open(Path::new(LOADER)).unwrap().build_id()
        );
        assert_ne!(loader_id, libc_id);

        // The first process's frames and build ID are still its file's.
        assert_eq!(sym.stack(pid, &first, &[addr]), libc_frames);
        assert_eq!(sym.build_id(pid, &m), libc_id);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn at(function: &str, module: &str) -> Arc<Frame> {
        Arc::new(Frame {
            function: Some(function.into()),
            file: None,
            line: None,
            module: Some(module.into()),
            address: 0x1234,
            inlined: false,
        })
    }

    #[test]
    fn own_code_is_told_from_runtimes_and_system_libraries() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let exe = "/srv/app";
        for (function, module, own) in [
            ("list_node", exe, true),
            ("__GI___mmap64", libc, false),
            ("open", libc, false),
            (
                "operator new(unsigned long)",
                "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
                false,
            ),
            ("std::vector<int>::_M_realloc_insert", exe, false),
            ("__libc_start_main_impl", exe, false),
            ("_start", exe, false),
            ("internal/runtime/syscall/linux.Syscall6", exe, false),
            ("syscall.Syscall6", exe, false),
            ("os.(*File).Write", exe, false),
            ("net/http.(*Client).Do", exe, false),
            ("runtime.mallocgc", exe, false),
            ("main.openFileNoClose", exe, true),
            ("main.main.gowrap1", exe, true),
            ("github.com/acme/store.(*DB).Open", exe, true),
            ("myapp/internal/db.Open", exe, true),
            ("rust_leaks::make_row", exe, true),
            ("alloc::raw_vec::finish_grow", exe, false),
            (
                "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
                exe,
                false,
            ),
            ("redisMain", "/usr/bin/redis-server", true),
            ("plugin_alloc", "/opt/app/lib/libplugin.so", true),
        ] {
            assert_eq!(
                at(function, module).is_own_code(),
                own,
                "{function} in {module}"
            );
        }
        assert!(!Frame::note("[opened before attach]").is_own_code());
        let frames = [
            at("__mmap64", libc),
            at("map_big_request", exe),
            at("main", exe),
        ];
        assert_eq!(headline(&frames), 1);
        assert_eq!(headline(&frames[..1]), 0, "none own: the first");
    }
}
