//! Reachability of a target's outstanding heap blocks, read from outside:
//! which blocks the program can still reach from its globals, stacks and TLS
//! (`reachable`), which only from blocks it cannot reach (`indirect`), and
//! which from nothing (`unreachable`: definitely lost). The classes and their
//! rules are LeakSanitizer's; docs/reachability.md says what differs.
//!
//! This module is the pure part: the graph walk over memory read through
//! [`Memory`]. [`process`] reads a live process's memory and finds its roots.
use std::{collections::HashMap, ops::Range};

use serde::Serialize;

pub mod process;

/// One outstanding heap block: `size` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub addr: u64,
    pub size: u64,
}

impl Block {
    /// The addresses a pointer into this block may hold (a 0-byte block has
    /// its address).
    fn end(&self) -> u64 {
        self.addr.saturating_add(self.size.max(1))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Pointed to, through any chain of blocks, from a root.
    Reachable,
    /// Pointed to only by blocks that are not reachable.
    Indirect,
    /// Pointed to by nothing the program can reach: definitely lost.
    Unreachable,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Reachable => "reachable",
            Class::Indirect => "indirect",
            Class::Unreachable => "unreachable",
        }
    }
}

/// A site's outstanding blocks by class, as of its process's latest scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Reach {
    pub unreachable_count: u64,
    pub unreachable_bytes: u64,
    pub indirect_count: u64,
    pub indirect_bytes: u64,
    pub reachable_count: u64,
    pub reachable_bytes: u64,
    /// From the scan as the process exited (else from a scan while it ran).
    pub at_exit: bool,
}

impl Reach {
    pub fn add(&mut self, class: Class, bytes: u64) {
        let (count, total) = match class {
            Class::Unreachable => (&mut self.unreachable_count, &mut self.unreachable_bytes),
            Class::Indirect => (&mut self.indirect_count, &mut self.indirect_bytes),
            Class::Reachable => (&mut self.reachable_count, &mut self.reachable_bytes),
        };
        *count += 1;
        *total += bytes;
    }

    /// Blocks the program can no longer free: unreachable or indirect.
    pub fn lost_count(&self) -> u64 {
        self.unreachable_count + self.indirect_count
    }
}

/// A target's memory, as the scan reads it.
pub trait Memory {
    /// Calls `each(address, bytes)` with what can be read of `ranges`, in
    /// pieces; what cannot (unmapped since, never touched) is left out.
    fn read(&mut self, ranges: &[Range<u64>], each: &mut dyn FnMut(u64, &[u8]));
    /// Bytes read so far.
    fn bytes_read(&self) -> u64;
}

/// The scan stopped at its byte budget: no block is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scan stopped after {read} bytes, its cap (--scan-max-bytes)")]
pub struct OverBudget {
    pub read: u64,
}

/// Bytes read at most per batch of blocks.
const BATCH_BYTES: u64 = 4 << 20;
/// Blocks read at most per batch (one `process_vm_readv`'s iovecs).
const BATCH_BLOCKS: usize = 1024;

/// Blocks sorted by address, for the pointer test: the address range they
/// span cut in about as many equal buckets as there are blocks, each knowing
/// the first block starting in it, so a lookup searches a few blocks, not all.
struct Heap<'a> {
    blocks: &'a [Block],
    lo: u64,
    hi: u64,
    shift: u32,
    /// Per bucket, the first block starting at or after the bucket's start;
    /// one more entry at the end.
    first: Vec<u32>,
}

impl<'a> Heap<'a> {
    fn new(blocks: &'a [Block]) -> Self {
        let lo = blocks.first().map_or(0, |b| b.addr);
        let hi = blocks.iter().map(Block::end).max().unwrap_or(0);
        let buckets = blocks.len().max(1).next_power_of_two() as u64;
        let span = (hi - lo).max(1);
        let shift = 64 - (span.div_ceil(buckets)).saturating_sub(1).leading_zeros();
        let count = ((span - 1) >> shift) + 2;
        let first = (0..count)
            .map(|k| {
                let start = lo.saturating_add(k << shift);
                blocks.partition_point(|b| b.addr < start) as u32
            })
            .collect();
        Self {
            blocks,
            lo,
            hi,
            shift,
            first,
        }
    }

    /// The block `value` points into (interior pointers count, as in LSan).
    #[inline]
    fn find(&self, value: u64) -> Option<usize> {
        if value < self.lo || value >= self.hi {
            return None;
        }
        let k = ((value - self.lo) >> self.shift) as usize;
        // A block starting in an earlier bucket may reach into this one.
        let from = (self.first[k] as usize).saturating_sub(1);
        let to = self.first[k + 1] as usize;
        let i = from + self.blocks[from..to].partition_point(|b| b.addr <= value);
        let i = i.checked_sub(1)?;
        (value < self.blocks[i].end()).then_some(i)
    }
}

/// Each aligned 8-byte word wholly inside the `bytes` read at `addr`.
#[inline]
fn words(addr: u64, bytes: &[u8], mut each: impl FnMut(u64)) {
    let skip = (addr.wrapping_neg() % 8) as usize;
    let Some(aligned) = bytes.get(skip..) else {
        return;
    };
    for word in aligned.chunks_exact(8) {
        each(u64::from_ne_bytes(word.try_into().expect("8 bytes")));
    }
}

/// `roots` (sorted, disjoint) without the bytes of `blocks`: a block is
/// scanned only when something reaches it.
fn gaps(roots: &[Range<u64>], blocks: &[Block]) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut b = 0;
    for root in roots {
        let mut at = root.start;
        while b < blocks.len() && blocks[b].end() <= at {
            b += 1;
        }
        let mut i = b;
        while at < root.end {
            match blocks.get(i).filter(|blk| blk.addr < root.end) {
                Some(blk) => {
                    if blk.addr > at {
                        out.push(at..blk.addr);
                    }
                    at = at.max(blk.end());
                    i += 1;
                }
                None => {
                    out.push(at..root.end);
                    break;
                }
            }
        }
    }
    out
}

/// Classifies `blocks` (sorted by address): reachable from `roots` (memory
/// ranges, sorted and disjoint) or `root_words` (register values), else
/// indirect or unreachable. Stops with [`OverBudget`] past `budget` bytes.
pub fn classify(
    blocks: &[Block],
    roots: &[Range<u64>],
    root_words: &[u64],
    memory: &mut dyn Memory,
    budget: u64,
) -> Result<Vec<Class>, OverBudget> {
    classify_with(blocks, roots, root_words, memory, budget, MAX_EDGES)
}

/// Pointers between blocks kept in memory at most (8 bytes each): beyond, the
/// walk reads blocks as it reaches them instead.
const MAX_EDGES: usize = 16 << 20;

fn classify_with(
    blocks: &[Block],
    roots: &[Range<u64>],
    root_words: &[u64],
    memory: &mut dyn Memory,
    budget: u64,
    max_edges: usize,
) -> Result<Vec<Class>, OverBudget> {
    let heap = Heap::new(blocks);
    let over = |memory: &dyn Memory| {
        let read = memory.bytes_read();
        if read > budget {
            Err(OverBudget { read })
        } else {
            Ok(())
        }
    };
    let mut roots_reach = Vec::new();
    for &value in root_words {
        roots_reach.extend(heap.find(value));
    }
    memory.read(&gaps(roots, blocks), &mut |addr, bytes| {
        words(addr, bytes, |v| roots_reach.extend(heap.find(v)))
    });
    over(memory)?;
    // Every block read once, in address order, in large batches: a linked
    // list is walked in memory, not one read per link.
    let graph = edges(blocks, &heap, memory, max_edges);
    over(memory)?;
    let (reached, indirect) = match graph {
        Some(graph) => walk_in_memory(&graph, blocks.len(), roots_reach),
        None => walk_reading(blocks, &heap, memory, roots_reach, &over)?,
    };
    Ok((0..blocks.len())
        .map(|i| {
            if reached[i] {
                Class::Reachable
            } else if indirect[i] {
                Class::Indirect
            } else {
                Class::Unreachable
            }
        })
        .collect())
}

/// Which blocks each block points to (not itself, each once), as offsets
/// into one list; `None` past `max_edges`.
struct Graph {
    start: Vec<usize>,
    to: Vec<u32>,
}

impl Graph {
    fn from(&self, i: usize) -> &[u32] {
        &self.to[self.start[i]..self.start[i + 1]]
    }
}

fn edges(
    blocks: &[Block],
    heap: &Heap,
    memory: &mut dyn Memory,
    max_edges: usize,
) -> Option<Graph> {
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut queue: Vec<usize> = (0..blocks.len()).rev().collect();
    let mut full = false;
    while !queue.is_empty() && !full {
        let batch = take_batch(&mut queue, blocks);
        memory.read(&batch, &mut |addr, bytes| {
            let Some(from) = heap.find(addr) else { return };
            // The block found last: pointers in a block often go to one place.
            let mut last = 0..0;
            words(addr, bytes, |v| {
                if last.contains(&v) {
                    return;
                }
                if let Some(to) = heap.find(v) {
                    last = blocks[to].addr..blocks[to].end();
                    if to != from && pairs.last() != Some(&(from as u32, to as u32)) {
                        pairs.push((from as u32, to as u32));
                    }
                }
            });
            full |= pairs.len() > max_edges;
        });
    }
    if full {
        return None;
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut start = vec![0; blocks.len() + 1];
    for &(from, _) in &pairs {
        start[from as usize + 1] += 1;
    }
    for i in 0..blocks.len() {
        start[i + 1] += start[i];
    }
    Some(Graph {
        start,
        to: pairs.into_iter().map(|(_, to)| to).collect(),
    })
}

/// (reached, indirect) from the blocks the roots point to, over `graph`.
fn walk_in_memory(graph: &Graph, n: usize, mut frontier: Vec<usize>) -> (Vec<bool>, Vec<bool>) {
    let mut reached = vec![false; n];
    frontier.retain(|&i| !std::mem::replace(&mut reached[i], true));
    while let Some(i) = frontier.pop() {
        for &j in graph.from(i) {
            if !std::mem::replace(&mut reached[j as usize], true) {
                frontier.push(j as usize);
            }
        }
    }
    // What the lost blocks point to is lost with them: indirect (pointers to
    // itself do not count, so a lone block stays unreachable).
    let mut indirect = vec![false; n];
    for i in (0..n).filter(|&i| !reached[i]) {
        for &j in graph.from(i) {
            if !reached[j as usize] {
                indirect[j as usize] = true;
            }
        }
    }
    (reached, indirect)
}

/// [`walk_in_memory`] without the graph: each block read when reached, the
/// lost ones after.
fn walk_reading(
    blocks: &[Block],
    heap: &Heap,
    memory: &mut dyn Memory,
    roots_reach: Vec<usize>,
    over: &dyn Fn(&dyn Memory) -> Result<(), OverBudget>,
) -> Result<(Vec<bool>, Vec<bool>), OverBudget> {
    let mut reached = vec![false; blocks.len()];
    let mut frontier = roots_reach;
    frontier.retain(|&i| !std::mem::replace(&mut reached[i], true));
    while !frontier.is_empty() {
        let batch = take_batch(&mut frontier, blocks);
        memory.read(&batch, &mut |addr, bytes| {
            words(addr, bytes, |v| {
                if let Some(i) = heap.find(v)
                    && !std::mem::replace(&mut reached[i], true)
                {
                    frontier.push(i);
                }
            })
        });
        over(memory)?;
    }
    let mut indirect = vec![false; blocks.len()];
    let mut lost: Vec<usize> = (0..blocks.len()).filter(|&i| !reached[i]).collect();
    while !lost.is_empty() {
        let batch = take_batch(&mut lost, blocks);
        memory.read(&batch, &mut |addr, bytes| {
            let from = heap.find(addr);
            words(addr, bytes, |v| {
                if let Some(j) = heap.find(v)
                    && Some(j) != from
                    && !reached[j]
                {
                    indirect[j] = true;
                }
            })
        });
        over(memory)?;
    }
    Ok((reached, indirect))
}

/// Up to a batch of the blocks in `queue` (taken from its end), as sorted ranges.
fn take_batch(queue: &mut Vec<usize>, blocks: &[Block]) -> Vec<Range<u64>> {
    let mut bytes = 0;
    let mut batch = Vec::new();
    while let Some(&i) = queue.last() {
        let b = blocks[i];
        if !batch.is_empty() && (batch.len() >= BATCH_BLOCKS || bytes + b.size > BATCH_BYTES) {
            break;
        }
        queue.pop();
        bytes += b.size;
        if b.size > 0 {
            batch.push(b.addr..b.addr + b.size);
        }
    }
    batch.sort_unstable_by_key(|r| r.start);
    batch
}

/// Scans of a running process race with its writes (a pointer moved from
/// where the scan has yet to read to where it has read is missed), and a
/// pointer may be held only in a register of a running thread, which no scan
/// reads. So a block is called lost only when it is lost in this many scans
/// in a row and at least [`MIN_LOST_AGE_NS`] old.
pub const CONFIRMING_SCANS: u32 = 3;
pub const MIN_LOST_AGE_NS: u64 = 2_000_000_000;

/// The running scans' memory of which blocks were lost in the scans before.
#[derive(Debug, Default)]
pub struct Confirmation {
    /// (address, allocation time) of each block lost in the latest scan, with
    /// how many scans in a row it has been.
    streaks: HashMap<(u64, u64), u32>,
}

impl Confirmation {
    /// Takes one scan, at `now`, of blocks identified by (address, allocation
    /// time): returns each block's class as far as the scans agree (a block
    /// not yet confirmed lost is reachable).
    pub fn confirm(&mut self, now: u64, scanned: &[((u64, u64), Class)]) -> Vec<Class> {
        let mut streaks = HashMap::new();
        let classes = scanned
            .iter()
            .map(|&(id, class)| {
                if class == Class::Reachable {
                    return Class::Reachable;
                }
                let n = self.streaks.get(&id).copied().unwrap_or(0) + 1;
                streaks.insert(id, n);
                let old = now.saturating_sub(id.1) >= MIN_LOST_AGE_NS;
                if n >= CONFIRMING_SCANS && old {
                    class
                } else {
                    Class::Reachable
                }
            })
            .collect();
        self.streaks = streaks;
        classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse address space of 8-byte words.
    #[derive(Default)]
    struct Fake {
        words: std::collections::BTreeMap<u64, u64>,
        read: u64,
    }

    impl Fake {
        fn put(&mut self, addr: u64, value: u64) {
            self.words.insert(addr, value);
        }
    }

    impl Memory for Fake {
        fn read(&mut self, ranges: &[Range<u64>], each: &mut dyn FnMut(u64, &[u8])) {
            for r in ranges {
                let mut bytes = Vec::new();
                let start = r.start & !7;
                for a in (start..r.end).step_by(8) {
                    bytes.extend(self.words.get(&a).copied().unwrap_or(0).to_ne_bytes());
                }
                self.read += r.end - r.start;
                let skip = (r.start - start) as usize;
                let len = (r.end - r.start) as usize;
                each(r.start, &bytes[skip..skip + len]);
            }
        }
        fn bytes_read(&self) -> u64 {
            self.read
        }
    }

    const GLOBALS: Range<u64> = 0x1000..0x2000;

    fn blocks(n: u64) -> Vec<Block> {
        (0..n)
            .map(|i| Block {
                addr: 0x10_0000 + i * 0x100,
                size: 64,
            })
            .collect()
    }

    #[test]
    fn classes_follow_lsan() {
        let b = blocks(8);
        let mut m = Fake::default();
        // 0: held by a global. 1: by 0 (reachable through it). 2: lost.
        // 3 → 4 → 5: a list whose head is lost. 6: held by an interior pointer.
        // 7: points to itself only.
        m.put(GLOBALS.start, b[0].addr);
        m.put(b[0].addr + 8, b[1].addr);
        m.put(b[3].addr, b[4].addr + 16);
        m.put(b[4].addr, b[5].addr);
        m.put(GLOBALS.start + 8, b[6].addr + 63);
        m.put(b[7].addr, b[7].addr);
        let c = classify(&b, &[GLOBALS], &[], &mut m, u64::MAX).unwrap();
        // Without the graph in memory (too many pointers): the same.
        assert_eq!(
            classify_with(&b, &[GLOBALS], &[], &mut m, u64::MAX, 1).unwrap(),
            c
        );
        use Class::*;
        assert_eq!(
            c,
            [
                Reachable,
                Reachable,
                Unreachable,
                Unreachable,
                Indirect,
                Indirect,
                Reachable,
                Unreachable
            ]
        );
    }

    #[test]
    fn registers_are_roots_and_cycles_are_indirect() {
        let b = blocks(4);
        let mut m = Fake::default();
        // 0 ↔ 1 a lost cycle; 2 held by a register; 3 one past a block's end.
        m.put(b[0].addr, b[1].addr);
        m.put(b[1].addr, b[0].addr);
        m.put(GLOBALS.start, b[2].addr + 64);
        let c = classify(&b, &[GLOBALS], &[b[3].addr + 8], &mut m, u64::MAX).unwrap();
        let reading = classify_with(&b, &[GLOBALS], &[b[3].addr + 8], &mut m, u64::MAX, 0);
        assert_eq!(reading.unwrap(), c);
        use Class::*;
        assert_eq!(c, [Indirect, Indirect, Unreachable, Reachable]);
    }

    #[test]
    fn pointers_in_a_lost_block_make_nothing_reachable() {
        // The heap region is a root region too (what is not a tracked block
        // there is scanned); the stale pointer inside the lost block is not.
        let b = blocks(2);
        let heap = 0x10_0000..0x10_1000;
        let mut m = Fake::default();
        m.put(b[0].addr, b[1].addr);
        let c = classify(&b, &[GLOBALS, heap.clone()], &[], &mut m, u64::MAX).unwrap();
        assert_eq!(c, [Class::Unreachable, Class::Indirect]);
        assert_eq!(
            gaps(std::slice::from_ref(&heap), &b),
            [0x10_0040..0x10_0100, 0x10_0140..0x10_1000]
        );
    }

    #[test]
    fn over_budget_classifies_nothing() {
        let b = blocks(2);
        let mut m = Fake::default();
        assert_eq!(
            classify(&b, &[GLOBALS], &[], &mut m, 100),
            Err(OverBudget { read: 4096 })
        );
    }

    #[test]
    fn the_bucket_index_finds_what_a_linear_search_finds() {
        let mut rng = crate::testrng::Rng(0x5eed);
        for round in 0..200 {
            // Clusters far apart (brk heap, mmap'd chunks), sizes 0 to 1 MiB.
            let mut blocks = Vec::new();
            let mut at = 0x5555_0000_0000u64;
            for _ in 0..rng.below(300) {
                at += rng.below(64) as u64 * 16;
                if rng.below(50) == 0 {
                    at += 1 << (20 + rng.below(24));
                }
                let size = if rng.below(20) == 0 {
                    rng.below(1 << 20) as u64
                } else {
                    rng.below(200) as u64
                };
                blocks.push(Block { addr: at, size });
                at += size.max(1);
            }
            let heap = Heap::new(&blocks);
            let linear = |v: u64| blocks.iter().position(|b| v >= b.addr && v < b.end());
            for _ in 0..500 {
                let v = match blocks.get(rng.below(blocks.len())) {
                    Some(b) if rng.below(4) > 0 => b.addr + rng.below(b.size as usize + 2) as u64,
                    _ => rng.next() % (at + 4096),
                };
                assert_eq!(heap.find(v), linear(v), "round {round}, value {v:#x}");
            }
        }
    }

    #[test]
    fn unaligned_edges_read_whole_words_only() {
        let mut seen = Vec::new();
        let bytes: Vec<u8> = (0..20).collect();
        words(0x1003, &bytes, |w| seen.push(w));
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].to_ne_bytes()[0], 5);
    }

    #[test]
    fn lost_only_after_consecutive_scans_of_an_old_block() {
        let mut c = Confirmation::default();
        let s = 1_000_000_000;
        let old = (0x1000, 0);
        let young = (0x2000, 2 * s);
        let scan = |class| vec![(old, class), (young, class)];
        use Class::*;
        assert_eq!(c.confirm(2 * s, &scan(Unreachable)), [Reachable, Reachable]);
        assert_eq!(c.confirm(3 * s, &scan(Unreachable)), [Reachable, Reachable]);
        // Third in a row: the old block is lost; the young one is 1 s old.
        assert_eq!(
            c.confirm(3 * s, &scan(Unreachable)),
            [Unreachable, Reachable]
        );
        assert_eq!(
            c.confirm(4 * s, &scan(Unreachable)),
            [Unreachable, Unreachable]
        );
        // Seen reachable once: the streak starts again.
        assert_eq!(c.confirm(5 * s, &scan(Reachable)), [Reachable, Reachable]);
        assert_eq!(c.confirm(6 * s, &scan(Indirect)), [Reachable, Reachable]);
    }
}
