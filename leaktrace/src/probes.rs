//! Loading the eBPF object and attaching its programs to the targets.
//!
//! Every attachment is a file descriptor owned by this process: however
//! leaktrace ends (even SIGKILL) the kernel closes them and removes the probes.
use std::{collections::HashMap as StdHashMap, num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        ProbeKind, RawTracePoint, TracePoint, UProbe,
        raw_trace_point::RawTracePointLinkId,
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use leaktrace_common::{
    AllocInfo, AllocKey, COUNTER_SLOTS, FAMILY_FDS, FAMILY_FORKS, FAMILY_MMAP, FAMILY_THREADS,
    GoCreator, GoLayout, SiteKey, SiteKind, SiteStats, StackId, globals, maps, programs, syscalls,
    unwind::{MAX_FRAMES, PageIndex, ProcMappings, StackTrace, UnwindRow},
};

mod batch;

use crate::{
    allocator::{Allocator, ExitPoint, ProbePoint},
    btf,
    golang::GoRuntime,
    stepcost::{self, Costs},
    target::Target,
};

// Each variant carries its cause as text (the whole chain, once, with the fix
// for the causes users meet): aya's errors name a failed call and keep the
// reason in their source, so a chain printed by each layer said it twice.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot load the eBPF programs: {0}")]
    Load(String),
    #[error("cannot load {program}: {error}")]
    Program {
        program: &'static str,
        error: String,
    },
    #[error("cannot attach to {function} in {path} for PID {pid}: {error}")]
    Attach {
        function: String,
        path: String,
        pid: u32,
        error: String,
    },
    #[error("cannot attach the {0} tracepoint: {1}")]
    Tracepoint(&'static str, String),
    #[error(
        "cannot attach the syscalls:{0} tracepoint: {1} (is tracefs mounted? `mount -t tracefs nodev /sys/kernel/tracing`)"
    )]
    Syscall(String, String),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
}

/// A map or program leaktrace-common names that the embedded object lacks:
/// a build that mixed an old eBPF object with new userspace.
const MISSING: &str = "not in the embedded eBPF object (a stale build: rebuild leaktrace)";

/// `e` and its causes, each said once, and what to do for the causes with a
/// known fix.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut errno = None;
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            errno = errno.or(io.raw_os_error());
        }
        next = err.source();
    }
    let fix = match errno {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (each probe is a descriptor: raise the open-files limit with ulimit -n, or trace \
             fewer processes)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN; in a container, a \
             privileged one)"
        }
        Some(libc::ENOMEM) | Some(libc::E2BIG) => {
            " (the kernel refused the memory: lower --max-allocs, --max-stacks or \
             --max-unwind-rows)"
        }
        _ => "",
    };
    parts.join(": ") + fix
}

/// Sizes of the kernel maps, and the stack depth.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_allocs: u32,
    pub max_stacks: u32,
    /// Frames a stack walk follows at most (≤ `MAX_FRAMES` − 1).
    pub max_depth: u32,
    /// Unwind rows the kernel keeps, for all modules together.
    pub max_unwind_rows: u32,
}

impl Limits {
    /// Sites the kernel accounts: a stack makes a site per kind of resource
    /// (and the Go heap one per object size).
    fn max_sites(self) -> u32 {
        self.max_stacks.saturating_mul(4).max(1 << 16)
    }

    /// Pages of code the unwind tables can index: a page has ~80 rows in libc.
    fn max_unwind_pages(self) -> u32 {
        (self.max_unwind_rows / 16).max(1 << 12)
    }
}

/// What to trace.
#[derive(Clone, Copy, Debug)]
pub struct Families {
    pub heap: bool,
    pub mmap: bool,
    pub fds: bool,
    /// Goroutines of Go targets.
    pub goroutines: bool,
    /// Threads made and ended.
    pub threads: bool,
    /// Trace the processes targets fork, too.
    pub forks: bool,
}

impl Families {
    /// The syscall families, as the eBPF `FAMILIES` global has them.
    fn syscall_bits(self) -> u32 {
        let bit = |on: bool, bit: u32| if on { bit } else { 0 };
        bit(self.mmap, FAMILY_MMAP)
            | bit(self.fds, FAMILY_FDS)
            | bit(self.forks, FAMILY_FORKS)
            | bit(self.threads, FAMILY_THREADS)
    }
}

/// The loaded eBPF object and its attachments.
pub struct Probes {
    ebpf: Ebpf,
    /// Programs already loaded into the kernel.
    loaded: Vec<&'static str>,
    limits: Limits,
    /// What a probe costs here, measured the first time it is asked.
    step_costs: Option<Costs>,
    /// Each process's uprobes (program, link), removed when leaktrace ends:
    /// not before, see [`Drop for Probes`](#impl-Drop-for-Probes).
    links: StdHashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// The fork tracepoint (program, link).
    tracepoints: Vec<(&'static str, RawTracePointLinkId)>,
    /// The syscall tracepoints (program, link): two per call followed.
    syscalls: Vec<(&'static str, TracePointLinkId)>,
}

/// The compiled eBPF object, embedded at build time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

impl Probes {
    pub fn load(limits: Limits, families: Families) -> Result<Self, ProbeError> {
        let bits = families.syscall_bits();
        let depth = limits.max_depth.clamp(1, MAX_FRAMES as u32 - 1);
        // Without it, a forked child becomes a target when its parent's fork
        // returns: a child that runs first is missed until then.
        let task_tgid = if families.forks {
            btf::field_offset("task_struct", "tgid").unwrap_or_else(|e| {
                log::warn!("forked processes may be seen late: {e}");
                0
            })
        } else {
            0
        };
        let ebpf = EbpfLoader::new()
            .override_global(globals::FAMILIES, &bits, true)
            .override_global(globals::MAX_DEPTH, &depth, true)
            .override_global(globals::TASK_TGID, &task_tgid, true)
            .map_max_entries(maps::ALLOCS, limits.max_allocs)
            .map_max_entries(maps::STACKS, limits.max_stacks)
            .map_max_entries(maps::SITES, limits.max_sites())
            .map_max_entries(maps::UNWIND_ROWS, limits.max_unwind_rows)
            .map_max_entries(maps::UNWIND_PAGES, limits.max_unwind_pages())
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(cause(&e)))?;
        let mut probes = Self {
            ebpf,
            loaded: Vec::new(),
            limits,
            step_costs: None,
            links: StdHashMap::new(),
            tracepoints: Vec::new(),
            syscalls: Vec::new(),
        };
        let mut syscall_links = Vec::new();
        for (program, phase) in [(programs::SYS_ENTER, "enter"), (programs::SYS_EXIT, "exit")] {
            let prog: &mut TracePoint = probes.program(program)?;
            let followed = syscalls::FOLLOWED
                .iter()
                .filter(|&&(_, _, by)| by == 0 || by & bits != 0);
            for &(_, name, _) in followed {
                let event = format!("sys_{phase}_{name}");
                let link = prog
                    .attach("syscalls", &event)
                    .map_err(|e| ProbeError::Syscall(event, cause(&e)))?;
                syscall_links.push((program, link));
            }
        }
        probes.syscalls = syscall_links;
        if task_tgid != 0 {
            let tracepoint = programs::SCHED_PROCESS_FORK;
            let prog: &mut RawTracePoint = probes.program(tracepoint)?;
            let link = prog
                .attach(tracepoint)
                .map_err(|e| ProbeError::Tracepoint(tracepoint, cause(&e)))?;
            probes.tracepoints.push((tracepoint, link));
        }
        Ok(probes)
    }

    /// Whether targets stop themselves for userspace: new processes and images
    /// until their probes are attached (`pause::NEW`, see
    /// leaktrace-ebpf/src/fork.rs), exiting ones until their heap is scanned
    /// (`pause::EXIT`, exit.rs).
    pub fn set_pausing(&mut self, slot: u32, on: bool) -> Result<(), ProbeError> {
        let mut pause: Array<&mut MapData, u32> = self.map_mut(maps::PAUSE)?;
        pause
            .set(slot, on as u32, 0)
            .map_err(|e| ProbeError::Map(maps::PAUSE, cause(&e)))
    }

    /// Attaches `image_exit` at `exit` for process `pid` only.
    pub fn attach_exit(&mut self, pid: u32, exit: &ExitPoint) -> Result<(), ProbeError> {
        self.attach_one(
            pid,
            programs::IMAGE_EXIT,
            "_exit",
            &exit.path,
            exit.file_offset,
        )
    }

    /// Attaches `image_entry` at `offset` of `exe` for process `pid` only.
    pub fn attach_entry(&mut self, pid: u32, exe: &Path, offset: u64) -> Result<(), ProbeError> {
        self.attach_one(pid, programs::IMAGE_ENTRY, "the entry point", exe, offset)
    }

    /// Attaches `program` (`what`, in errors) at `offset` of `path` for process
    /// `pid` only, keeping the link.
    fn attach_one(
        &mut self,
        pid: u32,
        program: &'static str,
        what: &str,
        path: &Path,
        offset: u64,
    ) -> Result<(), ProbeError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).expect("PID 0 is never a target"));
        let probe: &mut UProbe = self.program(program)?;
        let link = probe
            .attach(UProbeAttachLocation::AbsoluteOffset(offset), path, scope)
            .map_err(|e| ProbeError::Attach {
                function: what.into(),
                path: path.display().to_string(),
                pid,
                error: cause(&e),
            })?;
        self.links.entry(pid).or_default().push((program, link));
        Ok(())
    }

    /// The links `ids` name, out of their programs.
    fn take_links(&mut self, ids: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
        ids.into_iter()
            .filter_map(|(program, id)| self.program::<UProbe>(program).ok()?.take_link(id).ok())
            .collect()
    }

    fn program<T>(&mut self, name: &'static str) -> Result<&mut T, ProbeError>
    where
        for<'a> &'a mut T:
            TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
        T: LoadProgram,
    {
        let program = self.ebpf.program_mut(name).ok_or(ProbeError::Program {
            program: name,
            error: MISSING.into(),
        })?;
        let program: &mut T = program.try_into().map_err(|e| ProbeError::Program {
            program: name,
            error: cause(&e),
        })?;
        if !self.loaded.contains(&name) {
            program.load_program().map_err(|e| ProbeError::Program {
                program: name,
                error: cause(&e),
            })?;
            self.loaded.push(name);
        }
        Ok(program)
    }

    /// Attaches the allocator probes to `target` only (perf's pid filter: other
    /// processes using the same library never hit a breakpoint).
    pub fn attach_allocator(
        &mut self,
        target: &Target,
        allocator: &Allocator,
    ) -> Result<(), ProbeError> {
        // Return probes first: a call whose entry probe records it then always
        // has its return armed. The other way round, a call entered between the
        // two attachments leaves its thread's state looking inside the allocator,
        // and the calls after it on that thread would be taken for nested ones.
        // Both at the placed point: the return address is still on top of the
        // stack there (see placement.rs).
        let pid = target.pid;
        let returns = allocator.points.iter().filter(|p| p.returns);
        let programs = returns
            .map(|p| (programs::ALLOC_RETURN, p))
            .chain(allocator.points.iter().map(|p| (p.program, p)));
        for (program, point) in programs {
            let link = self.attach_uprobe(program, point, &allocator.path, pid)?;
            self.links.entry(pid).or_default().push((program, link));
        }
        Ok(())
    }

    /// Attaches the Go runtime probes to `target` (entry probes only: see
    /// leaktrace-ebpf/src/go.rs): the heap ones with `heap`, the goroutine ones
    /// with `goroutines`.
    pub fn attach_go(
        &mut self,
        target: &Target,
        go: &GoRuntime,
        heap: bool,
        goroutines: bool,
    ) -> Result<(), ProbeError> {
        // The probe reads a new goroutine's id and making from its `g`.
        let layout = go.probe_layout();
        let goroutines = match layout {
            Some(layout) if goroutines => match self.set_go_layout(target.pid, layout) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("PID {}: goroutines not followed: {e}", target.pid);
                    false
                }
            },
            Some(_) => false,
            None => {
                if goroutines {
                    log::warn!(
                        "PID {}: goroutines not followed: the layout of runtime.g in {} is not \
                         known (Go 1.21 to 1.27 are)",
                        target.pid,
                        go.version.as_deref().unwrap_or("this Go release")
                    );
                }
                false
            }
        };
        for point in &go.points {
            let wanted = if programs::GOROUTINE.contains(&point.program) {
                goroutines
            } else {
                heap
            };
            if wanted {
                let point = match layout {
                    // The goroutine probes find the layout in their cookie.
                    Some(layout) if programs::GOROUTINE.contains(&point.program) => &ProbePoint {
                        cookie: u64::from(layout.goid) | u64::from(layout.gopc) << 32,
                        ..point.clone()
                    },
                    _ => point,
                };
                let link = self.attach_uprobe(point.program, point, &go.path, target.pid)?;
                self.links
                    .entry(target.pid)
                    .or_default()
                    .push((point.program, link));
            }
        }
        Ok(())
    }

    /// Attaches `program` at `point` (its function's offset in `path` plus
    /// its shift, with its cookie) for process `pid` only.
    fn attach_uprobe(
        &mut self,
        program: &'static str,
        point: &ProbePoint,
        path: &Path,
        pid: u32,
    ) -> Result<UProbeLinkId, ProbeError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).expect("PID 0 is never a target"));
        let probe: &mut UProbe = self.program(program)?;
        // Only the allocator's shared return program may be a uretprobe: one on Go
        // code crashes the target (leaktrace-ebpf/src/go.rs).
        assert_eq!(
            matches!(probe.kind(), ProbeKind::Return),
            program == programs::ALLOC_RETURN,
            "{program}: return probes are for alloc_return only"
        );
        probe
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(point.file_offset + point.shift),
                    cookie: (point.cookie != 0).then_some(point.cookie),
                },
                path,
                scope,
            )
            .map_err(|e| ProbeError::Attach {
                function: point.function.clone(),
                path: path.display().to_string(),
                pid,
                error: cause(&e),
            })
    }

    /// Attaches `free_enter`, which returns at once for a NULL argument, at
    /// `offset` of `path` for leaktrace itself (see stepcost.rs).
    pub fn attach_calibration(
        &mut self,
        path: &Path,
        offset: u64,
    ) -> Result<UProbeLinkId, ProbeError> {
        let me = NonZeroU32::new(std::process::id()).expect("our PID is not 0");
        let probe: &mut UProbe = self.program(programs::FREE_ENTER)?;
        probe
            .attach(
                UProbeAttachLocation::AbsoluteOffset(offset),
                path,
                UProbeScope::OneProcess(me),
            )
            .map_err(|e| ProbeError::Attach {
                function: "leaktrace's calibration function".into(),
                path: path.display().to_string(),
                pid: me.get(),
                error: cause(&e),
            })
    }

    pub fn detach_calibration(&mut self, link: UProbeLinkId) {
        if let Ok(probe) = self.program::<UProbe>(programs::FREE_ENTER) {
            let _ = probe.detach(link);
        }
    }

    /// What a single-stepped and an emulated probe cost per call here
    /// (measured once; NaN when it could not be).
    pub fn step_costs(&mut self) -> Costs {
        if let Some(c) = self.step_costs {
            return c;
        }
        let costs = stepcost::measure(self).unwrap_or_else(|e| {
            log::debug!("probe costs not measured: {e}");
            Costs {
                stepped_ns: f64::NAN,
                emulated_ns: f64::NAN,
            }
        });
        self.step_costs = Some(costs);
        costs
    }

    /// Lets the syscall tracepoints see `pid`.
    pub fn add_target(&mut self, pid: u32) -> Result<(), ProbeError> {
        let mut targets: HashMap<&mut MapData, u32, u32> = self.map_mut(maps::TARGETS)?;
        targets
            .insert(pid, 1, 0)
            .map_err(|e| ProbeError::Map(maps::TARGETS, cause(&e)))
    }

    /// Forgets processes that have exited (their sites' totals read before):
    /// no kernel map keeps an entry of theirs, and their PIDs may be other
    /// processes' next. `probed`: some had heap probes, so sites and blocks
    /// (each map is walked whole: only then); `go`: some ran Go, whose
    /// sampled objects the per-process block counts leave out.
    pub fn forget(&mut self, pids: &[u32], probed: bool, go: bool) {
        if pids.is_empty() {
            return;
        }
        let mut blocks = go;
        if let Ok(mut map) = self.map_mut::<HashMap<&mut MapData, u32, i64>>(maps::LIVE_BLOCKS) {
            for pid in pids {
                blocks |= map.get(pid, 0).is_ok_and(|n| n > 0);
                let _ = map.remove(pid);
            }
        }
        // Whether or not it still runs Go (an exec may have dropped its runtime).
        if let Ok(mut map) = self.map_mut::<HashMap<&mut MapData, u32, GoLayout>>(maps::GO_LAYOUT) {
            for pid in pids {
                let _ = map.remove(pid);
            }
        }
        for name in [maps::TARGETS, maps::FORKED, maps::EXITING] {
            if let Ok(mut map) = self.map_mut::<HashMap<&mut MapData, u32, u32>>(name) {
                for pid in pids {
                    let _ = map.remove(pid);
                }
            }
        }
        if !probed {
            return;
        }
        let theirs = |tgid: u32| pids.contains(&tgid);
        let mut result =
            self.remove_where(maps::SITES, |k: &SiteKey, _: &SiteStats| theirs(k.tgid));
        if go {
            result = result.and_then(|()| {
                self.remove_where(maps::GO_BEFORE_ATTACH, |k: &AllocKey, _: &i64| {
                    theirs(k.tgid)
                })
            });
            result = result.and_then(|()| self.forget_go_creators(&theirs));
        }
        if blocks {
            result = result.and_then(|()| {
                self.remove_where(maps::ALLOCS, |k: &AllocKey, _: &AllocInfo| theirs(k.tgid))
            });
        }
        if let Err(e) = result {
            log::warn!("entries of exited processes left in the kernel: {e}");
        }
    }

    /// Removes the goroutine counts of the processes `theirs` picks (gone,
    /// or running a new image: what ingest counted of them went too).
    pub fn forget_go_creators(&mut self, theirs: &impl Fn(u32) -> bool) -> Result<(), ProbeError> {
        let mut map: PerCpuHashMap<&mut MapData, AllocKey, GoCreator> =
            self.map_mut(maps::GO_CREATORS)?;
        let keys: Vec<AllocKey> = map.keys().flatten().filter(|k| theirs(k.tgid)).collect();
        for k in keys {
            let _ = map.remove(&k);
        }
        Ok(())
    }

    /// Goroutines each process made so far per `go` statement, as (gopc,
    /// count) by tgid, all CPUs added up: one walk of the map for all.
    pub fn go_creators(&self) -> Result<StdHashMap<u32, Vec<(u64, u64)>>, ProbeError> {
        let map: PerCpuHashMap<&MapData, AllocKey, GoCreator> = self.map(maps::GO_CREATORS)?;
        let mut made: StdHashMap<u32, Vec<(u64, u64)>> = StdHashMap::new();
        for entry in map.iter() {
            let (k, per_cpu) = entry.map_err(|e| ProbeError::Map(maps::GO_CREATORS, cause(&e)))?;
            let n = per_cpu.iter().map(|c| c.made).sum();
            made.entry(k.tgid).or_default().push((k.addr, n));
        }
        Ok(made)
    }

    /// Removes the entries of hash map `name` that `which` picks.
    fn remove_where<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        mut which: impl FnMut(&K, &V) -> bool,
    ) -> Result<(), ProbeError> {
        let mut keys = Vec::new();
        self.each(name, |k: &K, v: &V| {
            if which(k, v) {
                keys.push(*k);
            }
        })?;
        let mut map: HashMap<&mut MapData, K, V> = self.map_mut(name)?;
        for k in keys {
            // Gone meanwhile (freed): nothing to remove.
            let _ = map.remove(&k);
        }
        Ok(())
    }

    /// Every site's totals.
    pub fn sites(&self) -> Result<Vec<(SiteKey, SiteStats)>, ProbeError> {
        let mut sites = Vec::new();
        self.each(maps::SITES, |k: &SiteKey, v: &SiteStats| {
            sites.push((*k, *v))
        })?;
        Ok(sites)
    }

    /// The outstanding C heap blocks of process `pid`, by address (Go's
    /// sampled objects share the map: they are the garbage collector's).
    pub fn heap_blocks_of(&self, pid: u32) -> Result<Vec<(u64, AllocInfo)>, ProbeError> {
        let mut allocs = Vec::new();
        self.each_alloc(|k, v| {
            if k.tgid == pid && v.site.kind == SiteKind::Heap as u32 {
                allocs.push((k.addr, *v));
            }
        })?;
        Ok(allocs)
    }

    /// Calls `each` with every outstanding allocation.
    pub fn each_alloc(&self, each: impl FnMut(&AllocKey, &AllocInfo)) -> Result<(), ProbeError> {
        self.each(maps::ALLOCS, each)
    }

    /// Calls `each` with every entry of hash map `name`, read in batches.
    fn each<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
        each: impl FnMut(&K, &V),
    ) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| ProbeError::Map(name, MISSING.into()))?;
        let (aya::maps::Map::HashMap(data) | aya::maps::Map::LruHashMap(data)) = map else {
            return Err(ProbeError::Map(name, "not a hash map".into()));
        };
        batch::for_each(data, each).map_err(|e| ProbeError::Map(name, cause(&e)))
    }

    /// Takes process `pid`'s outstanding allocations made before `until` out
    /// of the kernel's accounting, returning them.
    pub fn take_allocs(&mut self, pid: u32, until: u64) -> Result<Vec<AllocInfo>, ProbeError> {
        let mut old: Vec<(AllocKey, AllocInfo)> = Vec::new();
        self.each_alloc(|k, info| {
            if k.tgid == pid && info.ts_ns <= until {
                old.push((*k, *info));
            }
        })?;
        let mut allocs: HashMap<&mut MapData, AllocKey, AllocInfo> = self.map_mut(maps::ALLOCS)?;
        // Only what this removes is ours: a free may settle an entry meanwhile.
        Ok(old
            .into_iter()
            .filter(|(k, _)| allocs.remove(k).is_ok())
            .map(|(_, info)| info)
            .collect())
    }

    /// Go heap objects sampled before attach still in use, per (tgid, bucket).
    pub fn go_before_attach(&self) -> Result<HashMap<&MapData, AllocKey, i64>, ProbeError> {
        self.map(maps::GO_BEFORE_ATTACH)
    }

    /// Where the goroutine probes find a goroutine's id and making in `pid`'s `runtime.g`.
    pub fn set_go_layout(&mut self, pid: u32, layout: GoLayout) -> Result<(), ProbeError> {
        let mut map: HashMap<&mut MapData, u32, GoLayout> = self.map_mut(maps::GO_LAYOUT)?;
        map.insert(pid, layout, 0)
            .map_err(|e| ProbeError::Map(maps::GO_LAYOUT, cause(&e)))
    }

    /// Seeds the count of bucket `bucket`'s objects of `pid` in use at attach.
    pub fn seed_go_before_attach(
        &mut self,
        pid: u32,
        bucket: u64,
        count: i64,
    ) -> Result<(), ProbeError> {
        let mut map: HashMap<&mut MapData, AllocKey, i64> = self.map_mut(maps::GO_BEFORE_ATTACH)?;
        let key = AllocKey {
            tgid: pid,
            _pad: 0,
            addr: bucket,
        };
        map.insert(key, count, 0)
            .map_err(|e| ProbeError::Map(maps::GO_BEFORE_ATTACH, cause(&e)))
    }

    /// The return addresses of stack `id`, innermost first, and why its walk
    /// ended; `None` when the kernel has no such stack.
    pub fn stack(&self, id: StackId) -> Option<(Vec<u64>, u32)> {
        let stacks: HashMap<&MapData, StackId, StackTrace> = self.map(maps::STACKS).ok()?;
        let trace = stacks.get(&id, 0).ok()?;
        let len = (trace.len as usize).min(MAX_FRAMES);
        Some((trace.pcs[..len].to_vec(), trace.end))
    }

    /// How many unwind rows and pages the kernel's table maps hold.
    pub fn unwind_capacity(&self) -> (u32, u32) {
        (self.limits.max_unwind_rows, self.limits.max_unwind_pages())
    }

    /// Writes `rows` at `first` of the kernel's unwind rows.
    pub fn append_unwind_rows(&mut self, first: u32, rows: &[UnwindRow]) -> Result<(), ProbeError> {
        self.write_array(maps::UNWIND_ROWS, first, rows)
    }

    /// Writes `pages` at `first` of the kernel's unwind page index.
    pub fn append_unwind_pages(
        &mut self,
        first: u32,
        pages: &[PageIndex],
    ) -> Result<(), ProbeError> {
        self.write_array(maps::UNWIND_PAGES, first, pages)
    }

    /// Writes `values` into array map `name` from index `first` on.
    fn write_array<T: aya::Pod>(
        &mut self,
        name: &'static str,
        first: u32,
        values: &[T],
    ) -> Result<(), ProbeError> {
        let mut map: Array<&mut MapData, T> = self.map_mut(name)?;
        for (i, value) in values.iter().enumerate() {
            map.set(first + i as u32, *value, 0)
                .map_err(|e| ProbeError::Map(name, cause(&e)))?;
        }
        Ok(())
    }

    /// Sets the executable mappings the unwinder uses for `pid`.
    pub fn set_mappings(&mut self, pid: u32, value: &ProcMappings) -> Result<(), ProbeError> {
        let mut map: HashMap<&mut MapData, u32, ProcMappings> = self.map_mut(maps::MAPPINGS)?;
        map.insert(pid, value, 0)
            .map_err(|e| ProbeError::Map(maps::MAPPINGS, cause(&e)))
    }

    /// Whether the unwinder has mappings for `pid`.
    pub fn has_mappings(&self, pid: u32) -> bool {
        self.map::<HashMap<&MapData, u32, ProcMappings>>(maps::MAPPINGS)
            .is_ok_and(|map| map.get(&pid, 0).is_ok())
    }

    /// Drops `pid`'s mappings (it has exited, or exec'd: the kernel drops those itself).
    pub fn remove_mappings(&mut self, pid: u32) {
        if let Ok(mut map) =
            self.map_mut::<HashMap<&mut MapData, u32, ProcMappings>>(maps::MAPPINGS)
        {
            let _ = map.remove(&pid);
        }
    }

    /// Each counter summed over CPUs.
    pub fn counters(&self) -> Result<[u64; COUNTER_SLOTS as usize], ProbeError> {
        let array: PerCpuArray<&MapData, u64> = self.map(maps::COUNTERS)?;
        let mut out = [0u64; COUNTER_SLOTS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = array
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::Map(maps::COUNTERS, cause(&e)))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    /// The event ring buffer; taken once, by the pump.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or_else(|| ProbeError::Map(maps::EVENTS, MISSING.into()))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map(maps::EVENTS, cause(&e)))
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| ProbeError::Map(name, MISSING.into()))?;
        T::try_from(map).map_err(|e| ProbeError::Map(name, cause(&e)))
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, ProbeError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| ProbeError::Map(name, MISSING.into()))?;
        T::try_from(map).map_err(|e| ProbeError::Map(name, cause(&e)))
    }
}

/// Removing a uprobe is slow: the kernel waits for a grace period (~0.1 s)
/// holding a lock every perf-event uprobe attachment also takes. Removed while
/// tracing, a child's probes held up the next child's attachment (and that
/// child, stopped meanwhile) by seconds; so they stay until the end, where
/// those of live processes go first, then the rest, with the syscall
/// tracepoints, by a process left to it (`leaktrace-rm`).
impl Drop for Probes {
    fn drop(&mut self) {
        let (live, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|(pid, _)| Path::new(&format!("/proc/{pid}/exe")).exists());
        let started = std::time::Instant::now();
        let live = self.take_links(live.into_iter().flat_map(|(_, ids)| ids).collect());
        let n = live.len();
        drop(live);
        for (name, link) in std::mem::take(&mut self.tracepoints) {
            if let Ok(tracepoint) = self.program::<RawTracePoint>(name) {
                let _ = tracepoint.detach(link);
            }
        }
        let uprobes_took = started.elapsed();
        let gone = self.take_links(gone.into_iter().flat_map(|(_, ids)| ids).collect());
        // The syscall tracepoints' removals each wait out a grace period of
        // the kernel's, in turn (3.5 s for all here): they and the uprobes
        // of exited processes, which cannot fire, go after leaktrace exits.
        remove_after_exit();
        let syscalls: Vec<_> = std::mem::take(&mut self.syscalls)
            .into_iter()
            .filter_map(|(name, id)| self.program::<TracePoint>(name).ok()?.take_link(id).ok())
            .collect();
        drop(syscalls);
        log::debug!(
            "{n} uprobes of live processes removed in {uprobes_took:.2?}; the syscall tracepoints and {} uprobes of exited processes go after leaktrace exits",
            gone.len()
        );
        drop(gone);
    }
}

/// Forks a process that holds every descriptor leaktrace has until leaktrace
/// exits, then closes them (the last reference: the slow removals happen
/// there) and ends. leaktrace's own closes are then quick.
fn remove_after_exit() {
    // Held open by leaktrace until it exits: then the child reads EOF.
    let Ok((wait, hold)) = std::io::pipe() else {
        return;
    };
    // It keeps the kernel objects alone (programs, maps, links, perf events:
    // anonymous inodes): no file, and no pipe a reader waits on to end
    // (stdout and stderr of whoever started leaktrace). Its own end of the
    // pipe and the standard three go even when /proc cannot be listed (at
    // the open-files limit).
    let hold_fd = std::os::fd::AsRawFd::as_raw_fd(&hold);
    let listed = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| !l.to_string_lossy().starts_with("anon_inode:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok());
    let mut others: Vec<libc::c_int> = [0, 1, 2, hold_fd].into_iter().chain(listed).collect();
    others.sort_unstable();
    others.dedup();
    others.retain(|&fd| fd != std::os::fd::AsRawFd::as_raw_fd(&wait));
    // SAFETY: the child makes only async-signal-safe system calls (setsid,
    // prctl, close, read, close_range, _exit) and reads only memory prepared before the fork.
    unsafe {
        match libc::fork() {
            0 => {
                libc::setsid();
                libc::prctl(libc::PR_SET_NAME, c"leaktrace-rm".as_ptr());
                for &fd in &others {
                    libc::close(fd);
                }
                let mut byte = 0u8;
                // EOF: leaktrace has exited (or dropped its end).
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&wait),
                    (&raw mut byte).cast(),
                    1,
                );
                libc::close_range(0, u32::MAX, 0);
                libc::_exit(0);
            }
            -1 => {}
            _ => std::mem::forget(hold), // closed when leaktrace exits
        }
    }
}

/// The program types leaktrace loads, behind one `load` call.
pub trait LoadProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl LoadProgram for UProbe {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl LoadProgram for TracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl LoadProgram for RawTracePoint {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that, like aya's, names a call and keeps the reason as its source.
    #[derive(Debug, thiserror::Error)]
    #[error("`bpf_link_create` failed")]
    struct Failed(#[source] std::io::Error);

    #[test]
    fn causes_are_said_once_with_their_fix() {
        let e = Failed(std::io::Error::from_raw_os_error(libc::EMFILE));
        let text = cause(&e);
        assert!(
            text.starts_with("`bpf_link_create` failed: Too many open files"),
            "{text}"
        );
        assert!(text.contains("ulimit -n"), "{text}");
        assert_eq!(text.matches("Too many open files").count(), 1, "{text}");
        let e = Failed(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            cause(&e),
            "`bpf_link_create` failed: No such file or directory (os error 2)"
        );
    }

    /// A global symbol of the embedded eBPF object: its name, section, size.
    struct Symbol {
        name: String,
        section: String,
        size: u64,
    }

    fn object_symbols() -> Vec<Symbol> {
        use object::{Object, ObjectSection, ObjectSymbol};
        let file = object::File::parse(OBJECT).expect("the embedded eBPF object is an ELF file");
        file.symbols()
            .filter(|s| s.is_global() && !s.is_undefined())
            .filter_map(|s| {
                let section = file.section_by_index(s.section_index()?).ok()?;
                Some(Symbol {
                    name: s.name().ok()?.to_string(),
                    section: section.name().ok()?.to_string(),
                    size: s.size(),
                })
            })
            .collect()
    }

    /// The names userspace loads programs, maps and globals by are those of
    /// the compiled object: a typo fails here, not at a production load.
    #[test]
    fn every_name_userspace_uses_is_in_the_ebpf_object() {
        let symbols = object_symbols();
        let in_sections = |pick: &dyn Fn(&str) -> bool| -> Vec<&Symbol> {
            symbols.iter().filter(|s| pick(&s.section)).collect()
        };
        // Programs: the functions in program sections ("uprobe", "tracepoint", "raw_tp/…"),
        // not the helpers in .text. Every one has its constant, and back.
        let is_program_section = |section: &str| {
            ["uprobe", "uretprobe", "tracepoint"].contains(&section)
                || section.starts_with("raw_tp/")
        };
        let programs_found = in_sections(&is_program_section);
        let found: Vec<&str> = programs_found.iter().map(|s| s.name.as_str()).collect();
        let missing: Vec<&str> = programs::ALL
            .into_iter()
            .filter(|name| !found.contains(name))
            .collect();
        let unnamed: Vec<&str> = found
            .iter()
            .copied()
            .filter(|name| !programs::ALL.contains(name))
            .collect();
        assert!(
            missing.is_empty() && unnamed.is_empty(),
            "programs in leaktrace_common::programs but not in the eBPF object: {missing:?}; \
             in the object but not in leaktrace_common::programs: {unnamed:?}"
        );
        let mut once = programs::ALL.to_vec();
        once.sort_unstable();
        once.dedup();
        assert_eq!(once.len(), programs::ALL.len(), "a program listed twice");
        for p in &programs_found {
            // A raw tracepoint program is attached to the tracepoint of its name.
            if let Some(tracepoint) = p.section.strip_prefix("raw_tp/") {
                assert_eq!(tracepoint, p.name, "program {} in {}", p.name, p.section);
            }
            // attach_uprobe takes only alloc_return for a return probe.
            assert_eq!(
                p.section == "uretprobe",
                p.name == programs::ALLOC_RETURN,
                "program {} in {}",
                p.name,
                p.section
            );
        }
        for (what, names, sections, size) in [
            ("map", &maps::ALL[..], &["maps", ".maps"][..], None),
            (
                "global",
                &globals::ALL[..],
                &[".rodata", ".data", ".bss"][..],
                Some(size_of::<u32>() as u64),
            ),
        ] {
            let have = in_sections(&|section| sections.contains(&section));
            for name in names {
                let symbol = have.iter().find(|s| s.name == *name);
                let symbol = symbol.unwrap_or_else(|| panic!("eBPF object lacks {what} {name}"));
                if let Some(size) = size {
                    assert_eq!(symbol.size, size, "{what} {name}");
                }
            }
        }
    }
}
