//! A live process's memory for the reachability scan: its roots from
//! `/proc/PID/maps` and its threads' stack pointers, its bytes with
//! `process_vm_readv`, pages it never touched skipped with `/proc/PID/pagemap`.
use std::{
    fs::File,
    io,
    ops::Range,
    os::unix::fs::FileExt,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{Block, Class, Memory, OverBudget, classify};

const PAGE: u64 = 4096;
/// Below the stack pointer: the x86-64 red zone, which a leaf function uses.
const RED_ZONE: u64 = 128;
/// Bytes read per `process_vm_readv` at most.
const READ_BYTES: usize = 1 << 20;
/// Remote ranges per `process_vm_readv` (the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 1024;
/// Ranges this long or longer are first looked up in the page map.
const SPARSE_FROM: u64 = 64 << 10;
/// A writable mapping larger than this (sanitizer shadows, reservations) is
/// not scanned: counted in [`ScanStats::skipped_mappings`].
const MAX_MAPPING: u64 = 64 << 30;
/// Threads whose stack pointer is read at most.
const MAX_THREADS: usize = 65_536;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ScanStats {
    /// Blocks classified.
    pub blocks: u64,
    /// Bytes read from the target, roots and blocks.
    pub bytes_read: u64,
    /// Bytes of root regions (writable memory that is not a tracked block).
    pub root_bytes: u64,
    /// Threads whose stack is scanned from their stack pointer up; the others'
    /// (running, unreadable) whole.
    pub threads_from_sp: u64,
    pub threads: u64,
    /// Writable mappings too large to scan (> 64 GiB).
    pub skipped_mappings: u64,
    pub ms: f64,
}

/// What the process that exits (or runs) holds: each block's class, in the
/// order given.
pub struct Scanned {
    pub classes: Vec<Class>,
    pub stats: ScanStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading its memory map: {0}")]
    Maps(io::Error),
    #[error("its memory is gone (it has exited)")]
    Gone,
    /// Reading a page userfaultfd watches waits for the process's own
    /// handler: a stopped (or hostile) process would hold leaktrace forever.
    #[error("it has memory registered with userfaultfd, which leaktrace does not read")]
    UserFaults,
    #[error("{0}")]
    OverBudget(#[from] OverBudget),
}

/// Classifies `blocks` (any order) of process `pid`. `regs` are register
/// values known to the scan (the exiting thread's), `budget` caps the bytes
/// read. `complete`: `blocks` are every block the process's allocator has
/// handed out and not taken back (traced from its exec, nothing lost): the
/// rest of the brk heap is then the allocator's own, free memory with stale
/// pointers in it, and not a root.
pub fn scan(
    pid: u32,
    blocks: &[Block],
    regs: &[u64],
    budget: u64,
    complete: bool,
) -> Result<Scanned, ScanError> {
    let started = Instant::now();
    let mut order: Vec<usize> = (0..blocks.len()).collect();
    order.sort_unstable_by_key(|&i| blocks[i].addr);
    let sorted: Vec<Block> = order.iter().map(|&i| blocks[i]).collect();
    let mut stats = ScanStats {
        blocks: blocks.len() as u64,
        ..ScanStats::default()
    };
    // smaps: the memory map with each mapping's flags.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(ScanError::Maps)?;
    let mut sps = thread_stack_pointers(pid, &mut stats);
    // The exiting thread's, from its registers (rsp is the 8th).
    sps.extend(regs.get(7));
    if maps.is_empty() {
        return Err(ScanError::Gone);
    }
    let Roots {
        ranges: mut roots,
        brk,
    } = roots(&maps, &sps, &mut stats)?;
    if complete && let Some(brk) = brk {
        // What the program put there before its first block (a static
        // binary's thread-local storage) stays a root.
        let first = sorted[sorted.partition_point(|b| b.addr < brk.start)..]
            .first()
            .map_or(brk.end, |b| b.addr.clamp(brk.start, brk.end));
        for r in roots.iter_mut().filter(|r| **r == brk) {
            r.end = first;
        }
        roots.retain(|r| r.start < r.end);
    }
    stats.root_bytes = roots.iter().map(|r| r.end - r.start).sum();
    let mut memory = ProcessMemory::new(pid);
    let classes = classify(&sorted, &roots, regs, &mut memory, budget)?;
    let mut out = vec![Class::Reachable; blocks.len()];
    for (k, &i) in order.iter().enumerate() {
        out[i] = classes[k];
    }
    stats.bytes_read = memory.bytes_read();
    stats.ms = duration_ms(started.elapsed());
    Ok(Scanned {
        classes: out,
        stats,
    })
}

fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// One mapping of `/proc/PID/smaps`.
struct Mapped<'a> {
    start: u64,
    end: u64,
    perms: &'a str,
    path: &'a str,
    /// Its `VmFlags` (two letters each), when given.
    flags: &'a str,
}

/// The mappings of `/proc/PID/smaps` text (or `/proc/PID/maps`, without flags).
fn mappings(smaps: &str) -> Vec<Mapped<'_>> {
    let mut out: Vec<Mapped> = Vec::new();
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(m) = out.last_mut() {
                m.flags = flags;
            }
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        out.push(Mapped {
            start,
            end,
            perms,
            path: fields.nth(3).unwrap_or(""),
            flags: "",
        });
    }
    out
}

/// The root regions in a memory map (`/proc/PID/smaps` text): every readable,
/// writable mapping but the kernel's and devices'; a stack holding one of
/// `sps` from that pointer (less the red zone) up. Sorted, disjoint; and the
/// brk heap's (`[heap]`) among them.
fn roots(maps: &str, sps: &[u64], stats: &mut ScanStats) -> Result<Roots, ScanError> {
    let mut roots = Vec::new();
    let mut brk = None;
    for m in mappings(maps) {
        let flag = |f: &str| m.flags.split_ascii_whitespace().any(|x| x == f);
        if flag("um") || flag("uw") || flag("ui") {
            return Err(ScanError::UserFaults);
        }
        let (start, end, path) = (m.start, m.end, m.path);
        if !m.perms.starts_with("rw") || start >= end {
            continue;
        }
        let device = path.starts_with("/dev/") && !path.starts_with("/dev/shm/")
            || path.starts_with("[vvar")
            || path == "[vsyscall]"
            || flag("io")
            || flag("pf");
        if device && path != "/dev/zero" {
            continue;
        }
        if end - start > MAX_MAPPING {
            stats.skipped_mappings += 1;
            continue;
        }
        let from = sps
            .iter()
            .filter(|&&sp| sp >= start && sp < end)
            .map(|&sp| sp.saturating_sub(RED_ZONE).max(start))
            .min()
            .unwrap_or(start);
        if path == "[heap]" {
            brk = Some(from..end);
        }
        roots.push(from..end);
    }
    roots.sort_unstable_by_key(|r| r.start);
    Ok(Roots { ranges: roots, brk })
}

/// Root regions, sorted and disjoint, and the brk heap's among them.
struct Roots {
    ranges: Vec<Range<u64>>,
    brk: Option<Range<u64>>,
}

/// Each thread's user stack pointer, from `/proc/PID/task/TID/syscall` (known
/// for a thread stopped or blocked in a system call, not for one running).
fn thread_stack_pointers(pid: u32, stats: &mut ScanStats) -> Vec<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut sps = Vec::new();
    for task in tasks.flatten().take(MAX_THREADS) {
        stats.threads += 1;
        let mut buf = [0u8; 256];
        let Ok(n) = File::open(task.path().join("syscall")).and_then(|f| f.read_at(&mut buf, 0))
        else {
            continue;
        };
        if let Some(sp) = syscall_sp(&buf[..n]) {
            sps.push(sp);
            stats.threads_from_sp += 1;
        }
    }
    sps
}

/// The stack pointer in a `/proc/PID/task/TID/syscall` line: "NR ARGS… SP PC",
/// or "-1 SP PC" outside a system call; "running" has none.
fn syscall_sp(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let sp = fields[fields.len() - 2].strip_prefix("0x")?;
    u64::from_str_radix(sp, 16).ok().filter(|&sp| sp != 0)
}

/// Reads `ranges` of process `pid`'s memory (1,024 to a `process_vm_readv`),
/// calling `each` with what could be read: a range that faults comes in
/// pieces, or not at all.
pub fn read_ranges(pid: u32, ranges: &[Range<u64>], each: &mut dyn FnMut(u64, &[u8])) {
    ProcessMemory::new(pid).read(ranges, each);
}

/// Another process's memory, read with `process_vm_readv`.
struct ProcessMemory {
    pid: u32,
    /// `/proc/PID/pagemap`: which pages are present or swapped.
    pagemap: Option<File>,
    buf: Vec<u8>,
    read: u64,
}

impl ProcessMemory {
    fn new(pid: u32) -> Self {
        Self {
            pid,
            pagemap: File::open(format!("/proc/{pid}/pagemap")).ok(),
            buf: vec![0; READ_BYTES],
            read: 0,
        }
    }

    /// The parts of `range` in pages the process has touched (present or
    /// swapped): untouched pages of private memory hold zeros or the file's
    /// bytes, never a pointer into the heap.
    fn touched(&self, range: &Range<u64>, out: &mut Vec<Range<u64>>) {
        let Some(pagemap) = self
            .pagemap
            .as_ref()
            .filter(|_| range.end - range.start >= SPARSE_FROM)
        else {
            out.push(range.clone());
            return;
        };
        let first = range.start / PAGE;
        let last = range.end.div_ceil(PAGE);
        let mut entries = vec![0u8; 8 * 8192];
        let mut page = first;
        let mut run: Option<u64> = None;
        while page < last {
            let n = ((last - page) as usize).min(8192);
            let bytes = &mut entries[..8 * n];
            if pagemap.read_exact_at(bytes, page * 8).is_err() {
                // Unknown: read it all.
                out.push((page * PAGE).max(range.start)..range.end);
                return;
            }
            for (k, e) in bytes.chunks_exact(8).enumerate() {
                let e = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
                let touched = e & (3 << 62) != 0;
                let p = page + k as u64;
                match (touched, run) {
                    (true, None) => run = Some(p),
                    (false, Some(from)) => {
                        out.push((from * PAGE).max(range.start)..(p * PAGE).min(range.end));
                        run = None;
                    }
                    _ => {}
                }
            }
            page += n as u64;
        }
        if let Some(from) = run {
            out.push((from * PAGE).max(range.start)..range.end);
        }
    }

    /// Reads `batch` (remote ranges, at most `READ_BYTES` in all) into the
    /// buffer, skipping a page that faults and going on after it.
    fn read_batch(&mut self, batch: &mut [Range<u64>], each: &mut dyn FnMut(u64, &[u8])) {
        let mut first = 0;
        while first < batch.len() {
            let remote: Vec<libc::iovec> = batch[first..]
                .iter()
                .map(|r| libc::iovec {
                    iov_base: r.start as *mut libc::c_void,
                    iov_len: (r.end - r.start) as usize,
                })
                .collect();
            let local = libc::iovec {
                iov_base: self.buf.as_mut_ptr().cast(),
                iov_len: self.buf.len(),
            };
            // SAFETY: the local iovec is our buffer, as long as the remote ones
            // together; the remote ones are only read, in the other process.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid as libc::pid_t,
                    &local,
                    1,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0
                && matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::ESRCH | libc::EPERM)
                )
            {
                return; // gone, or not ours to read: no page will do better
            }
            let mut left = n.max(0) as u64;
            self.read += left;
            let mut at = 0usize;
            while first < batch.len() && left > 0 {
                let r = batch[first].clone();
                let len = (r.end - r.start).min(left);
                each(r.start, &self.buf[at..at + len as usize]);
                at += len as usize;
                left -= len;
                if r.start + len == r.end {
                    first += 1;
                } else {
                    batch[first].start = r.start + len;
                }
            }
            // The range at `first` faulted where it now starts: skip that page.
            if let Some(r) = batch.get_mut(first) {
                r.start = ((r.start / PAGE) + 1) * PAGE;
                if r.start >= r.end {
                    first += 1;
                }
            }
        }
    }
}

impl Memory for ProcessMemory {
    fn read(&mut self, ranges: &[Range<u64>], each: &mut dyn FnMut(u64, &[u8])) {
        let mut batch: Vec<Range<u64>> = Vec::new();
        let mut bytes = 0u64;
        let mut pieces = Vec::new();
        for range in ranges {
            pieces.clear();
            self.touched(range, &mut pieces);
            for piece in &pieces {
                let mut at = piece.start;
                while at < piece.end {
                    // Cut at a page boundary where the buffer is full.
                    let room = READ_BYTES as u64 - bytes;
                    let end = if piece.end - at <= room {
                        piece.end
                    } else {
                        (at + room) / PAGE * PAGE
                    };
                    if end > at {
                        batch.push(at..end);
                        bytes += end - at;
                        at = end;
                    }
                    if at < piece.end || batch.len() == MAX_IOV {
                        self.read_batch(&mut batch, each);
                        batch.clear();
                        bytes = 0;
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.read_batch(&mut batch, each);
        }
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_writable_mappings_stacks_from_their_pointer() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 123 /usr/bin/app
55d0c0003000-55d0c0004000 rw-p 00002000 08:01 123 /usr/bin/app
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000800000 rw-p 00000000 00:00 0
7f0000800000-7f0000801000 ---p 00000000 00:00 0
7f0001000000-7f0001001000 rw-s 00000000 00:05 9 /dev/dri/card0
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
7ffc00100000-7ffc00102000 r--p 00000000 00:00 0 [vvar]
";
        let mut stats = ScanStats::default();
        let Roots { ranges: r, brk } =
            roots(maps, &[0x7ffc_0001_0000, 0x7f00_0040_0000], &mut stats).unwrap();
        assert_eq!(brk, Some(0x55d0c1000000..0x55d0c1021000));
        assert_eq!(
            r,
            [
                0x55d0c0003000..0x55d0c0004000,
                0x55d0c1000000..0x55d0c1021000,
                0x7f00_0040_0000 - 128..0x7f0000800000,
                0x7ffc_0001_0000 - 128..0x7ffc00021000,
            ]
        );
    }

    #[test]
    fn smaps_flags_skip_devices_and_refuse_userfaultfd() {
        let smaps = "\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0
Size:                  4 kB
VmFlags: rd wr mr mw me ac
7f0000002000-7f0000003000 rw-s 00000000 00:05 9 /memfd:gpu (deleted)
VmFlags: rd wr sh mr mw me io pf
";
        let mut stats = ScanStats::default();
        let r = roots(smaps, &[], &mut stats).unwrap().ranges;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0], 0x7f0000000000..0x7f0000001000);
        let watched = format!(
            "{smaps}7f0000004000-7f0000005000 rw-p 00000000 00:00 0\nVmFlags: rd wr mr mw me ac um\n"
        );
        assert!(matches!(
            roots(&watched, &[], &mut stats),
            Err(ScanError::UserFaults)
        ));
    }

    #[test]
    fn stack_pointers_from_the_syscall_file() {
        assert_eq!(syscall_sp(b"running\n"), None);
        assert_eq!(syscall_sp(b"-1 0x7ffd1000 0x401000\n"), Some(0x7ffd1000));
        assert_eq!(
            syscall_sp(b"202 0x1 0x2 0x3 0x4 0x5 0x6 0x7f00aa0 0x7f00bb0\n"),
            Some(0x7f00aa0)
        );
        assert_eq!(syscall_sp(b"garbage 0xzz 1"), None);
    }

    #[test]
    fn reads_this_process_through_page_faults() {
        // Two readable pages around an unmapped one, read as one range.
        // SAFETY: plain anonymous mappings of our own, unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                3 * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as *mut u8;
            assert!(!p.is_null());
            p.write_bytes(7, 3 * PAGE as usize);
            libc::munmap(p.add(PAGE as usize).cast(), PAGE as usize);
            let start = p as u64;
            let mut m = ProcessMemory::new(std::process::id());
            let mut got = 0u64;
            let whole = start..start + 3 * PAGE;
            m.read(std::slice::from_ref(&whole), &mut |_, bytes| {
                assert!(bytes.iter().all(|&b| b == 7));
                got += bytes.len() as u64;
            });
            assert_eq!(got, 2 * PAGE);
            libc::munmap(p.cast(), 3 * PAGE as usize);
        }
    }
}
