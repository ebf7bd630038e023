//! Mutation fuzzing of every parser of target-controlled (or kernel) data, in
//! the unit tests: real inputs (this machine's libc, a Go toolchain binary,
//! the kernel's BTF, /proc files), a few bytes changed and the rest
//! truncated, most changes where the parser looks first (headers, tables),
//! for `LEAKTRACE_FUZZ_MS` milliseconds per parser (default 2000). A parser
//! may refuse an input; it may not panic, and no input may take it longer
//! than a second. A panicking input is kept in target/fuzz-crashes/.
use std::{
    ops::Range,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    btf,
    elf::{ElfData, ElfImage},
    golang, placement,
    procmaps::ProcMaps,
    target,
    testrng::Rng,
    unwind,
};

fn budget() -> Duration {
    let ms = std::env::var("LEAKTRACE_FUZZ_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    Duration::from_millis(ms)
}

/// `seed` changed at 1–8 places (in `hot` ranges three times out of four:
/// 0, ~0, small and huge values, random bytes), then maybe truncated.
fn mutate(rng: &mut Rng, seed: &[u8], hot: &[Range<usize>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = match hot.get(rng.below(hot.len() * 4 / 3 + 1)) {
            Some(r) if !r.is_empty() => r.start + rng.below(r.len()),
            _ => rng.below(data.len()),
        };
        let value: [u8; 8] = match rng.below(5) {
            0 => [0; 8],
            1 => [0xff; 8],
            2 => (rng.next() % 64).to_le_bytes(),
            3 => (1u64 << (32 + rng.below(31))).to_le_bytes(),
            _ => rng.next().to_le_bytes(),
        };
        let width = [1, 2, 4, 8][rng.below(4)];
        for (i, b) in value.iter().take(width).enumerate() {
            if let Some(slot) = data.get_mut(at + i) {
                *slot = *b;
            }
        }
    }
    if rng.below(8) == 0 {
        data.truncate(rng.below(data.len() + 1));
    }
    data
}

/// Feeds mutants of `seed` to `parse` for the fuzzing budget.
fn fuzz(name: &str, seed: &[u8], hot: &[Range<usize>], parse: impl Fn(Vec<u8>)) {
    assert!(!seed.is_empty(), "{name}: no seed input");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < budget() {
        let input = mutate(&mut rng, seed, hot);
        let one = Instant::now();
        if catch_unwind(AssertUnwindSafe(|| parse(input.clone()))).is_err() {
            panic!("{name}: panicked on {}", keep(name, &input).display());
        }
        let took = one.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "{name}: {took:?} on {}",
            keep(name, &input).display()
        );
        runs += 1;
    }
    eprintln!("fuzz {name}: {runs} inputs");
    assert!(runs > 0);
}

fn keep(name: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let _ = std::fs::write(&path, input);
    path
}

/// The ELF header, program and section header tables, and the sections named.
fn elf_hot(data: &[u8], sections: &[&str]) -> Vec<Range<usize>> {
    let mut hot = Vec::new();
    hot.push(0..64);
    let Ok(image) = ElfImage::from_bytes("seed".into(), data.to_vec()) else {
        return hot;
    };
    let u = |at: usize, n: usize| -> usize {
        data.get(at..at + n).map_or(0, |b| {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(b);
            u64::from_le_bytes(v) as usize
        })
    };
    let (phoff, shoff) = (u(0x20, 8), u(0x28, 8));
    hot.push(phoff..phoff + 56 * u(0x38, 2));
    hot.push(shoff..shoff + 64 * u(0x3c, 2));
    for name in sections {
        if let Some((address, bytes)) = image.section(name)
            && let Some(offset) = image.file_offset(address)
        {
            let offset = offset as usize;
            hot.push(offset..offset + bytes.len().min(4096));
        }
    }
    hot
}

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

/// The queries leaktrace makes of an ELF file it maps or probes.
fn query_elf(data: Vec<u8>) {
    let Ok(image) = ElfImage::from_bytes("mutant".into(), data) else {
        return;
    };
    let _ = image.build_id();
    let _ = image.interpreter();
    let _ = image.needed();
    let _ = image.run_paths();
    let _ = image.functions(|n| n.starts_with("mall").then(|| n.to_string()));
    if let Some(f) = image.function("free") {
        let code = image.bytes_at(f.file_offset, 256);
        let _ = placement::place(code, f.address, &[0]);
    }
}

#[test]
fn elf_files() {
    let seed = std::fs::read(LIBC).unwrap();
    let hot = elf_hot(
        &seed,
        &[".dynamic", ".dynsym", ".dynstr", ".note.gnu.build-id"],
    );
    fuzz("elf", &seed, &hot, query_elf);
}

#[test]
fn unwind_tables() {
    let seed = std::fs::read(LIBC).unwrap();
    let hot = elf_hot(&seed, &[".eh_frame_hdr", ".eh_frame"]);
    fuzz("unwind", &seed, &hot, |data| {
        if let Ok(file) = unwind::table::read(&ElfData::from_bytes(data))
            && let Ok(Some(table)) = &file.table
        {
            let _ = table.row_at(0x1000);
        }
    });
}

/// A Go program of the toolchain setup installs (gofmt: stripped, as
/// production Go binaries often are).
fn go_binary() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/toolchains");
    let found = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e} (cargo xtask setup installs Go)", root.display()))
        .filter_map(Result::ok)
        .map(|d| d.path().join("lib/python3.11/site-packages/go/bin/gofmt"))
        .find(|p| p.exists())
        .expect("a Go toolchain's gofmt");
    std::fs::read(found).unwrap()
}

#[test]
fn go_runtime_tables() {
    let seed = go_binary();
    let hot = elf_hot(&seed, &[".gopclntab", ".go.buildinfo", ".noptrdata"]);
    fuzz("go", &seed, &hot, |data| {
        let Ok(image) = ElfImage::from_bytes("mutant".into(), data) else {
            return;
        };
        if let Some(table) = golang::Pclntab::read(&image) {
            let _ = table.function("runtime.newproc");
            let _ = table.name_at_offset(0x1000);
            // The pc-value tables, at the start of a function and past it.
            if let Some((start, _)) = table.function("runtime.newproc") {
                let _ = table.line_at_offset(start.wrapping_sub(0x400000));
                let _ = table.line_at_offset(start.wrapping_sub(0x400000) + 40);
            }
            let _ = table.line_at_offset(0x2000);
        }
        let _ = golang::GoRuntime::inspect(&image);
    });
}

#[test]
fn kernel_btf() {
    let Ok(seed) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        return; // a kernel without BTF: leaktrace does not read it either
    };
    // The header, the first types, and around task_struct's.
    let at = seed
        .windows(12)
        .position(|w| w == b"task_struct\0")
        .unwrap_or(0);
    let hot = [0..24, 24..4096, at.saturating_sub(2048)..at];
    fuzz("btf", &seed, &hot, |data| {
        let _ = btf::field_offset_in(&data, "task_struct", "tgid");
    });
}

#[test]
fn proc_files() {
    let maps = std::fs::read("/proc/self/maps").unwrap();
    fuzz("maps", &maps, &[], |data| {
        let parsed = ProcMaps::parse(&String::from_utf8_lossy(&data));
        let _ = parsed.lookup(0x40_0000);
        let _ = parsed.find_file("libc.so.6");
        let _ = parsed.code().count();
    });
    let stat = std::fs::read("/proc/self/stat").unwrap();
    fuzz("stat", &stat, &[], |data| {
        let _ = target::parse_stat(&String::from_utf8_lossy(&data));
    });
}
