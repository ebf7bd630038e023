//! The processes traced, from attach to exit: what is known of each while it
//! runs, and what the report keeps of it once it has gone.
use std::collections::HashMap;

use crate::{
    allocator::Found,
    golang::GoRuntime,
    limits::{FdLimit, MemoryLimit},
    report::{AllocatorInfo, GoInfo, TargetInfo},
    target::{Child, Target},
};

/// Exited processes that left nothing the report shows, listed at most (a
/// shell script forks thousands): the others are counted.
const ENDED_LISTED: usize = 256;

pub struct Traced {
    pub target: Target,
    /// Allocators probed and those seen but not probed (see allocator.rs).
    pub allocators: Found,
    pub go: Option<Go>,
    /// A command leaktrace started.
    pub child: Option<Child>,
    /// Named by the user (`--pid`, `-- CMD`), not followed into: what it held
    /// at exit stays in the report whole.
    pub root: bool,
    /// Whether its heap is traced from its exec on (a command leaktrace
    /// started, or an image exec'd while traced): every live block is known.
    pub whole_heap: bool,
    /// Its place in the order targets were traced (set by [`Targets::add`]).
    pub seq: u64,
}

/// A Go target's runtime and its heap sampling rate as last read.
pub struct Go {
    pub runtime: GoRuntime,
    /// `runtime.MemProfileRate`; `None` until read, or when it cannot be (stripped).
    pub rate: Option<u64>,
    /// Goroutines found alive at attach; `None` when they could not be read.
    pub before_attach: Option<u64>,
    /// Whether leaktrace turned its heap sampling on (it was off).
    pub sampling_set: bool,
}

impl Traced {
    /// Whether it has exited (checked now).
    fn has_exited(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.exited(),
            None => !self.target.alive(),
        }
    }

    /// As the report lists it.
    pub fn info(&self, exited: bool) -> TargetInfo {
        let live = |pid| (!exited).then_some(pid);
        TargetInfo {
            pid: self.target.pid,
            comm: self.target.comm.clone(),
            exe: self.target.exe.clone(),
            allocators: self
                .allocators
                .allocators
                .iter()
                .map(|a| AllocatorInfo {
                    name: a.family.to_string(),
                    prefixes: a.prefixes.iter().map(|p| p.to_string()).collect(),
                    file: a.path.clone(),
                    functions: a.points.len(),
                    single_stepped: a.stepped_hot().iter().map(|f| f.to_string()).collect(),
                })
                .collect(),
            unprobed_allocators: self.allocators.unsupported.clone(),
            exited,
            exit_code: self.child.as_ref().and_then(Child::exit_code),
            memory_limit: live(self.target.pid).and_then(MemoryLimit::of),
            fd_limit: live(self.target.pid).and_then(FdLimit::of),
            go: self.go.as_ref().map(|go| GoInfo {
                version: go.runtime.version.clone(),
                mem_profile_rate: go.rate,
                sampling_turned_on: go.sampling_set && go.rate.is_some_and(|r| r > 0),
                goroutines_before_attach: go.before_attach,
            }),
        }
    }
}

#[derive(Default)]
pub struct Targets {
    live: HashMap<u32, Traced>,
    /// Those that exited, as the report lists them, by when they were traced.
    ended: Vec<(u64, TargetInfo)>,
    /// Exited followed processes listed that left nothing.
    empty_listed: usize,
    /// Exited processes not listed (see [`ENDED_LISTED`]).
    pub unlisted: u64,
    traced: u64,
}

impl Targets {
    pub fn add(&mut self, mut traced: Traced) {
        traced.seq = self.traced;
        self.traced += 1;
        self.live.insert(traced.target.pid, traced);
    }

    pub fn live(&self) -> impl Iterator<Item = &Traced> {
        self.live.values()
    }

    /// The live targets running Go, by pid.
    pub fn live_go(&self) -> Vec<u32> {
        self.live()
            .filter(|t| t.go.is_some())
            .map(|t| t.target.pid)
            .collect()
    }

    pub fn live_mut(&mut self) -> impl Iterator<Item = &mut Traced> {
        self.live.values_mut()
    }

    /// Process `pid`, if it is traced and has not ended.
    pub fn get(&self, pid: u32) -> Option<&Traced> {
        self.live.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Traced> {
        self.live.get_mut(&pid)
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The targets that have exited since they were last taken out.
    pub fn exited(&mut self) -> Vec<u32> {
        let live = self.live.values_mut();
        live.filter_map(|t| t.has_exited().then_some(t.target.pid))
            .collect()
    }

    /// Takes target `pid` out, to end it.
    pub fn take(&mut self, pid: u32) -> Option<Traced> {
        self.live.remove(&pid)
    }

    /// Records `t`, which has exited; `left_something`: some of its sites stay.
    pub fn ended(&mut self, t: &Traced, left_something: bool) {
        if !t.root && !left_something {
            self.empty_listed += 1;
            if self.empty_listed > ENDED_LISTED {
                self.unlisted += 1;
                return;
            }
        }
        self.ended.push((t.seq, t.info(true)));
    }

    /// Every target, in the order they were traced.
    pub fn infos(&self) -> Vec<TargetInfo> {
        let live = self.live.values().map(|t| (t.seq, t.info(false)));
        let mut all: Vec<(u64, TargetInfo)> = live.chain(self.ended.iter().cloned()).collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, info)| info).collect()
    }

    /// Stops commands leaktrace started that still run; processes given with
    /// --pid are never touched.
    pub fn terminate_commands(&mut self) {
        for t in self.live.values_mut() {
            if let Some(child) = &mut t.child {
                child.terminate();
            }
        }
    }
}
