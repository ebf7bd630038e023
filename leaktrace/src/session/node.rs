//! The node's kernel side: one set of eBPF programs and maps for every
//! target (each target is an entry of the kernel's target set, not a load of
//! its own), the ring buffer they fill, the unwind tables they read, and
//! whether new and exiting processes stop for leaktrace.
use std::{os::fd::AsFd, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use log::warn;
use tokio::io::{Interest, unix::AsyncFd};

use super::events::Event;
use crate::{
    probes::{Families, Limits, Probes},
    unwind::Unwinder,
};

pub(super) struct Node {
    pub probes: Probes,
    events: RingBuf<MapData>,
    pub unwinder: Unwinder,
    /// Whether processes stop themselves for leaktrace (see
    /// leaktrace-ebpf/src/fork.rs and exit.rs): new ones and new images while
    /// the heap is traced, exiting ones with the exit scan; until tracing ends.
    pausing: bool,
    /// Events read from the ring buffer so far.
    pub events_read: u64,
}

impl Node {
    pub fn load(limits: Limits, families: Families) -> Result<Node> {
        let mut probes = Probes::load(limits, families)?;
        let events = probes.take_events()?;
        Ok(Node {
            probes,
            events,
            unwinder: Unwinder::default(),
            pausing: false,
            events_read: 0,
        })
    }

    /// The ring buffer's descriptor, readable when events cannot wait for the
    /// next drain (a process stopped for its probes, a quarter of the ring full).
    pub fn woken(&self) -> Result<AsyncFd<std::os::fd::OwnedFd>> {
        let ring = self
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the ring buffer's descriptor")?;
        // SAFETY: an OwnedFd is open, and the same, for as long as it is owned.
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("watching the ring buffer")
    }

    /// Every event in the ring buffer, in order.
    pub fn read_events(&mut self) -> Vec<Event> {
        let mut batch = Vec::new();
        while let Some(item) = self.events.next() {
            self.events_read += 1;
            match Event::read(&item) {
                Some(event) => batch.push(event),
                None => warn!("unknown event of {} bytes ignored", item.len()),
            }
        }
        batch
    }

    /// Processes stop themselves at `slot` (`pause::NEW`, `pause::EXIT`) from now on.
    pub fn pause_at(&mut self, slot: u32) -> Result<()> {
        self.probes.set_pausing(slot, true)?;
        self.pausing = true;
        Ok(())
    }

    /// No new process or image stops itself from now on; those stopped before
    /// are in the ring buffer once this returns.
    pub fn stop_pausing(&mut self) {
        if !std::mem::take(&mut self.pausing) {
            return;
        }
        for slot in [leaktrace_common::pause::NEW, leaktrace_common::pause::EXIT] {
            if let Err(e) = self.probes.set_pausing(slot, false) {
                warn!("{e}");
            }
        }
        // A probe that read the flag before it was cleared finishes its event
        // within microseconds.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// However the session ends, no process stays stopped waiting for it.
impl Drop for Node {
    fn drop(&mut self) {
        self.stop_pausing();
        for event in self.read_events() {
            super::resume(&event);
        }
    }
}
