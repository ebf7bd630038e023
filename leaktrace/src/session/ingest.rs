//! The core: typed events in, the site model out. Descriptor tables (dup,
//! dup2 over an open descriptor, close ranges, close-on-exec at exec, copies
//! at fork), anonymous mappings, goroutines and their creation chains, and the
//! symbols of new sites — through the two seams only (seams.rs), so all of it
//! is tested here on made-up events.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::PathBuf,
    sync::Arc,
};

use leaktrace_common::{FdOpen, GoroutineEvent, MapEvent, StackId};
use log::warn;

use super::{
    events::Event,
    seams::{Kernel, Process},
    stacks::{Note, Pc, Stacks},
};
use crate::{
    golang::LiveGoroutine,
    handles::{self, HandleKind, Origin},
    model::{BEFORE_ATTACH, Handle, Kind, Model, Ns, SiteId},
    symbolize::{Frame, Frames},
};

/// Entries a goroutine's creation chain keeps at most.
const MAX_CHAIN: usize = 128;

/// `openat`'s "relative to the working directory".
const AT_FDCWD: i32 = -100;

/// Sites of a `go` statement's announced goroutines kept, the latest.
const RECENT_SITES: usize = 16;

/// What ingest knows of one `go` statement of a process since attach.
#[derive(Default)]
struct GoStatement {
    /// Sites of its latest announced goroutines (one statement reached from
    /// different callers has several).
    recent: VecDeque<SiteId>,
    /// Goroutines of it leaktrace has counted: announced, found, or counted
    /// as started and ended between two reads.
    seen: u64,
    /// Announced goroutines that ended, by site: where those never seen
    /// (started and ended between two reads) most likely were made.
    ended: Vec<(SiteId, u64)>,
}

/// Where the goroutines of one `go` statement not announced go: among its
/// sites, in proportion to a sample of the same fate. Those found alive go
/// where its announced goroutines are alive (a uniform sample of where its
/// live goroutines were made: the site whose goroutines stay gets those that
/// stay); those never seen, where its announced ones ended. Without any,
/// in proportion to how often each site was announced lately.
struct Shares {
    sites: Vec<(SiteId, f64, u64)>,
    given: u64,
}

impl Shares {
    /// Shares among the sites of `recent` and `sample` (the statement's
    /// sites with announced goroutines of the same fate, and how many).
    fn new(recent: &VecDeque<SiteId>, sample: &[(SiteId, u64)]) -> Self {
        let mut sites: Vec<(SiteId, f64, u64)> = sample
            .iter()
            .map(|&(site, n)| (site, n as f64, 0))
            .collect();
        for &site in recent {
            if !sites.iter().any(|s| s.0 == site) {
                sites.push((site, 0.0, 0));
            }
        }
        if sites.iter().all(|s| s.1 == 0.0) {
            for s in &mut sites {
                s.1 = recent.iter().filter(|&&r| r == s.0).count() as f64;
            }
        }
        let total: f64 = sites.iter().map(|s| s.1).sum();
        for s in &mut sites {
            s.1 /= total;
        }
        Self { sites, given: 0 }
    }

    /// `n` goroutines split by the shares: (site, how many).
    fn split(&mut self, n: u64) -> Vec<(SiteId, u64)> {
        let mut parts: Vec<(SiteId, u64)> = self
            .sites
            .iter()
            .map(|s| (s.0, (s.1 * n as f64).floor() as u64))
            .collect();
        let rest = n - parts.iter().map(|p| p.1).sum::<u64>();
        for _ in 0..rest {
            let Some(site) = self.next() else { break };
            if let Some(p) = parts.iter_mut().find(|p| p.0 == site) {
                p.1 += 1;
            }
        }
        parts
    }

    /// The next goroutine's site: the one furthest below its share.
    fn next(&mut self) -> Option<SiteId> {
        self.given += 1;
        let given = self.given as f64;
        let s = self
            .sites
            .iter_mut()
            .max_by(|a, b| (a.1 * given - a.2 as f64).total_cmp(&(b.1 * given - b.2 as f64)))?;
        s.2 += 1;
        Some(s.0)
    }
}

#[derive(Default)]
pub struct Ingest {
    pub model: Model,
    stacks: Stacks,
    /// Processes running Go: their runtime's own mmap sites are dropped.
    go: HashSet<u32>,
    /// mmap sites inside the Go runtime (heap arenas, stacks, GC metadata): the
    /// Go heap accounts for what they hold, so they are not shown.
    go_runtime_mmaps: HashSet<SiteId>,
    /// Each live goroutine's creation chain, by (tgid, g): the stack that
    /// created it, then what created that goroutine, and so on.
    go_ancestry: HashMap<(u32, u64), StackId>,
    /// Names of the functions goroutines run, by (tgid, entry address).
    start_functions: HashMap<(u32, u64), String>,
    /// Sites of goroutines alive at attach, by (tgid, `go` statement): they
    /// join the site of the first goroutine seen started there.
    go_before: HashMap<(u32, u64), SiteId>,
    /// `go` statements by (tgid, gopc): a busy one has only some of its
    /// goroutines announced (leaktrace-ebpf/src/go.rs); the rest are found
    /// in the runtime's list and counted from the kernel's totals.
    go_statements: HashMap<(u32, u64), GoStatement>,
    /// Live goroutines found unannounced, by (tgid, g).
    go_found: HashSet<(u32, u64)>,
    /// Live goroutines per process: id by `g`, and `g` by id (a new
    /// goroutine names its creator by id). No probe sees one end: the
    /// session finds ended ones in the runtime's memory ([`Ingest::goroutines`]).
    goids: HashMap<u32, HashMap<u64, u64>>,
    by_goid: HashMap<u32, HashMap<u64, u64>>,
    /// Processes whose descriptors or goroutines changed since their sites
    /// were last recounted.
    stale: HashSet<u32>,
    /// Mapping events not applied yet: a batch is applied at once.
    maps: Vec<MapEvent>,
}

impl Ingest {
    pub fn new(min_age: Ns) -> Self {
        Self {
            model: Model::new(min_age),
            ..Self::default()
        }
    }

    /// `pid` runs Go.
    pub fn set_go(&mut self, pid: u32) {
        self.go.insert(pid);
    }

    /// Applies an event that only the model needs: mappings, descriptors and
    /// goroutines. Process events (fork, exec, entry, exit) are the session's,
    /// which calls [`Ingest::fork`] and [`Ingest::exec`]; they return false.
    pub fn apply(&mut self, event: &Event, kernel: &dyn Kernel, process: &mut dyn Process) -> bool {
        match event {
            Event::Map(e) => {
                let site = SiteId {
                    tgid: e.tgid,
                    kind: Kind::Mmap,
                    stack_id: e.stack_id,
                };
                if !self.go_runtime_mmaps.contains(&site) {
                    self.maps.push(*e);
                }
            }
            Event::FdOpen(e) => {
                self.fd_open(e, kernel, process);
                self.stale.insert(e.tgid);
            }
            Event::FdClose(e) => {
                self.model.close_fds(e.tgid, e.first, e.last);
                self.stale.insert(e.tgid);
            }
            Event::GoroutineNew(e) => {
                self.start_goroutine(e, kernel, process);
                self.stale.insert(e.tgid);
            }
            Event::ThreadNew(e) => {
                let site = SiteId {
                    tgid: e.tgid,
                    kind: Kind::Thread,
                    stack_id: e.stack_id,
                };
                let handle = Handle {
                    site,
                    kind: HandleKind::Thread,
                    detail: String::new(),
                    ts: e.ts_ns,
                    before_attach: false,
                };
                self.model.start_thread(e.tgid, e.tid, handle, true);
                self.stale.insert(e.tgid);
            }
            Event::ThreadExit(e) => {
                self.model.end_thread(e.tgid, Some(e.tid));
                self.stale.insert(e.tgid);
            }
            Event::Fork(_) | Event::Exec(_) | Event::Entry(_) | Event::Exit(_) => return false,
        }
        true
    }

    /// Applies the mapping events held back: before a fork copies them, an
    /// exec drops them, and at the end of each batch.
    pub fn flush(&mut self) {
        self.model.apply_map_events(&std::mem::take(&mut self.maps));
    }

    /// Recounts the handle sites of processes whose tables changed: once a
    /// second, not at every event (a goroutine-heavy service keeps tens of
    /// thousands of them).
    pub fn recount(&mut self) {
        for tgid in std::mem::take(&mut self.stale) {
            self.model.refresh_handles(tgid);
        }
    }

    /// `child` was forked from `parent`: it holds copies of its descriptors
    /// and mappings.
    pub fn fork(&mut self, parent: u32, child: u32) {
        self.flush();
        self.model.fork(parent, child);
        if self.go.contains(&parent) {
            self.go.insert(child);
        }
    }

    /// `pid` exec'd at `ts`: its old image's mappings and heap are gone (its
    /// blocks taken out of the kernel's accounting), and so are its
    /// close-on-exec descriptors — whichever /proc no longer lists — and its
    /// threads.
    pub fn exec(&mut self, pid: u32, ts: Ns, kernel: &mut dyn Kernel, process: &dyn Process) {
        self.flush();
        self.model.forget_mappings(pid);
        self.go.remove(&pid);
        match kernel.take_allocs(pid, ts) {
            Ok(gone) => {
                for info in gone {
                    self.model
                        .heap_gone(SiteId::in_kernel(&info.site), info.size);
                }
            }
            Err(e) => warn!("PID {pid}: the heap of its image before exec stays counted: {e}"),
        }
        let open: Vec<i32> = process.open_fds(pid).iter().map(|f| f.0).collect();
        self.model.retain_fds(pid, &open);
        // The thread that exec'd goes on as the first; the others are gone,
        // and every goroutine of the old image with them.
        self.model.end_thread(pid, None);
        for (g, _) in self.goroutines(pid) {
            self.end_goroutine(pid, g);
        }
        self.go_before.retain(|&(tgid, _), _| tgid != pid);
        self.go_statements.retain(|&(tgid, _), _| tgid != pid);
        self.stale.insert(pid);
    }

    /// A descriptor (or a pair) made by a syscall: its kind and detail from the
    /// call, a dup's from the descriptor it copies.
    fn fd_open(&mut self, e: &FdOpen, kernel: &dyn Kernel, process: &mut dyn Process) {
        let path = {
            let end = e.path.iter().position(|&b| b == 0).unwrap_or(e.path.len());
            String::from_utf8_lossy(&e.path[..end]).into_owned()
        };
        let from_proc = |fd: i32| {
            process
                .fd_link(e.tgid, fd)
                .map_or((HandleKind::Other, String::new()), |l| {
                    handles::classify(&l)
                })
        };
        let (kind, detail) = match handles::origin(e.nr) {
            Origin::Made(HandleKind::File) => {
                let dirfd = e.args[0] as i32;
                let at_dir = (e.nr == handles::nr::OPENAT || e.nr == handles::nr::OPENAT2)
                    && dirfd != AT_FDCWD;
                let dir = if at_dir {
                    self.model
                        .fd(e.tgid, dirfd)
                        .map(|h| PathBuf::from(&h.detail))
                } else {
                    process.cwd(e.tgid)
                };
                (HandleKind::File, handles::absolute(&path, dir.as_deref()))
            }
            Origin::Made(HandleKind::Socket) => {
                let detail = if e.nr == handles::nr::SOCKET || e.nr == handles::nr::SOCKETPAIR {
                    handles::socket_detail(e.args[0], e.args[1])
                } else {
                    "socket".into() // accepted: addresses come from /proc at report time
                };
                (HandleKind::Socket, detail)
            }
            Origin::Made(HandleKind::Memfd) => (HandleKind::Memfd, path),
            Origin::Made(kind) => (kind, String::new()),
            Origin::CopyOf(arg) => match self.model.fd(e.tgid, e.args[arg] as i32) {
                Some(h) => (h.kind, h.detail.clone()),
                None => from_proc(e.fd),
            },
            Origin::Unknown => from_proc(e.fd),
        };
        let id = SiteId {
            tgid: e.tgid,
            kind: if kind == HandleKind::Socket {
                Kind::Socket
            } else {
                Kind::Fd
            },
            stack_id: e.stack_id,
        };
        // On a goroutine leaktrace saw start, the call site continues where the
        // goroutine was created (an HTTP connection is dialed on a goroutine of
        // the Transport, on behalf of the function making the request).
        let id = if self.go_ancestry.contains_key(&(e.tgid, e.g)) {
            let pcs = self.stacks.get(id.stack_id, kernel).pcs;
            SiteId {
                stack_id: self.created_by(e.tgid, e.g, pcs),
                ..id
            }
        } else {
            id
        };
        for fd in [e.fd, e.fd2].into_iter().filter(|&fd| fd >= 0) {
            let handle = Handle {
                site: id,
                kind,
                detail: detail.clone(),
                ts: e.ts_ns,
                before_attach: false,
            };
            self.model.open_fd(e.tgid, fd, handle, true);
        }
    }

    /// The descriptors `pid` has open at attach (`now`), under one site.
    pub fn fds_before_attach(&mut self, pid: u32, now: Ns, process: &dyn Process) {
        for (fd, link) in process.open_fds(pid) {
            let (kind, detail) = handles::classify(&link);
            let id = SiteId {
                tgid: pid,
                kind: if kind == HandleKind::Socket {
                    Kind::Socket
                } else {
                    Kind::Fd
                },
                stack_id: BEFORE_ATTACH,
            };
            let handle = Handle {
                site: id,
                kind,
                detail,
                ts: now,
                before_attach: true,
            };
            self.model.open_fd(pid, fd, handle, false);
            if let Some(site) = self.model.sites.get_mut(&id) {
                site.frames = Frames::from([Frame::note("[opened before attach]")]);
            }
        }
        self.model.refresh_handles(pid);
    }

    /// The threads `pid` has besides its first at attach (`now`), under one site.
    pub fn threads_before_attach(&mut self, pid: u32, now: Ns, process: &dyn Process) {
        let site = SiteId {
            tgid: pid,
            kind: Kind::Thread,
            stack_id: BEFORE_ATTACH,
        };
        for tid in process.threads(pid).into_iter().filter(|&tid| tid != pid) {
            let handle = Handle {
                site,
                kind: HandleKind::Thread,
                detail: String::new(),
                ts: now,
                before_attach: true,
            };
            self.model.start_thread(pid, tid, handle, false);
        }
        if let Some(site) = self.model.sites.get_mut(&site) {
            site.frames = Frames::from([Frame::note("[started before attach]")]);
        }
        self.model.refresh_handles(pid);
    }

    /// The goroutines a Go target has alive at attach (`now`), each under a
    /// site of its `go` statement (the one frame the runtime keeps of it).
    pub fn goroutines_before_attach(
        &mut self,
        pid: u32,
        now: Ns,
        live: Vec<LiveGoroutine>,
        process: &mut dyn Process,
    ) {
        for g in live {
            let site = SiteId {
                tgid: pid,
                kind: Kind::Goroutine,
                stack_id: self.stacks.intern(vec![
                    Pc::Return(g.gopc),
                    Pc::Note(Note::StartedBeforeAttach),
                ]),
            };
            self.go_before.insert((pid, g.gopc), site);
            let handle = Handle {
                site,
                kind: HandleKind::Goroutine,
                detail: self.start_function(pid, g.start_pc, process),
                ts: now,
                before_attach: true,
            };
            self.model.start_goroutine(pid, g.g, handle, false);
            self.known_goroutine(pid, g.g, g.goid);
        }
        self.model.refresh_handles(pid);
    }

    /// Goroutine `g` of `tgid` is `goid`, live; an earlier goroutine on the
    /// same `g` (the runtime reuses a `g` once its goroutine is dead) ended.
    fn known_goroutine(&mut self, tgid: u32, g: u64, goid: u64) {
        if let Some(old) = self.goids.entry(tgid).or_default().insert(g, goid)
            && let Some(ids) = self.by_goid.get_mut(&tgid)
        {
            ids.remove(&old);
        }
        self.by_goid.entry(tgid).or_default().insert(goid, g);
    }

    /// The live goroutines of `tgid` leaktrace knows, as (g, goid).
    pub fn goroutines(&self, tgid: u32) -> Vec<(u64, u64)> {
        self.goids
            .get(&tgid)
            .map(|t| t.iter().map(|(&g, &id)| (g, id)).collect())
            .unwrap_or_default()
    }

    /// Goroutine `g` of `tgid` has ended (its `g` is dead or another's now).
    pub fn end_goroutine(&mut self, tgid: u32, g: u64) {
        if !self.go_found.remove(&(tgid, g))
            && let Some(site) = self.model.goroutine_site(tgid, g)
            && let Some(&Pc::Return(gopc)) = self.stacks.made(site.stack_id).first()
            && let Some(statement) = self.go_statements.get_mut(&(tgid, gopc))
        {
            match statement.ended.iter_mut().find(|e| e.0 == site) {
                Some(e) => e.1 += 1,
                None => statement.ended.push((site, 1)),
            }
        }
        self.model.end_goroutine(tgid, g);
        self.go_ancestry.remove(&(tgid, g));
        if let Some(id) = self.goids.get_mut(&tgid).and_then(|t| t.remove(&g))
            && let Some(ids) = self.by_goid.get_mut(&tgid)
        {
            ids.remove(&id);
        }
        self.stale.insert(tgid);
    }

    /// Whether any `go` statement of `tgid` made more goroutines than were
    /// counted: `made` holds the kernel's totals, by `gopc`.
    pub fn goroutines_unannounced(&self, tgid: u32, made: &[(u64, u64)]) -> bool {
        made.iter().any(|&(gopc, n)| {
            self.go_statements
                .get(&(tgid, gopc))
                .is_none_or(|s| s.seen < n)
        })
    }

    /// Goroutines of `tgid` alive now (`live`, the runtime's list, read at
    /// `now`) that were not announced: each joins a site of its `go`
    /// statement ([`Shares`]), or a site of the statement alone. Then what
    /// each statement made beyond what was counted (`made`, the kernel's
    /// totals by `gopc`) started and ended unseen: its sites' totals count them.
    pub fn goroutines_found(
        &mut self,
        tgid: u32,
        now: Ns,
        live: &[LiveGoroutine],
        made: &[(u64, u64)],
        process: &mut dyn Process,
    ) {
        // Announced goroutines alive, by `go` statement and site.
        let mut alive: HashMap<SiteId, u64> = HashMap::new();
        for (g, site) in self.model.goroutine_sites(tgid) {
            if !self.go_found.contains(&(tgid, g)) {
                *alive.entry(site).or_default() += 1;
            }
        }
        let mut alive_at: HashMap<u64, Vec<(SiteId, u64)>> = HashMap::new();
        for (site, n) in alive {
            if let Some(&Pc::Return(gopc)) = self.stacks.made(site.stack_id).first() {
                alive_at.entry(gopc).or_default().push((site, n));
            }
        }
        let mut shares: HashMap<u64, Shares> = HashMap::new();
        // Only statements the probe saw make goroutines: the list is the
        // target's memory, and any `gopc` in it could be made up.
        let probed: HashSet<u64> = made.iter().map(|m| m.0).collect();
        for g in live {
            let known = self.goids.get(&tgid).and_then(|t| t.get(&g.g));
            if known == Some(&g.goid) || g.goid == 0 || !probed.contains(&g.gopc) {
                continue;
            }
            let statement = self.go_statements.entry((tgid, g.gopc)).or_default();
            statement.seen += 1;
            let site = shares
                .entry(g.gopc)
                .or_insert_with(|| {
                    let alive = alive_at.get(&g.gopc).map_or(&[][..], Vec::as_slice);
                    Shares::new(&statement.recent, alive)
                })
                .next();
            let site = match site {
                Some(site) => site,
                None => self.statement_site(tgid, g.gopc),
            };
            self.go_found.insert((tgid, g.g));
            let pcs = self.stacks.made(site.stack_id).to_vec();
            let chain = self.chain(tgid, g.parent_goid, pcs);
            self.go_ancestry.insert((tgid, g.g), chain);
            self.known_goroutine(tgid, g.g, g.goid);
            let handle = Handle {
                site,
                kind: HandleKind::Goroutine,
                detail: self.start_function(tgid, g.start_pc, process),
                ts: now,
                before_attach: false,
            };
            self.model.start_goroutine(tgid, g.g, handle, true);
            self.stale.insert(tgid);
        }
        for &(gopc, n) in made {
            let statement = self.go_statements.entry((tgid, gopc)).or_default();
            let unseen = n.saturating_sub(statement.seen);
            if unseen == 0 {
                continue;
            }
            statement.seen = n;
            // Most likely made where its goroutines are announced most.
            let parts = Shares::new(&statement.recent, &statement.ended).split(unseen);
            if parts.is_empty() {
                let site = self.statement_site(tgid, gopc);
                self.model.count_made(site, unseen);
            }
            for (site, n) in parts {
                self.model.count_made(site, n);
            }
        }
    }

    /// The site of `go` statement `gopc` alone, for its goroutines when none
    /// of them was announced (their announcements were lost).
    fn statement_site(&mut self, tgid: u32, gopc: u64) -> SiteId {
        SiteId {
            tgid,
            kind: Kind::Goroutine,
            stack_id: self.stacks.intern(vec![Pc::Return(gopc)]),
        }
    }

    /// The creation chain of a goroutine made at `pcs` by goroutine
    /// `parent_goid` of `tgid` (0: by the runtime, on a system stack).
    fn chain(&mut self, tgid: u32, parent_goid: u64, pcs: Vec<Pc>) -> StackId {
        let parent = self
            .by_goid
            .get(&tgid)
            .filter(|_| parent_goid != 0)
            .and_then(|ids| ids.get(&parent_goid))
            .copied();
        match parent {
            Some(parent) => self.created_by(tgid, parent, pcs),
            None => self.stacks.intern(pcs),
        }
    }

    /// The stack id of Go heap allocated before attach at `stack`.
    pub fn allocated_before_attach(&mut self, stack: Vec<u64>) -> StackId {
        let pcs = stack.into_iter().map(Pc::Return);
        let note = Pc::Note(Note::AllocatedBeforeAttach);
        self.stacks.intern(pcs.chain([note]).collect())
    }

    /// A goroutine started. Its site is the function holding the `go`
    /// statement (`g.gopc`) and that function's callers; its detail, the
    /// function it runs. The stack was walked where newproc queues it, on
    /// the system stack: the runtime's frames up to the `go` statement go.
    fn start_goroutine(
        &mut self,
        e: &GoroutineEvent,
        kernel: &dyn Kernel,
        process: &mut dyn Process,
    ) {
        let walked = self.stacks.get(e.stack_id, kernel).pcs;
        let go_statement = Pc::Return(e.caller);
        // Where the walk did not reach it, the `go` statement alone.
        let callers = match walked.iter().position(|&pc| pc == go_statement) {
            Some(at) => &walked[at + 1..],
            None => &[],
        };
        let pcs: Vec<Pc> = [go_statement]
            .into_iter()
            .chain(callers.iter().copied())
            .collect();
        let site = SiteId {
            tgid: e.tgid,
            kind: Kind::Goroutine,
            stack_id: self.stacks.intern(pcs.clone()),
        };
        // One row per site: those of its `go` statement alive at attach join it.
        if let Some(&Pc::Return(go_statement)) = pcs.first()
            && let Some(before) = self.go_before.remove(&(e.tgid, go_statement))
        {
            self.model.move_goroutines(e.tgid, before, site);
        }
        // Found in the runtime's list before its announcement was read:
        // counted already, it only moves to its own site.
        let found = self.goids.get(&e.tgid).and_then(|t| t.get(&e.g)) == Some(&e.goid);
        self.go_found.remove(&(e.tgid, e.g));
        let statement = self.go_statements.entry((e.tgid, e.caller)).or_default();
        if statement.recent.len() == RECENT_SITES {
            statement.recent.pop_front();
        }
        statement.recent.push_back(site);
        if !found {
            statement.seen += 1;
        }
        let chain = self.chain(e.tgid, e.parent_goid, pcs);
        self.go_ancestry.insert((e.tgid, e.g), chain);
        self.known_goroutine(e.tgid, e.g, e.goid);
        let handle = Handle {
            site,
            kind: HandleKind::Goroutine,
            detail: self.start_function(e.tgid, e.start_pc, process),
            ts: e.ts_ns,
            before_attach: false,
        };
        self.model.start_goroutine(e.tgid, e.g, handle, !found);
    }

    /// The id of `pcs` followed by the creation chain of goroutine `g`, if
    /// it is one leaktrace saw start (and the whole stays short enough).
    fn created_by(&mut self, tgid: u32, g: u64, mut pcs: Vec<Pc>) -> StackId {
        if let Some(&chain) = self.go_ancestry.get(&(tgid, g)) {
            let chain = self.stacks.made(chain);
            if pcs.len() + chain.len() < MAX_CHAIN {
                pcs.push(Pc::Note(Note::CreatedBy));
                pcs.extend_from_slice(chain);
            }
        }
        self.stacks.intern(pcs)
    }

    /// The name of the function at `entry` (a function's first instruction).
    fn start_function(&mut self, tgid: u32, entry: u64, process: &mut dyn Process) -> String {
        self.start_functions
            .entry((tgid, entry))
            .or_insert_with(|| {
                process
                    .function_at(tgid, entry)
                    .unwrap_or_else(|| format!("{entry:#x}"))
            })
            .clone()
    }

    /// Symbolizes sites seen for the first time. The Go runtime's own mmap
    /// sites are dropped; a Go heap site starts where user code allocated.
    pub fn symbolize(&mut self, kernel: &dyn Kernel, process: &mut dyn Process) {
        let pending: Vec<SiteId> = self
            .model
            .sites
            .values()
            .filter(|s| s.frames.is_empty() && s.id.stack_id != BEFORE_ATTACH && !s.ended)
            .map(|s| s.id)
            .collect();
        for id in pending {
            if !process.knows(id.tgid) {
                continue; // its memory map is not read yet
            }
            let stack = self.stacks.get(id.stack_id, kernel);
            let mut frames: Vec<Arc<Frame>> = Vec::new();
            for pc in &stack.pcs {
                match *pc {
                    Pc::Note(note) => frames.push(Frame::note(note.text())),
                    Pc::Return(addr) => frames.extend(process.frames(id.tgid, addr)),
                }
            }
            if let Some(why) = stack.truncation() {
                frames.push(Frame::note(why));
            }
            let runtime = |f: &Arc<Frame>| {
                f.function
                    .as_ref()
                    .is_some_and(|n| n.starts_with("runtime."))
            };
            if self.go.contains(&id.tgid)
                && id.kind == Kind::Mmap
                && frames.first().is_some_and(runtime)
            {
                self.go_runtime_mmaps.insert(id);
                self.model.forget_mmap_site(id);
                continue;
            }
            if id.kind == Kind::GoHeap {
                // Like Go's own profile: the site is where user code allocated,
                // not the runtime's allocator (mallocgc, growslice…) beneath it.
                // The runtime's own allocations keep their whole stack.
                let inner = frames.iter().take_while(|f| runtime(f)).count();
                if inner < frames.len() {
                    frames.drain(..inner);
                }
            }
            if let Some(site) = self.model.sites.get_mut(&id) {
                site.frames = frames.into();
            }
        }
    }

    /// `pid` has exited: its tables go. Its sites stay as the report's record
    /// of what it held at exit when `keep` says so, frozen; else only those
    /// whose blocks a scan found lost, or whose heap no scan looked at, stay.
    /// Returns whether any of its sites stayed.
    /// Call [`Ingest::compact`] after a batch of them.
    pub fn end(&mut self, pid: u32, keep: bool) -> bool {
        self.flush();
        self.model.refresh_handles(pid);
        self.stale.remove(&pid);
        self.go.remove(&pid);
        self.go_ancestry.retain(|&(tgid, _), _| tgid != pid);
        self.start_functions.retain(|&(tgid, _), _| tgid != pid);
        self.go_before.retain(|&(tgid, _), _| tgid != pid);
        self.go_statements.retain(|&(tgid, _), _| tgid != pid);
        self.go_found.retain(|&(tgid, _)| tgid != pid);
        self.goids.remove(&pid);
        self.by_goid.remove(&pid);
        self.go_runtime_mmaps.retain(|id| id.tgid != pid);
        self.model.end_process(pid, keep)
    }

    /// Gives back the room ended processes left in the tables.
    pub fn compact(&mut self) {
        self.model.compact();
        self.go_ancestry.shrink_to(self.go_ancestry.len() * 2);
        self.start_functions
            .shrink_to(self.start_functions.len() * 2);
        self.stale.shrink_to(self.stale.len() * 2);
        self.goids.shrink_to(self.goids.len() * 2);
        self.by_goid.shrink_to(self.by_goid.len() * 2);
        self.go_statements.shrink_to(self.go_statements.len() * 2);
        self.go_found.shrink_to(self.go_found.len() * 2);
    }
}

#[cfg(test)]
mod tests;
