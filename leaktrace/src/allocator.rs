//! Which allocators a target really uses, and where to probe them.
//!
//! A process may allocate through several at once, and each is probed:
//! - the `malloc` the dynamic linker binds: found by searching the way it
//!   does (the executable, `LD_PRELOAD`, then `DT_NEEDED` breadth-first, then
//!   the loader itself, which is musl's libc): glibc, musl, or jemalloc,
//!   tcmalloc or mimalloc replacing it, or a malloc linked into the program;
//! - prefixed allocator APIs called directly, in any file: jemalloc's `je_`
//!   and `_rjem_` (Rust's tikv-jemallocator), tcmalloc's `tc_`, mimalloc's
//!   `mi_` (Rust's mimalloc crate);
//! - C++'s `operator new`/`delete` where an allocator library defines the
//!   ones that bind (libstdc++'s call `malloc`, probed already);
//! - Rust's allocator shim (`__rust_alloc` & co.) in a program with a
//!   `#[global_allocator]` none of the above covers.
//!
//! A call that reaches another probed function (a shim calling `malloc`, `new`
//! calling `malloc`) is counted once, by the outermost call
//! (leaktrace-ebpf/src/alloc.rs).
use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    path::{Path, PathBuf},
};

use leaktrace_common::programs;

use crate::{
    elf::{ElfError, ElfImage, Function},
    placement,
    procmaps::FileId,
};

/// One allocator function: its name, the eBPF program that handles it, and
/// which of its arguments (System V order) the program reads as its slots.
struct Api {
    name: &'static str,
    program: &'static str,
    slots: &'static [usize],
}

const fn api(name: &'static str, program: &'static str, slots: &'static [usize]) -> Api {
    Api {
        name,
        program,
        slots,
    }
}

/// Programs that only release memory: no return probe.
const FREE: &str = programs::FREE_ENTER;
const MALLOC: &str = programs::MALLOC_ENTER;
const CALLOC: &str = programs::CALLOC_ENTER;
const REALLOC: &str = programs::REALLOC_ENTER;
const REALLOCARRAY: &str = programs::REALLOCARRAY_ENTER;
const MEMALIGN: &str = programs::MEMALIGN_ENTER;
const POSIX_MEMALIGN: &str = programs::POSIX_MEMALIGN_ENTER;

/// The C library's names, also those of every allocator that replaces it.
const LIBC: &[Api] = &[
    api("malloc", MALLOC, &[0]),
    api("calloc", CALLOC, &[0, 1]),
    api("realloc", REALLOC, &[0, 1]),
    api("reallocarray", REALLOCARRAY, &[0, 1, 2]),
    api("posix_memalign", POSIX_MEMALIGN, &[0, 1, 2]),
    api("aligned_alloc", MEMALIGN, &[0, 1]),
    api("memalign", MEMALIGN, &[0, 1]),
    api("valloc", MALLOC, &[0]),
    api("pvalloc", MALLOC, &[0]),
    api("free", FREE, &[0]),
];

/// jemalloc's own API. `xallocx` (resize in place) is not followed: a block
/// it grows keeps its old size in the report.
const JEMALLOC: &[Api] = &[
    api("mallocx", MALLOC, &[0]),
    api("rallocx", REALLOC, &[0, 1]),
    api("sdallocx", FREE, &[0]),
    api("dallocx", FREE, &[0]),
];

const TCMALLOC: &[Api] = &[
    api("new", MALLOC, &[0]),
    api("newarray", MALLOC, &[0]),
    api("new_nothrow", MALLOC, &[0]),
    api("newarray_nothrow", MALLOC, &[0]),
    api("malloc_skip_new_handler", MALLOC, &[0]),
    api("delete", FREE, &[0]),
    api("deletearray", FREE, &[0]),
    api("delete_nothrow", FREE, &[0]),
    api("deletearray_nothrow", FREE, &[0]),
    api("delete_sized", FREE, &[0]),
    api("deletearray_sized", FREE, &[0]),
    api("free_sized", FREE, &[0]),
];

/// mimalloc's own API (its `mi_heap_*` functions, taking an explicit heap,
/// are not probed).
const MIMALLOC: &[Api] = &[
    api("zalloc", MALLOC, &[0]),
    api("mallocn", CALLOC, &[0, 1]),
    api("malloc_aligned", MALLOC, &[0]),
    api("malloc_aligned_at", MALLOC, &[0]),
    api("zalloc_aligned", MALLOC, &[0]),
    api("zalloc_aligned_at", MALLOC, &[0]),
    api("calloc_aligned", CALLOC, &[0, 1]),
    api("calloc_aligned_at", CALLOC, &[0, 1]),
    api("realloc_aligned", REALLOC, &[0, 1]),
    api("realloc_aligned_at", REALLOC, &[0, 1]),
    api("rezalloc", REALLOC, &[0, 1]),
    api("rezalloc_aligned", REALLOC, &[0, 1]),
    api("reallocn", REALLOCARRAY, &[0, 1, 2]),
    api("recalloc", REALLOCARRAY, &[0, 1, 2]),
    api("reallocf", REALLOC, &[0, 1]),
    api("new", MALLOC, &[0]),
    api("new_aligned", MALLOC, &[0]),
    api("new_nothrow", MALLOC, &[0]),
    api("new_aligned_nothrow", MALLOC, &[0]),
    api("new_n", CALLOC, &[0, 1]),
    api("new_realloc", REALLOC, &[0, 1]),
    api("new_reallocn", REALLOCARRAY, &[0, 1, 2]),
    api("free_size", FREE, &[0]),
    api("free_aligned", FREE, &[0]),
    api("free_size_aligned", FREE, &[0]),
];

/// C++'s replaceable allocation functions (Itanium names).
const CXX: &[Api] = &[
    api("_Znwm", MALLOC, &[0]),
    api("_Znam", MALLOC, &[0]),
    api("_ZnwmRKSt9nothrow_t", MALLOC, &[0]),
    api("_ZnamRKSt9nothrow_t", MALLOC, &[0]),
    api("_ZnwmSt11align_val_t", MALLOC, &[0]),
    api("_ZnamSt11align_val_t", MALLOC, &[0]),
    api("_ZnwmSt11align_val_tRKSt9nothrow_t", MALLOC, &[0]),
    api("_ZnamSt11align_val_tRKSt9nothrow_t", MALLOC, &[0]),
    api("_ZdlPv", FREE, &[0]),
    api("_ZdaPv", FREE, &[0]),
    api("_ZdlPvm", FREE, &[0]),
    api("_ZdaPvm", FREE, &[0]),
    api("_ZdlPvRKSt9nothrow_t", FREE, &[0]),
    api("_ZdaPvRKSt9nothrow_t", FREE, &[0]),
    api("_ZdlPvSt11align_val_t", FREE, &[0]),
    api("_ZdaPvSt11align_val_t", FREE, &[0]),
    api("_ZdlPvmSt11align_val_t", FREE, &[0]),
    api("_ZdaPvmSt11align_val_t", FREE, &[0]),
    api("_ZdlPvSt11align_val_tRKSt9nothrow_t", FREE, &[0]),
    api("_ZdaPvSt11align_val_tRKSt9nothrow_t", FREE, &[0]),
];

/// Rust's allocator shim: what every Rust allocation calls, whatever the
/// `#[global_allocator]`. `__rust_realloc(ptr, old_size, align, new_size)`.
const RUST_SHIM: &[Api] = &[
    api("__rust_alloc", MALLOC, &[0]),
    api("__rust_alloc_zeroed", MALLOC, &[0]),
    api("__rust_realloc", REALLOC, &[0, 3]),
    api("__rust_dealloc", FREE, &[0]),
];

/// The shim's default allocator (the system's `malloc`): present when the
/// program has no `#[global_allocator]`.
const RUST_DEFAULT: &str = "__rdl_alloc";

/// Prefixed APIs: the prefix, the family, and the names past the C library's.
const PREFIXED: &[(&str, Family, &[Api])] = &[
    ("je_", Family::Jemalloc, JEMALLOC),
    ("_rjem_", Family::Jemalloc, JEMALLOC),
    ("tc_", Family::Tcmalloc, TCMALLOC),
    ("mi_", Family::Mimalloc, MIMALLOC),
];

/// Symbols that tell which allocator defines a plain `malloc`.
const MARKERS: &[(&str, Family)] = &[
    ("mallocx", Family::Jemalloc),
    ("tc_malloc", Family::Tcmalloc),
    ("mi_malloc", Family::Mimalloc),
    // mallocng, statically linked
    ("__libc_malloc_impl", Family::Musl),
    ("__malloc_alloc_meta", Family::Musl),
    ("gnu_get_libc_version", Family::Glibc),
    ("__libc_malloc", Family::Glibc),
];

/// Allocators leaktrace does not probe, by a function each defines.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("rpmalloc", "rpmalloc"),
    ("rpmalloc_initialize", "rpmalloc"),
    ("sn_rust_alloc", "snmalloc"),
    ("scalable_malloc", "TBB's scalable allocator"),
    ("xxmalloc", "Hoard"),
    ("GC_malloc", "the Boehm garbage collector"),
    ("mspace_malloc", "dlmalloc mspaces"),
    ("tlsf_malloc", "TLSF"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Glibc,
    Musl,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
    /// Rust's shim in front of a `#[global_allocator]` leaktrace does not know.
    RustGlobal,
    /// A `malloc` of unknown origin (linked into the program, stripped…).
    Other,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Glibc => "glibc",
            Family::Musl => "musl",
            Family::Jemalloc => "jemalloc",
            Family::Tcmalloc => "tcmalloc",
            Family::Mimalloc => "mimalloc",
            Family::RustGlobal => "Rust global allocator",
            Family::Other => "malloc",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(
        "{exe} has no allocator leaktrace knows: no malloc in it or the libraries it loads{hint}"
    )]
    NotFound { exe: PathBuf, hint: &'static str },
}

/// One probe to attach: the program, the file and the offset in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub program: &'static str,
    pub function: String,
    /// Whether the program also gets a return probe (at the same point).
    pub returns: bool,
    pub file_offset: u64,
    /// Bytes between the function's start and the probes (see [`placement`]).
    pub shift: u64,
    /// Where the program finds its arguments (leaktrace-common's `args`); 0:
    /// in the ABI's registers.
    pub cookie: u64,
}

/// One allocator of a target: a family, in one file, with its probes.
#[derive(Clone, Debug)]
pub struct Allocator {
    pub family: Family,
    /// The symbol prefixes of its API probed (`_rjem_`), besides plain names.
    pub prefixes: Vec<&'static str>,
    /// The file that defines it (path as leaktrace can open it).
    pub path: PathBuf,
    pub points: Vec<ProbePoint>,
    /// Functions no emulated instruction could be found in: their probes
    /// are single-stepped, a second trap per call.
    pub stepped: Vec<String>,
}

impl Allocator {
    /// The single-stepped functions that run on every allocation or free
    /// (not the rare ones: memalign, posix_memalign, reallocarray).
    pub fn stepped_hot(&self) -> Vec<&str> {
        self.points
            .iter()
            .filter(|p| matches!(p.program, MALLOC | CALLOC | REALLOC | FREE))
            .filter(|p| self.stepped.contains(&p.function))
            .map(|p| p.function.as_str())
            .collect()
    }

    /// "jemalloc (_rjem_*) in /srv/app".
    pub fn describe(&self) -> String {
        describe(&self.family.to_string(), &self.prefixes, &self.path)
    }
}

/// "jemalloc (_rjem_*, je_*) in /srv/app": an allocator as logs and reports
/// name it.
pub fn describe(name: &str, prefixes: &[impl AsRef<str>], file: &Path) -> String {
    let prefixes: Vec<String> = prefixes
        .iter()
        .map(|p| format!("{}*", p.as_ref()))
        .collect();
    let prefixes = if prefixes.is_empty() {
        String::new()
    } else {
        format!(" ({})", prefixes.join(", "))
    };
    format!("{name}{prefixes} in {}", file.display())
}

/// Where a process ends through its C library: `_exit`, which every `exit`
/// and return from `main` goes through. Probed to stop the process there for
/// the reachability scan of its heap (leaktrace-ebpf/src/exit.rs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitPoint {
    pub path: PathBuf,
    pub file_offset: u64,
}

/// What discovery found in a target.
#[derive(Clone, Debug, Default)]
pub struct Found {
    pub allocators: Vec<Allocator>,
    /// The first `_exit` in the search order (the executable, then its libraries).
    pub exit: Option<ExitPoint>,
    /// Allocators seen and not probed: "rpmalloc in /srv/app".
    pub unsupported: Vec<String>,
    /// The files looked at: a library mapped later is looked at once.
    pub files: HashSet<FileId>,
}

impl Found {
    /// Adds what was found in one more file.
    pub fn extend(&mut self, more: Found) {
        self.allocators.extend(more.allocators);
        self.exit = self.exit.take().or(more.exit);
        self.unsupported.extend(more.unsupported);
        self.files.extend(more.files);
    }
}

/// Finds the allocators of `exe`. `preload` are the `LD_PRELOAD` entries and
/// `find_library` turns a `DT_NEEDED` name into a path (from the target's memory
/// map for running processes, from the library search path for new ones).
pub fn find(
    exe: &Path,
    preload: &[PathBuf],
    find_library: &dyn Fn(&str, &ElfImage) -> Option<PathBuf>,
) -> Result<Found, AllocatorError> {
    let root = ElfImage::open(exe)?;
    let exe_dynamic = root.is_dynamic();
    let exe_stripped = !root.has_symtab();
    let interpreter = root.interpreter();
    let loader = interpreter.as_deref().and_then(|i| find_library(i, &root));
    let musl = interpreter
        .as_deref()
        .is_some_and(|i| i.contains("ld-musl"));
    let mut queue: VecDeque<PathBuf> = preload.iter().cloned().collect();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    // One file under two paths (a symlink, /lib and /usr/lib) is looked at once.
    let mut seen_files: HashSet<FileId> = root.file_id().into_iter().collect();
    let mut found = Found::default();
    let mut plain_bound = false;
    let mut new_bound = false;
    let mut image = Some(root);
    // The loader's symbols come last (musl's loader is its libc).
    let mut loader_last = loader.clone();
    loop {
        let current = match image.take() {
            Some(img) => img,
            None => {
                let next = queue.pop_front().or_else(|| loader_last.take());
                let Some(path) = next else { break };
                if !seen.insert(path.clone()) {
                    continue;
                }
                match ElfImage::open(&path) {
                    Ok(img) if img.file_id().is_none_or(|id| seen_files.insert(id)) => img,
                    _ => continue,
                }
            }
        };
        found.extend(inspect(&current, &mut plain_bound, &mut new_bound));
        if found.exit.is_none() {
            found.exit = current.function("_exit").map(|f| ExitPoint {
                path: current.path.clone(),
                file_offset: f.file_offset,
            });
        }
        for name in current.needed() {
            // musl's loader is also the `libc.so` its programs ask for.
            let path = if musl && name.starts_with("libc.") {
                loader.clone()
            } else {
                find_library(&name, &current)
            };
            queue.extend(path);
        }
    }
    if found.allocators.is_empty() {
        let hint = if !exe_dynamic && exe_stripped {
            " (it is statically linked and stripped: its malloc has no symbol to probe)"
        } else if !exe_dynamic {
            " (it is statically linked; a Go program allocates from its own heap: use --no-heap)"
        } else {
            ""
        };
        return Err(AllocatorError::NotFound {
            exe: exe.into(),
            hint,
        });
    }
    Ok(found)
}

/// The allocators of a library loaded after the program started (`dlopen`):
/// its prefixed APIs and Rust shim. Its plain `malloc`, if any, is not the one
/// the program's calls bind.
pub fn find_loaded(image: &ElfImage) -> Found {
    inspect(image, &mut true, &mut true)
}

/// The allocators `image` defines. `plain_bound`/`new_bound`: whether a file
/// earlier in the search already defines the `malloc`/`operator new` that bind.
fn inspect(image: &ElfImage, plain_bound: &mut bool, new_bound: &mut bool) -> Found {
    let mut file = FileProbes {
        image,
        functions: image.functions(wanted),
        taken: HashSet::new(),
        allocators: Vec::new(),
    };
    let has = |file: &FileProbes, name: &str| file.functions.contains_key(name);
    let defines_malloc = has(&file, "malloc");
    let mut own_family = None;
    if defines_malloc && !*plain_bound {
        *plain_bound = true;
        let family = MARKERS
            .iter()
            .find(|(marker, _)| has(&file, marker))
            .map(|&(_, family)| family)
            .unwrap_or(if is_musl(image) {
                Family::Musl
            } else {
                Family::Other
            });
        let extra: &'static [Api] = if family == Family::Jemalloc {
            JEMALLOC
        } else {
            &[]
        };
        file.add(family, "", plain(LIBC.iter().chain(extra)));
        own_family = Some(family);
    }
    for &(prefix, family, extra) in PREFIXED {
        let apis = LIBC
            .iter()
            .chain(extra)
            .map(|a| (format!("{prefix}{}", a.name), a));
        if file.add(family, prefix, apis) {
            own_family.get_or_insert(family);
        }
    }
    if has(&file, "_Znwm") && !*new_bound {
        *new_bound = true;
        // An allocator library's own operator new; libstdc++'s calls malloc,
        // probed already.
        if let Some(family) = own_family.or(defines_malloc.then_some(Family::Other)) {
            file.add(family, "", plain(CXX.iter()));
        }
    }
    let custom_global = has(&file, "__rust_alloc") && !has(&file, RUST_DEFAULT);
    let shim = custom_global
        && own_family.is_none()
        && file.add(Family::RustGlobal, "", plain(RUST_SHIM.iter()));
    let mut unsupported = Vec::new();
    if !shim {
        for &(marker, name) in UNSUPPORTED {
            let line = format!("{name} in {}", image.path.display());
            if has(&file, marker) && !unsupported.contains(&line) {
                unsupported.push(line);
            }
        }
    }
    Found {
        exit: None,
        allocators: file.allocators,
        unsupported,
        files: image.file_id().into_iter().collect(),
    }
}

/// The probes being chosen in one file.
struct FileProbes<'a> {
    image: &'a ElfImage,
    functions: HashMap<String, Function>,
    /// Function offsets probed already: aliases (glibc's memalign is
    /// aligned_alloc, tcmalloc's malloc is tc_malloc) share one probe.
    taken: HashSet<u64>,
    allocators: Vec<Allocator>,
}

impl FileProbes<'_> {
    /// Adds the probes for `apis` (the symbol to look up, and its entry) to
    /// `family`'s allocator in this file; whether any was found.
    fn add<'t>(
        &mut self,
        family: Family,
        prefix: &'static str,
        apis: impl Iterator<Item = (String, &'t Api)>,
    ) -> bool {
        let mut points = Vec::new();
        let mut stepped = Vec::new();
        for (symbol, api) in apis {
            let Some(function) = self.functions.get(&symbol) else {
                continue;
            };
            if !self.taken.insert(function.file_offset) {
                continue;
            }
            let len = if function.size == 0 {
                64
            } else {
                function.size.min(4096) as usize
            };
            let code = self.image.bytes_at(function.file_offset, len);
            let placed = placement::place(code, function.address, api.slots);
            if !placed.emulated {
                stepped.push(symbol.clone());
            }
            points.push(ProbePoint {
                program: api.program,
                function: symbol,
                returns: api.program != FREE,
                file_offset: function.file_offset,
                shift: placed.shift,
                cookie: placed.cookie,
            });
        }
        if points.is_empty() {
            return false;
        }
        let at = match self.allocators.iter().position(|a| a.family == family) {
            Some(at) => at,
            None => {
                self.allocators.push(Allocator {
                    family,
                    prefixes: Vec::new(),
                    path: self.image.path.clone(),
                    points: Vec::new(),
                    stepped: Vec::new(),
                });
                self.allocators.len() - 1
            }
        };
        let allocator = &mut self.allocators[at];
        if !prefix.is_empty() && !allocator.prefixes.contains(&prefix) {
            allocator.prefixes.push(prefix);
        }
        allocator.points.extend(points);
        allocator.stepped.extend(stepped);
        true
    }
}

/// Entries looked up by their own (unprefixed) names.
fn plain<'t>(apis: impl Iterator<Item = &'t Api>) -> impl Iterator<Item = (String, &'t Api)> {
    apis.map(|a| (a.name.to_string(), a))
}

/// The names `inspect` looks up, as one set for a single pass over the
/// symbols (Rust's v0-mangled shim symbols map to their plain names).
fn wanted(symbol: &str) -> Option<String> {
    static NAMES: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(|| {
        let mut names: HashSet<String> = LIBC
            .iter()
            .chain(JEMALLOC)
            .chain(CXX)
            .chain(RUST_SHIM)
            .map(|a| a.name)
            .chain(MARKERS.iter().map(|m| m.0))
            .chain(UNSUPPORTED.iter().map(|u| u.0))
            .chain([RUST_DEFAULT])
            .map(str::to_string)
            .collect();
        for &(prefix, _, extra) in PREFIXED {
            names.extend(
                LIBC.iter()
                    .chain(extra)
                    .map(|a| format!("{prefix}{}", a.name)),
            );
        }
        names
    });
    if NAMES.contains(symbol) {
        return Some(symbol.to_string());
    }
    // v0 mangling: `_RNvCs…_7___rustc12___rust_alloc` ends in the name's
    // length, a `_` (the name starts with one), and the name.
    if symbol.starts_with("_R") {
        return RUST_SHIM
            .iter()
            .map(|a| a.name)
            .chain([RUST_DEFAULT])
            .find(|name| {
                symbol
                    .strip_suffix(name)
                    .and_then(|rest| rest.strip_suffix('_'))
                    .is_some_and(|rest| rest.ends_with(&name.len().to_string()))
            })
            .map(str::to_string);
    }
    None
}

/// musl's dynamic libc exports no marker of its own: it is the loader.
fn is_musl(image: &ElfImage) -> bool {
    image
        .path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("musl"))
        || image.path.to_string_lossy().contains("-linux-musl/")
}

/// The libraries named in an `LD_PRELOAD` value (colon- or space-separated).
pub fn preload_paths(value: &str) -> impl Iterator<Item = &Path> {
    value
        .split([':', ' '])
        .filter(|s| !s.is_empty())
        .map(Path::new)
}

/// Library search for a program not started yet: `LD_LIBRARY_PATH`, the
/// requesting file's run paths, then the system directories.
pub fn search_library(name: &str, requester: &ElfImage) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let env_dirs = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
        .unwrap_or_default();
    let system = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
        "/usr/local/lib",
    ];
    env_dirs
        .into_iter()
        .chain(requester.run_paths())
        .chain(system.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(found: &Found) -> Vec<Family> {
        found.allocators.iter().map(|a| a.family).collect()
    }

    #[test]
    fn finds_glibc_malloc_for_a_dynamic_program() {
        let found = find(Path::new("/bin/sh"), &[], &search_library).expect("allocator");
        assert_eq!(families(&found), [Family::Glibc]);
        let alloc = &found.allocators[0];
        assert!(alloc.path.to_string_lossy().contains("libc"), "{alloc:?}");
        let names: Vec<_> = alloc.points.iter().map(|p| p.function.as_str()).collect();
        assert!(
            names.contains(&"malloc") && names.contains(&"free"),
            "{names:?}"
        );
    }

    #[test]
    fn a_preloaded_allocator_binds_before_the_c_library() {
        let tcmalloc = Path::new("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4");
        if !tcmalloc.exists() {
            eprintln!("skipped: no {} (cargo xtask setup)", tcmalloc.display());
            return;
        }
        let found =
            find(Path::new("/bin/sh"), &[tcmalloc.into()], &search_library).expect("allocator");
        // Its plain names, tc_ names and operator new are one allocator; the
        // C library's malloc is not called.
        assert_eq!(families(&found), [Family::Tcmalloc]);
        let tc = &found.allocators[0];
        assert_eq!(tc.path, tcmalloc);
        let names: Vec<_> = tc.points.iter().map(|p| p.function.as_str()).collect();
        assert!(
            names.contains(&"malloc") && names.contains(&"free"),
            "{names:?}"
        );
        // Aliases (malloc is tc_malloc, _ZdlPv is free) are probed once.
        let offsets: HashSet<u64> = tc.points.iter().map(|p| p.file_offset).collect();
        assert_eq!(offsets.len(), tc.points.len());
        let new = ElfImage::open(tcmalloc).unwrap().function("_Znwm").unwrap();
        assert!(offsets.contains(&new.file_offset), "operator new probed");
    }

    #[test]
    fn rust_shim_names_are_found_through_v0_mangling() {
        assert_eq!(
            wanted("_RNvCsfLfy6EI15iL_7___rustc12___rust_alloc").as_deref(),
            Some("__rust_alloc")
        );
        assert_eq!(
            wanted("_RNvCsfLfy6EI15iL_7___rustc14___rust_realloc").as_deref(),
            Some("__rust_realloc")
        );
        assert_eq!(
            wanted("_RNvCsfLfy6EI15iL_7___rustc11___rdl_alloc").as_deref(),
            Some(RUST_DEFAULT)
        );
        assert_eq!(wanted("_RNvCs_7___rustc13___rust_alloc").as_deref(), None);
        assert_eq!(wanted("_rjem_mallocx").as_deref(), Some("_rjem_mallocx"));
        assert_eq!(wanted("je_malloc_conf").as_deref(), None);
    }
}
