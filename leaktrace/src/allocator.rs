//! Which allocator a target really uses, and where to probe it.
//!
//! The dynamic linker resolves `malloc` by searching the executable, then
//! `LD_PRELOAD`, then the `DT_NEEDED` libraries breadth-first. We search the same
//! way: a statically linked program, one that exports its own malloc, or one
//! linked against jemalloc/tcmalloc/mimalloc is probed where its malloc lives.
use std::{
    collections::{HashSet, VecDeque},
    path::{Path, PathBuf},
};

use crate::{
    elf::{ElfError, ElfImage, Function},
    placement,
};

/// The entry points leaktrace probes, with the eBPF program that handles each.
/// `free_like` marks functions where a NULL first argument does nothing.
pub const ENTRY_POINTS: &[(&str, &str)] = &[
    ("malloc", "malloc_enter"),
    ("calloc", "calloc_enter"),
    ("realloc", "realloc_enter"),
    ("reallocarray", "reallocarray_enter"),
    ("posix_memalign", "posix_memalign_enter"),
    ("aligned_alloc", "memalign_enter"),
    ("memalign", "memalign_enter"),
    ("valloc", "malloc_enter"),
    ("pvalloc", "malloc_enter"),
    ("free", "free_enter"),
];

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
    /// Whether the program also gets a return probe (at the function's start).
    pub returns: bool,
    pub file_offset: u64,
    /// Bytes between the function's start and the entry probe (see [`placement`]).
    pub shift: u64,
}

/// The allocator of one target.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// The file that defines malloc (path as leaktrace can open it).
    pub path: PathBuf,
    pub points: Vec<ProbePoint>,
}

/// Finds the allocator of `exe`. `preload` are the `LD_PRELOAD` entries and
/// `find_library` turns a `DT_NEEDED` name into a path (from the target's memory
/// map for running processes, from the library search path for new ones).
pub fn find(
    exe: &Path,
    preload: &[PathBuf],
    find_library: &dyn Fn(&str, &ElfImage) -> Option<PathBuf>,
) -> Result<Allocator, AllocatorError> {
    let root = ElfImage::open(exe)?;
    let mut queue: VecDeque<PathBuf> = preload.iter().cloned().collect();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut image = Some(root);
    let exe_image_dynamic = image.as_ref().is_some_and(ElfImage::is_dynamic);
    let exe_stripped = image.as_ref().is_some_and(|i| !i.has_symtab());
    while let Some(current) = image.take().or_else(|| {
        while let Some(path) = queue.pop_front() {
            if seen.insert(path.clone())
                && let Ok(img) = ElfImage::open(&path)
            {
                return Some(img);
            }
        }
        None
    }) {
        if current.function("malloc").is_some() {
            return Ok(Allocator {
                points: probe_points(&current),
                path: current.path.clone(),
            });
        }
        for name in current.needed() {
            if let Some(path) = find_library(&name, &current) {
                queue.push_back(path);
            }
        }
    }
    let hint = if !exe_image_dynamic && exe_stripped {
        " (it is statically linked and stripped: its malloc has no symbol to probe)"
    } else if !exe_image_dynamic {
        " (it is statically linked; a Go program allocates from its own heap: use --no-heap)"
    } else {
        ""
    };
    Err(AllocatorError::NotFound {
        exe: exe.into(),
        hint,
    })
}

fn probe_points(image: &ElfImage) -> Vec<ProbePoint> {
    let mut points: Vec<ProbePoint> = Vec::new();
    for &(name, program) in ENTRY_POINTS {
        let Some(Function {
            file_offset,
            address,
            ..
        }) = image.function(name)
        else {
            continue;
        };
        // Aliases (glibc's memalign is aligned_alloc) share one probe.
        if points.iter().any(|p| p.file_offset == file_offset) {
            continue;
        }
        let is_free = name == "free";
        let code = image.bytes_at(file_offset, 32);
        let shift = placement::entry_offset(code, address, is_free);
        points.push(ProbePoint {
            program,
            function: name.into(),
            returns: !is_free,
            file_offset,
            shift,
        });
    }
    points
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

    #[test]
    fn finds_glibc_malloc_for_a_dynamic_program() {
        let exe = Path::new("/bin/sh");
        let alloc = find(exe, &[], &search_library).expect("allocator");
        assert!(alloc.path.to_string_lossy().contains("libc"), "{alloc:?}");
        let names: Vec<_> = alloc.points.iter().map(|p| p.function.as_str()).collect();
        assert!(
            names.contains(&"malloc") && names.contains(&"free"),
            "{names:?}"
        );
    }
}
