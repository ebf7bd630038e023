//! The two edges of the core: the kernel side (what the probes keep in eBPF
//! maps) and the traced processes as /proc shows them. The core (ingest.rs)
//! sees only these traits, so it runs on recorded or made-up events in unit
//! tests, without root or a kernel.
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use leaktrace_common::{AllocInfo, StackId};

use crate::{
    handles,
    model::Ns,
    probes::{ProbeError, Probes},
    procmaps::ProcMaps,
    symbolize::{Frame, Symbolizer},
};

/// What the core asks of the kernel side.
pub trait Kernel {
    /// The return addresses of a stack the probes walked, and how the walk
    /// ended (a `StackEnd`).
    fn stack(&self, id: StackId) -> Option<(Vec<u64>, u32)>;
    /// Takes `pid`'s outstanding heap blocks allocated before `until` out of
    /// the kernel's accounting (an exec replaced their image).
    fn take_allocs(&mut self, pid: u32, until: Ns) -> Result<Vec<AllocInfo>, ProbeError>;
}

impl Kernel for Probes {
    fn stack(&self, id: StackId) -> Option<(Vec<u64>, u32)> {
        Probes::stack(self, id)
    }

    fn take_allocs(&mut self, pid: u32, until: Ns) -> Result<Vec<AllocInfo>, ProbeError> {
        Probes::take_allocs(self, pid, until)
    }
}

/// What the core asks of a traced process.
pub trait Process {
    /// Where descriptor `fd` of `pid` points (`readlink /proc/PID/fd/FD`).
    fn fd_link(&self, pid: u32, fd: i32) -> Option<String>;
    /// `pid`'s working directory.
    fn cwd(&self, pid: u32) -> Option<PathBuf>;
    /// `pid`'s open descriptors and where they point.
    fn open_fds(&self, pid: u32) -> Vec<(i32, String)>;
    /// `pid`'s threads, the first among them.
    fn threads(&self, pid: u32) -> Vec<u32>;
    /// The name of the function whose first instruction is at `entry`.
    fn function_at(&mut self, pid: u32, entry: u64) -> Option<String>;
    /// Whether `pid`'s memory map is known: its addresses can be symbolized.
    fn knows(&self, pid: u32) -> bool;
    /// The frames (more than one with inlining) at return address `addr`.
    fn frames(&mut self, pid: u32, addr: u64) -> Vec<Arc<Frame>>;
}

/// Live processes through /proc, with their latest memory maps (kept after a
/// process exits while its sites need them) and the symbolizer.
#[derive(Default)]
pub struct Procfs {
    pub maps: HashMap<u32, ProcMaps>,
    pub symbolizer: Symbolizer,
}

impl Process for Procfs {
    fn fd_link(&self, pid: u32, fd: i32) -> Option<String> {
        handles::link(pid, fd)
    }

    fn cwd(&self, pid: u32) -> Option<PathBuf> {
        handles::cwd(pid)
    }

    fn open_fds(&self, pid: u32) -> Vec<(i32, String)> {
        handles::open_fds(pid)
    }

    fn threads(&self, pid: u32) -> Vec<u32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| t.file_name().to_str()?.parse().ok())
            .collect()
    }

    fn function_at(&mut self, pid: u32, entry: u64) -> Option<String> {
        let maps = self.maps.get(&pid)?;
        self.symbolizer.function_at(pid, maps, entry)
    }

    fn knows(&self, pid: u32) -> bool {
        self.maps.contains_key(&pid)
    }

    fn frames(&mut self, pid: u32, addr: u64) -> Vec<Arc<Frame>> {
        match self.maps.get(&pid) {
            Some(maps) => self.symbolizer.stack(pid, maps, &[addr]),
            None => Vec::new(),
        }
    }
}
