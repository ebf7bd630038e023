//! Reachability scans of the targets' heaps (reach/): of a process stopped
//! in `_exit`, and of running ones every `--scan-every`.
use std::collections::HashMap;

use leaktrace_common::{Counter, ExitEvent};
use log::{debug, warn};

use super::{Pump, now_ns};
use crate::{
    model::{Ns, SiteId},
    reach::{self, Block, Reach},
};

impl Pump {
    /// A target stopped in `_exit` or `runtime.exit` (leaktrace-ebpf/src/exit.rs):
    /// its goroutines read and its heap scanned whole; it goes on exiting once
    /// the event is done with.
    pub(super) fn scan_exiting(&mut self, e: &ExitEvent) {
        if e.paused == 0 {
            return; // not stopped: its memory would be torn down under the scan
        }
        // Goroutines that ended since the last read, before they all go.
        let made = self.go_made();
        self.read_goroutines_of(e.tgid, &made);
        if self
            .targets
            .get(e.tgid)
            .is_some_and(|t| !t.allocators.allocators.is_empty())
        {
            self.scan(e.tgid, &e.regs, None);
        }
        let waited_ms = now_ns().saturating_sub(e.ts_ns) as f64 / 1e6;
        let scans = &mut self.ingest.model.scans;
        scans.longest_pause_ms = scans
            .longest_pause_ms
            .max((waited_ms * 100.0).round() / 100.0);
    }

    /// Scans every live target with a traced heap, running (--scan-every).
    pub(super) fn scan_running(&mut self) {
        let pids: Vec<u32> = self
            .targets
            .live()
            .filter(|t| !t.allocators.allocators.is_empty())
            .map(|t| t.target.pid)
            .collect();
        for pid in pids {
            let now = now_ns();
            self.scan(pid, &[], Some(now));
        }
    }

    /// Classifies `pid`'s outstanding blocks: stopped at exit (`running`
    /// `None`, `regs` its exiting thread's registers), or running since
    /// `running`, where a block is lost only once scans agree (reach.rs).
    fn scan(&mut self, pid: u32, regs: &[u64], running: Option<Ns>) {
        let allocs = match self.node.probes.heap_blocks_of(pid) {
            Ok(allocs) => allocs,
            Err(e) => {
                self.ingest.model.scans.failed += 1;
                warn!("PID {pid}: heap not scanned: {e}");
                return;
            }
        };
        let blocks: Vec<Block> = allocs
            .iter()
            .map(|&(addr, info)| Block {
                addr,
                size: info.size,
            })
            .collect();
        // Every block known: traced from its exec, none lost for a full map.
        let complete = self.targets.get(pid).is_some_and(|t| t.whole_heap)
            && self
                .node
                .probes
                .counters()
                .is_ok_and(|c| c[Counter::AllocsFull as usize] == 0);
        let scanned = match reach::process::scan(pid, &blocks, regs, self.scan_max_bytes, complete)
        {
            Ok(scanned) => scanned,
            // Exited since the last check: its scan at exit (if any) stands.
            Err(reach::process::ScanError::Gone) if running.is_some() => return,
            Err(e) => {
                self.ingest.model.scans.failed += 1;
                warn!("PID {pid}: reachability of its heap not known: {e}");
                return;
            }
        };
        let raw_lost = scanned
            .classes
            .iter()
            .filter(|&&c| c != reach::Class::Reachable)
            .count();
        let classes = match running {
            None => scanned.classes,
            Some(now) => {
                let ids: Vec<_> = allocs
                    .iter()
                    .zip(&scanned.classes)
                    .map(|(&(addr, info), &class)| ((addr, info.ts_ns), class))
                    .collect();
                self.confirmations
                    .entry(pid)
                    .or_default()
                    .confirm(now, &ids)
            }
        };
        let mut by_site: HashMap<SiteId, Reach> = HashMap::new();
        for ((_, info), class) in allocs.iter().zip(classes) {
            let reach = by_site
                .entry(SiteId::in_kernel(&info.site))
                .or_insert_with(|| Reach {
                    at_exit: running.is_none(),
                    ..Reach::default()
                });
            reach.add(class, info.size);
        }
        debug!(
            "PID {pid}: {} blocks scanned, {raw_lost} lost in this scan, {} bytes read in {} ms",
            scanned.stats.blocks, scanned.stats.bytes_read, scanned.stats.ms
        );
        self.ingest.model.set_reach(pid, by_site);
        let scans = &mut self.ingest.model.scans;
        match running {
            None => scans.at_exit += 1,
            Some(_) => scans.running += 1,
        }
        scans.latest = Some(scanned.stats);
    }
}
