//! The kernel side's way in: the probes each target gets as it comes — named
//! at start, forked, exec'd, loading a library — and what it held before.
use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context, Result};
use leaktrace_common::{ProcEvent, pause};
use log::{debug, info, warn};

use super::{
    GoHeapBefore, Options, Pump, now_ns,
    targets::{Go, Traced},
};
use crate::{
    allocator::{self, AllocatorError, Found},
    elf::ElfImage,
    escape,
    golang::GoRuntime,
    model::Lost,
    probes::{Families, Probes},
    procmaps::{FileId, ProcMaps},
    target::{self, Credentials, Launched, Target, mapped_file},
    unwind::Unwinder,
};

/// Attaches what `target` needs: the allocator probes (`allocators` is the
/// lookup's result; a Go program may have none) and, for a Go program (`exe` as
/// leaktrace opens it), the Go runtime probes.
pub(super) fn attach(
    probes: &mut Probes,
    opts: &Options,
    target: &Target,
    exe: &std::path::Path,
    allocators: impl FnOnce() -> Result<Found, AllocatorError>,
) -> Result<(Found, Option<Go>)> {
    let image = ElfImage::open(exe)?;
    let runtime = GoRuntime::inspect(&image)?;
    let found = if opts.families.heap {
        match allocators() {
            Ok(found) => found,
            // A Go program without cgo has no malloc: its heap is Go's. Its
            // executable was looked at (not again when its mappings are).
            Err(AllocatorError::NotFound { .. }) if runtime.is_some() => Found {
                files: image.file_id().into_iter().collect(),
                ..Found::default()
            },
            Err(e) => return Err(e).with_context(|| format!("PID {}", target.pid)),
        }
    } else {
        Found::default()
    };
    for alloc in &found.allocators {
        probes
            .attach_allocator(target, alloc)
            .with_context(|| format!("PID {}: {}", target.pid, alloc.describe()))?;
        info!("PID {}: probing {}", target.pid, alloc.describe());
        let hot = alloc.stepped_hot();
        if !hot.is_empty() {
            let costs = probes.step_costs();
            warn!(
                "PID {}: {}: {} single-stepped (no instruction the kernel emulates before \
                 their arguments are lost): ~{:.1} µs per call here, against ~{:.1} µs \
                 emulated",
                target.pid,
                alloc.describe(),
                hot.join(", "),
                costs.stepped_ns / 1000.0,
                costs.emulated_ns / 1000.0,
            );
        }
    }
    if opts.scan_at_exit {
        attach_exit(probes, target.pid, found.exit.as_ref());
    }
    for unsupported in &found.unsupported {
        warn!(
            "PID {}: {unsupported} is an allocator leaktrace does not probe: its \
             allocations are not seen",
            target.pid
        );
    }
    if let Some(go) = &runtime {
        probes.attach_go(target, go, opts.families.heap, opts.families.goroutines)?;
        // Goroutine ends are read, not probed: the last read is at exit.
        if opts.scan_at_exit && opts.families.goroutines {
            attach_exit(probes, target.pid, go.exit.as_ref());
        }
        info!(
            "PID {}: Go runtime {}",
            target.pid,
            go.version.as_deref().unwrap_or("(version unknown)")
        );
    }
    let go = runtime.map(|runtime| Go {
        runtime,
        rate: None,
        before_attach: None,
        sampling_set: false,
    });
    Ok((found, go))
}

/// Re-reads `pid`'s memory map and tells the unwinder in the kernel about
/// code mapped since.
pub(super) fn update_maps(
    probes: &mut Probes,
    unwinder: &mut Unwinder,
    maps: &mut HashMap<u32, ProcMaps>,
    pid: u32,
) {
    let Ok(read) = ProcMaps::read(pid) else {
        return;
    };
    if read.is_empty() {
        return;
    }
    if let Err(e) = unwinder.update(probes, pid, &read) {
        warn!("PID {pid}: stacks through newly mapped code stop there: {e}");
    }
    let read = match maps.get(&pid) {
        Some(previous) => read.succeeding(previous),
        None => read,
    };
    maps.insert(pid, read);
}

pub(super) fn preload_from_env() -> Vec<PathBuf> {
    std::env::var("LD_PRELOAD")
        .map(|v| allocator::preload_paths(&v).map(PathBuf::from).collect())
        .unwrap_or_default()
}

/// Attaches each of `allocators` to `target` (`whose` heap, in messages);
/// the first refusal is said once and the heap counted as not traced, so the
/// report never says "nothing lost" over it. Returns those attached.
fn attach_heap<'a>(
    probes: &mut Probes,
    lost: &mut Lost,
    target: &Target,
    allocators: &'a [allocator::Allocator],
    whose: &str,
) -> Vec<&'a allocator::Allocator> {
    let mut refused = None;
    let attached = allocators
        .iter()
        .filter(|alloc| match probes.attach_allocator(target, alloc) {
            Ok(()) => true,
            Err(e) => {
                refused.get_or_insert(format!("{}: {e}", alloc.describe()));
                false
            }
        })
        .collect();
    if let Some(why) = refused {
        lost.untraced_heaps += 1;
        warn!("{whose}: heap not traced: {why}");
    }
    attached
}

/// Makes `pid` stop at `exit` (its C library's `_exit`, the Go runtime's
/// `runtime.exit`) for the scan of its heap and the last read of its
/// goroutines; a refusal only costs those.
fn attach_exit(probes: &mut Probes, pid: u32, exit: Option<&allocator::ExitPoint>) {
    let Some(exit) = exit else {
        return;
    };
    if let Err(e) = probes.attach_exit(pid, exit) {
        warn!("PID {pid}: not stopped at exit (heap scan, last goroutine read): {e}");
    }
}

impl Pump {
    /// A process a target forked (already a target in the kernel): it gets the
    /// parent's descriptors, mappings, memory map and allocator probes.
    pub(super) fn adopt(&mut self, parent: u32, child: u32) {
        let target = match Target::existing(child) {
            Ok(t) => t,
            Err(e) => {
                // Gone already (it ran unstopped): what its events, later in
                // this batch, tell goes with it once they are applied.
                debug!("forked PID {child} not followed: {e}");
                self.gone.push(child);
                return;
            }
        };
        let allocators = self
            .targets
            .get(parent)
            .map(|t| t.allocators.clone())
            .unwrap_or_default();
        attach_heap(
            &mut self.node.probes,
            &mut self.ingest.model.lost,
            &target,
            &allocators.allocators,
            &format!("PID {child} (forked by {parent})"),
        );
        if self.scan_at_exit {
            attach_exit(&mut self.node.probes, child, allocators.exit.as_ref());
        }
        if let Some(maps) = self.procfs.maps.get(&parent).cloned() {
            self.procfs.maps.insert(child, maps);
        }
        self.ingest.fork(parent, child);
        info!("following PID {child}, forked by {parent}");
        self.targets.add(Traced {
            target,
            allocators,
            go: None,
            child: None,
            root: false,
            whole_heap: false,
            seq: 0,
        });
    }

    /// A target exec'd (and, if `e.paused`, waits): its old image's heap and
    /// mappings are gone, its close-on-exec descriptors closed, and the new
    /// image gets the probes of its own allocators before it runs.
    pub(super) fn new_image(&mut self, e: &ProcEvent) {
        let pid = e.tgid;
        // The old image's stacks symbolize with its maps, before they go.
        self.ingest.symbolize(&self.node.probes, &mut self.procfs);
        // Before the new image can make goroutines (it is probed, then goes on).
        if let Err(e) = self.node.probes.forget_go_creators(&|tgid| tgid == pid) {
            debug!("PID {pid}: goroutine counts of the old image left: {e}");
        }
        update_maps(
            &mut self.node.probes,
            &mut self.node.unwinder,
            &mut self.procfs.maps,
            pid,
        );
        if self.heap {
            self.probe_new_image(pid);
        }
        if e.paused != 0 {
            self.hold_at_entry(pid);
        }
        // The process goes on before the walk of every outstanding allocation
        // in `exec`: what the new image allocates is younger than the exec.
        if e.paused != 0 {
            super::cont(pid);
        }
        self.ingest
            .exec(pid, e.ts_ns, &mut self.node.probes, &self.procfs);
        self.go_after_exec(pid);
    }

    /// A Go runtime found in a process's image stays its own only while the
    /// process runs that image (the command leaktrace started execs into the
    /// very program it inspected); another image's memory is not the
    /// runtime's, never to be read or written as such.
    fn go_after_exec(&mut self, pid: u32) {
        let Some(t) = self.targets.get_mut(pid) else {
            return;
        };
        let Some(go) = &t.go else {
            return;
        };
        // Gone already (a short program): it ran the image exec'd, which is
        // all there is to know; else the file it runs now tells.
        let image = FileId::of_path(std::path::Path::new(&format!("/proc/{pid}/exe")));
        if image.is_none() || image == FileId::of_path(&go.runtime.path) {
            self.ingest.set_go(pid);
        } else {
            info!("PID {pid} exec'd another image: its Go runtime is no longer read");
            t.go = None;
        }
    }

    /// Makes `pid`'s new image stop again at its entry point, when its loader
    /// has mapped the libraries (see leaktrace-ebpf/src/fork.rs).
    fn hold_at_entry(&mut self, pid: u32) {
        let entry = || {
            let entry = target::entry_point(pid).ok()?;
            let mapping = self.procfs.maps.get(&pid)?.lookup(entry)?;
            let exe = target::mapped_file(pid, mapping)?;
            Some((exe, entry - mapping.start + mapping.offset))
        };
        let Some((exe, offset)) = entry() else {
            debug!("PID {pid}: entry point not found: not held there");
            return;
        };
        if let Err(e) = self.node.probes.attach_entry(pid, &exe, offset) {
            debug!("PID {pid}: not held at its entry point: {e}");
        }
    }

    /// Probes the allocators of `pid`'s new image that are not probed already
    /// (the same functions of the same files).
    fn probe_new_image(&mut self, pid: u32) {
        let Some(t) = self.targets.get_mut(pid) else {
            return;
        };
        let Ok(target) = Target::existing(pid) else {
            return; // gone already
        };
        let found = match target.allocators() {
            Ok(found) => found,
            // A Go program without cgo: its heap is Go's (the command
            // leaktrace started execs into it).
            Err(AllocatorError::NotFound { .. }) if t.go.is_some() => {
                t.target = target;
                return;
            }
            Err(e) => {
                if !matches!(e, AllocatorError::NotFound { .. }) {
                    self.ingest.model.lost.untraced_heaps += 1;
                }
                warn!(
                    "PID {pid}: the heap of {} is not traced: {e}",
                    escape::shown(&target.exe.to_string_lossy())
                );
                // Its old image's probes stay attached (see probes.rs: removing
                // them stalls every attachment); they fire only if it calls them.
                t.target = target;
                t.whole_heap = false;
                return;
            }
        };
        // Attached once per process: those of the old image stay.
        let key = |a: &allocator::Allocator| -> (Option<FileId>, Vec<u64>) {
            let at = a.points.iter().map(|p| p.file_offset + p.shift).collect();
            (FileId::of_path(&a.path), at)
        };
        let attached: Vec<_> = t.allocators.allocators.iter().map(key).collect();
        let new: Vec<_> = found
            .allocators
            .into_iter()
            .filter(|a| !attached.contains(&key(a)))
            .collect();
        let whose = format!("PID {pid}'s new image");
        for alloc in attach_heap(
            &mut self.node.probes,
            &mut self.ingest.model.lost,
            &target,
            &new,
            &whose,
        ) {
            info!("{whose}: probing {}", alloc.describe());
            t.allocators.allocators.push(alloc.clone());
        }
        if self.scan_at_exit && found.exit.is_some() && found.exit != t.allocators.exit {
            attach_exit(&mut self.node.probes, pid, found.exit.as_ref());
            t.allocators.exit = found.exit;
        }
        t.allocators.unsupported = found.unsupported;
        t.allocators.files.extend(found.files);
        t.target = target;
        t.whole_heap = true;
    }

    /// Re-reads the memory maps of live targets, but those in `except`.
    pub(super) fn refresh_maps(&mut self, except: &[u32]) {
        let live: Vec<u32> = self
            .targets
            .live()
            .map(|t| t.target.pid)
            .filter(|pid| !except.contains(pid))
            .collect();
        for pid in live {
            self.refresh_maps_of(pid);
        }
    }

    pub(super) fn refresh_maps_of(&mut self, pid: u32) {
        update_maps(
            &mut self.node.probes,
            &mut self.node.unwinder,
            &mut self.procfs.maps,
            pid,
        );
        if self.heap {
            self.probe_loaded_allocators(pid);
        }
    }

    /// Probes the allocators of libraries `pid` mapped since its allocators
    /// were found (`dlopen`, or before attach): their prefixed APIs and Rust
    /// shims (see allocator.rs).
    fn probe_loaded_allocators(&mut self, pid: u32) {
        let Some(maps) = self.procfs.maps.get(&pid) else {
            return;
        };
        let Some(t) = self.targets.get_mut(pid) else {
            return;
        };
        // The file mapped, even when its path names another one now.
        let new: Vec<(FileId, PathBuf)> = maps
            .code()
            .filter_map(|m| Some((m.file?, m)))
            .filter(|(id, _)| t.allocators.files.insert(*id))
            .filter_map(|(id, m)| Some((id, mapped_file(pid, m)?)))
            .collect();
        for (id, path) in new {
            let Ok(image) = ElfImage::open(&path) else {
                continue;
            };
            if image.file_id() != Some(id) {
                continue;
            }
            let mut found = allocator::find_loaded(&image);
            found.allocators.retain(|alloc| {
                match self.node.probes.attach_allocator(&t.target, alloc) {
                    Ok(()) => {
                        info!("PID {pid}: probing {} (loaded later)", alloc.describe());
                        true
                    }
                    Err(e) => {
                        warn!("PID {pid}: {} not traced: {e}", alloc.describe());
                        false
                    }
                }
            });
            t.allocators.extend(found);
        }
    }

    /// Traces running process `pid` from now on (--pid, or the agent's
    /// discovery): its probes, then what it held before them. Already traced: nothing.
    pub(super) fn trace_running(&mut self, pid: u32, opts: &Options) -> Result<()> {
        if self.targets.get(pid).is_some() {
            return Ok(());
        }
        let target = Target::existing(pid)?;
        // The unwinder knows the process's code before the first probe fires.
        update_maps(
            &mut self.node.probes,
            &mut self.node.unwinder,
            &mut self.procfs.maps,
            pid,
        );
        let (allocators, go) = attach(
            &mut self.node.probes,
            opts,
            &target,
            &target.exe_path(),
            || target.allocators(),
        )?;
        self.node.probes.add_target(pid)?;
        info!("tracing PID {pid} ({})", escape::shown(&target.comm));
        if go.is_some() {
            self.ingest.set_go(pid);
        }
        self.targets.add(Traced {
            target,
            allocators,
            go,
            child: None,
            root: !self.forget_exited,
            whole_heap: false,
            seq: 0,
        });
        // After the probes: a descriptor opened or a goroutine started meanwhile is
        // in both the scan and the ring buffer, whose events are applied later and win.
        self.before_attach(pid, opts.families);
        Ok(())
    }

    /// Starts `-- CMD` and traces it from its first instruction.
    pub(super) fn start_command(&mut self, opts: &Options) -> Result<()> {
        let credentials = Credentials::for_command(opts.user.as_deref())?;
        if let Some(c) = &credentials {
            info!("running the command as {c}");
        }
        let launched = Launched::spawn(&opts.command, credentials.as_ref())?;
        let target = launched.target();
        // A script runs its interpreter: that is what allocates.
        let image = target::script_interpreter(&launched.exe).unwrap_or(launched.exe.clone());
        let (allocators, go) = attach(&mut self.node.probes, opts, &target, &image, || {
            allocator::find(&image, &preload_from_env(), &allocator::search_library)
        })?;
        self.node.probes.add_target(target.pid)?;
        info!("started {} as PID {}", launched.exe.display(), target.pid);
        // A short command reaches `_exit` before the loop runs: it stops
        // there from now on. (Nothing fails between here and the pump, whose
        // `Drop` continues any process left stopped.)
        if opts.scan_at_exit {
            self.node.pause_at(pause::EXIT)?;
        }
        let child = launched.release(|pid| {
            update_maps(
                &mut self.node.probes,
                &mut self.node.unwinder,
                &mut self.procfs.maps,
                pid,
            );
        });
        if go.is_some() {
            self.ingest.set_go(target.pid);
        }
        self.targets.add(Traced {
            target,
            allocators,
            go,
            child: Some(child),
            root: true,
            whole_heap: true,
            seq: 0,
        });
        Ok(())
    }

    /// What a running target held before attach: its descriptors and
    /// threads, and for a Go program its goroutines and heap.
    pub(super) fn before_attach(&mut self, pid: u32, families: Families) {
        if families.fds {
            self.ingest.fds_before_attach(pid, now_ns(), &self.procfs);
        }
        if families.threads {
            self.ingest
                .threads_before_attach(pid, now_ns(), &self.procfs);
        }
        if families.goroutines {
            self.goroutines_before_attach(pid);
        }
        if families.heap {
            self.go_heap_before_attach(pid);
        }
    }

    /// The goroutines a Go target has alive at attach, each under a site of its
    /// `go` statement (the one frame the runtime keeps of it).
    fn goroutines_before_attach(&mut self, pid: u32) {
        let Some(go) = self.targets.get_mut(pid).and_then(|t| t.go.as_mut()) else {
            return;
        };
        let live = match go.runtime.goroutines(pid) {
            Ok(live) => live,
            Err(e) => {
                warn!("goroutines started before attach are not counted: {e}");
                return;
            }
        };
        go.before_attach = Some(live.len() as u64);
        self.refresh_maps_of(pid);
        self.ingest
            .goroutines_before_attach(pid, now_ns(), live, &mut self.procfs);
    }

    /// The Go heap a Go target has in use at attach, from the runtime's own heap
    /// profile: each bucket's sampled objects still in use, under its stack and
    /// "[allocated before attach]". The kernel counts them down as they are freed.
    fn go_heap_before_attach(&mut self, pid: u32) {
        let Some(go) = self.targets.get(pid).and_then(|t| t.go.as_ref()) else {
            return;
        };
        let buckets = match go.runtime.heap_buckets(pid) {
            Ok(buckets) => buckets,
            Err(e) => {
                warn!("Go heap allocated before attach is not counted: {e}");
                return;
            }
        };
        for b in buckets {
            if let Err(e) = self
                .node
                .probes
                .seed_go_before_attach(pid, b.addr, b.in_use as i64)
            {
                warn!("Go heap allocated before attach is partly counted: {e}");
                return;
            }
            let stack_id = self.ingest.allocated_before_attach(b.stack);
            let before = GoHeapBefore {
                stack_id,
                size: b.size,
                joined: false,
            };
            self.go_heap_before.insert((pid, b.addr), before);
        }
    }
}
