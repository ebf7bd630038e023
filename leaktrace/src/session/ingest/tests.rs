//! The core on made-up events: a fake kernel (stacks, outstanding blocks) and
//! a fake process (descriptors, working directory, symbols).
use std::collections::{HashMap, HashSet};

use leaktrace_common::{
    AllocInfo, EventKind, FD_PATH_LEN, FdClose, FdOpen, GoroutineEvent, MapEvent, SiteKey,
    SiteKind, unwind::StackEnd,
};

use super::*;
use crate::{handles::nr, probes::ProbeError};

#[derive(Default)]
struct FakeKernel {
    stacks: HashMap<StackId, (Vec<u64>, u32)>,
    allocs: Vec<(u32, AllocInfo)>,
}

impl Kernel for FakeKernel {
    fn stack(&self, id: StackId) -> Option<(Vec<u64>, u32)> {
        self.stacks.get(&id).cloned()
    }

    fn take_allocs(&mut self, pid: u32, until: Ns) -> Result<Vec<AllocInfo>, ProbeError> {
        let (taken, kept) = std::mem::take(&mut self.allocs)
            .into_iter()
            .partition(|(p, a)| *p == pid && a.ts_ns < until);
        self.allocs = kept;
        Ok(taken.into_iter().map(|(_, a)| a).collect())
    }
}

#[derive(Default)]
struct FakeProcess {
    fds: HashMap<u32, Vec<(i32, String)>>,
    cwd: Option<PathBuf>,
    /// Function names by address; a process is known once it has a map.
    functions: HashMap<u64, String>,
    mapped: HashSet<u32>,
    threads: HashMap<u32, Vec<u32>>,
}

impl Process for FakeProcess {
    fn fd_link(&self, pid: u32, fd: i32) -> Option<String> {
        let fds = self.fds.get(&pid)?;
        fds.iter().find(|(f, _)| *f == fd).map(|(_, l)| l.clone())
    }

    fn cwd(&self, _: u32) -> Option<PathBuf> {
        self.cwd.clone()
    }

    fn open_fds(&self, pid: u32) -> Vec<(i32, String)> {
        self.fds.get(&pid).cloned().unwrap_or_default()
    }

    fn threads(&self, pid: u32) -> Vec<u32> {
        self.threads.get(&pid).cloned().unwrap_or_default()
    }

    fn function_at(&mut self, _: u32, entry: u64) -> Option<String> {
        self.functions.get(&entry).cloned()
    }

    fn knows(&self, pid: u32) -> bool {
        self.mapped.contains(&pid)
    }

    fn frames(&mut self, _: u32, addr: u64) -> Vec<Arc<Frame>> {
        vec![Arc::new(Frame {
            function: self.functions.get(&addr).cloned(),
            file: None,
            line: None,
            module: None,
            address: addr,
            inlined: false,
        })]
    }
}

const PID: u32 = 100;

struct Core {
    ingest: Ingest,
    kernel: FakeKernel,
    process: FakeProcess,
}

impl Core {
    fn new() -> Self {
        Self {
            ingest: Ingest::new(0),
            kernel: FakeKernel::default(),
            process: FakeProcess::default(),
        }
    }

    fn apply(&mut self, event: Event) {
        assert!(self.ingest.apply(&event, &self.kernel, &mut self.process));
        self.ingest.flush();
        self.ingest.recount();
    }

    /// Syscall `nr` made descriptor `fd` (and `fd2`) with `args` and `path`, at stack `stack`.
    fn open(&mut self, nr: u32, fd: i32, fd2: i32, args: [u64; 3], path: &str, stack: StackId) {
        self.open_on(nr, fd, fd2, args, path, stack, 0);
    }

    #[allow(clippy::too_many_arguments)]
    fn open_on(
        &mut self,
        nr: u32,
        fd: i32,
        fd2: i32,
        args: [u64; 3],
        path: &str,
        stack: StackId,
        g: u64,
    ) {
        let mut bytes = [0u8; FD_PATH_LEN];
        bytes[..path.len()].copy_from_slice(path.as_bytes());
        self.apply(Event::FdOpen(Box::new(FdOpen {
            kind: EventKind::FdOpen as u32,
            tgid: PID,
            ts_ns: 1,
            nr,
            fd,
            fd2,
            _pad: 0,
            stack_id: stack,
            args,
            g,
            path: bytes,
        })));
    }

    fn close(&mut self, first: u32, last: u32) {
        self.apply(Event::FdClose(FdClose {
            kind: EventKind::FdClose as u32,
            tgid: PID,
            ts_ns: 2,
            first,
            last,
        }));
    }

    fn detail(&self, tgid: u32, fd: i32) -> Option<(HandleKind, String)> {
        let h = self.ingest.model.fd(tgid, fd)?;
        Some((h.kind, h.detail.clone()))
    }

    fn live(&self, tgid: u32, kind: Kind, stack_id: StackId) -> u64 {
        let id = SiteId {
            tgid,
            kind,
            stack_id,
        };
        self.ingest.model.sites.get(&id).map_or(0, |s| s.live_count)
    }
}

#[test]
fn dup2_over_an_open_descriptor_replaces_it_with_a_copy_of_its_source() {
    let mut core = Core::new();
    core.open(nr::OPEN, 3, -1, [0; 3], "/var/log/a.log", 1);
    core.open(nr::SOCKET, 4, -1, [2, 1, 0], "", 2);
    assert_eq!(core.live(PID, Kind::Fd, 1), 1);
    // dup2(3, 4): descriptor 4 was the socket, now the file, under the dup's site.
    core.open(nr::DUP2, 4, -1, [3, 4, 0], "", 3);
    assert_eq!(core.detail(PID, 4).unwrap().1, "/var/log/a.log");
    assert_eq!(
        core.live(PID, Kind::Socket, 2),
        0,
        "the socket was closed by dup2"
    );
    assert_eq!(core.live(PID, Kind::Fd, 3), 1);
    // dup3 and fcntl(F_DUPFD) copy too.
    core.open(nr::DUP3, 9, -1, [4, 9, 0], "", 4);
    core.open(nr::FCNTL, 10, -1, [9, 0, 0], "", 5);
    assert_eq!(core.detail(PID, 10).unwrap().1, "/var/log/a.log");
    // A dup of a descriptor leaktrace never saw: /proc tells.
    core.process.fds.insert(PID, vec![(11, "pipe:[77]".into())]);
    core.open(nr::DUP, 11, -1, [0, 0, 0], "", 6);
    assert_eq!(core.detail(PID, 11).unwrap().0, HandleKind::Pipe);
}

#[test]
fn close_and_close_range_close_what_they_name() {
    let mut core = Core::new();
    for fd in 3..10 {
        core.open(nr::OPEN, fd, -1, [0; 3], "/f", 1);
    }
    core.open(nr::PIPE2, 20, 21, [0; 3], "", 2);
    assert_eq!(core.live(PID, Kind::Fd, 1), 7);
    assert_eq!(core.live(PID, Kind::Fd, 2), 2, "both ends of the pipe");
    core.close(3, 3);
    core.close(5, 8);
    assert_eq!(core.live(PID, Kind::Fd, 1), 2);
    assert!(core.detail(PID, 4).is_some() && core.detail(PID, 9).is_some());
    // close_range(10, ~0U): past the end of the table.
    core.close(10, u32::MAX);
    assert_eq!(core.live(PID, Kind::Fd, 2), 0);
    assert_eq!(
        core.ingest.model.sites[&site(PID, Kind::Fd, 1)].total_count,
        7
    );
}

fn site(tgid: u32, kind: Kind, stack_id: StackId) -> SiteId {
    SiteId {
        tgid,
        kind,
        stack_id,
    }
}

#[test]
fn relative_paths_resolve_against_the_directory_they_name() {
    let mut core = Core::new();
    core.process.cwd = Some("/srv/app".into());
    core.open(nr::OPEN, 3, -1, [0; 3], "data/x.db", 1);
    assert_eq!(core.detail(PID, 3).unwrap().1, "/srv/app/data/x.db");
    core.open(nr::OPENAT, 4, -1, [0; 3], "/etc", 1);
    core.open(nr::OPENAT, 5, -1, [4, 0, 0], "hosts", 1);
    assert_eq!(core.detail(PID, 5).unwrap().1, "/etc/hosts");
    let at_cwd = (-100i64) as u64;
    core.open(nr::OPENAT, 6, -1, [at_cwd, 0, 0], "y", 1);
    assert_eq!(core.detail(PID, 6).unwrap().1, "/srv/app/y");
}

fn block(pid: u32, size: u64, ts_ns: u64, stack_id: StackId) -> (u32, AllocInfo) {
    let site = SiteKey {
        tgid: pid,
        kind: SiteKind::Heap as u32,
        stack_id,
        extra: 0,
        _pad: 0,
    };
    (pid, AllocInfo { size, ts_ns, site })
}

#[test]
fn exec_keeps_the_descriptors_proc_still_lists_and_drops_the_old_heap() {
    let mut core = Core::new();
    core.open(nr::OPEN, 3, -1, [0; 3], "/kept", 1);
    core.open(nr::OPEN, 4, -1, [0; 3], "/cloexec", 2);
    core.apply(mmap(PID, EventKind::Mmap, 0x10000, 8192, 7));
    core.kernel.allocs = vec![
        block(PID, 100, 5, 9),
        block(PID, 50, 50, 9),
        block(PID + 1, 10, 5, 9),
    ];
    core.process.fds.insert(PID, vec![(3, "/kept".into())]);
    core.ingest.exec(PID, 10, &mut core.kernel, &core.process);
    core.ingest.recount();
    assert!(core.detail(PID, 3).is_some() && core.detail(PID, 4).is_none());
    assert_eq!(core.live(PID, Kind::Mmap, 7), 0, "the old image's mappings");
    // Only the old image's blocks of that process left the kernel.
    assert_eq!(core.kernel.allocs.len(), 2);
    let gone = SiteId::in_kernel(&block(PID, 0, 0, 9).1.site);
    core.ingest.model.set_kernel_sites(
        &[(block(PID, 0, 0, 9).1.site, stats(2, 150))],
        &HashMap::new(),
        0,
    );
    assert_eq!(core.ingest.model.sites[&gone].live_bytes, 50);
}

fn stats(count: i64, bytes: i64) -> leaktrace_common::SiteStats {
    leaktrace_common::SiteStats {
        live_bytes: bytes,
        live_count: count,
        total_bytes: bytes as u64,
        total_count: count as u64,
    }
}

fn mmap(tgid: u32, kind: EventKind, addr: u64, len: u64, stack_id: StackId) -> Event {
    Event::Map(MapEvent {
        kind: kind as u32,
        tgid,
        ts_ns: 1,
        addr,
        len,
        old_addr: 0,
        old_len: 0,
        stack_id,
    })
}

#[test]
fn mappings_split_move_and_go() {
    let mut core = Core::new();
    core.apply(mmap(PID, EventKind::Mmap, 0x10000, 4 * 4096, 7));
    // Unmapping the middle leaves two pieces of the same site.
    core.apply(mmap(PID, EventKind::Munmap, 0x11000, 4096, 0));
    let s = &core.ingest.model.sites[&site(PID, Kind::Mmap, 7)];
    assert_eq!((s.live_count, s.live_bytes), (2, 3 * 4096));
    let mut moved = MapEvent {
        kind: EventKind::Mremap as u32,
        tgid: PID,
        ts_ns: 2,
        addr: 0x90000,
        len: 8 * 4096,
        old_addr: 0x12000,
        old_len: 2 * 4096,
        stack_id: 0,
    };
    core.apply(Event::Map(moved));
    let s = &core.ingest.model.sites[&site(PID, Kind::Mmap, 7)];
    assert_eq!((s.live_count, s.live_bytes), (2, 9 * 4096));
    // A mapping leaktrace never saw made is not counted when it moves.
    moved.old_addr = 0x500000;
    core.apply(Event::Map(moved));
    assert_eq!(core.live(PID, Kind::Mmap, 7), 2);
}

#[test]
fn a_forked_child_holds_copies_under_sites_of_its_own() {
    let mut core = Core::new();
    core.open(nr::OPEN, 3, -1, [0; 3], "/inherited", 1);
    core.apply(mmap(PID, EventKind::Mmap, 0x10000, 4096, 7));
    let child = PID + 1;
    core.ingest.fork(PID, child);
    assert_eq!(core.detail(child, 3).unwrap().1, "/inherited");
    assert_eq!(core.live(child, Kind::Fd, 1), 1);
    assert_eq!(core.live(child, Kind::Mmap, 7), 1);
    // Closing in the child leaves the parent's open.
    core.apply(Event::FdClose(FdClose {
        kind: EventKind::FdClose as u32,
        tgid: child,
        ts_ns: 3,
        first: 3,
        last: 3,
    }));
    assert_eq!(core.live(child, Kind::Fd, 1), 0);
    assert_eq!(core.live(PID, Kind::Fd, 1), 1);
}

/// Goroutine `goid` on `g`, made by goroutine `parent_goid` at `go_statement`.
fn goroutine(g: u64, goid: u64, parent_goid: u64, stack_id: StackId, go_statement: u64) -> Event {
    Event::GoroutineNew(GoroutineEvent {
        kind: EventKind::GoroutineNew as u32,
        tgid: PID,
        ts_ns: 1,
        g,
        goid,
        stack_id,
        caller: go_statement,
        start_pc: 0x5000,
        parent_goid,
    })
}

#[test]
fn a_descriptor_opened_on_a_goroutine_continues_into_its_creators() {
    let mut core = Core::new();
    // Stacks where newproc queues a goroutine: the runtime's frames on the
    // system stack (0x1, 0x2), the function with the `go` statement, its
    // callers.
    core.kernel
        .stacks
        .insert(1, (vec![0x1, 0x2, 0xa0, 0xa1], 0));
    core.kernel
        .stacks
        .insert(2, (vec![0x1, 0x2, 0xb0, 0xb1], 0));
    core.kernel.stacks.insert(3, (vec![0xc0, 0xc1], 0));
    core.process.functions.insert(0x5000, "main.worker".into());
    // g1 (id 7) made by main's code, g2 (id 8) made by g1.
    core.apply(goroutine(0x1000, 7, 1, 1, 0xa0));
    core.apply(goroutine(0x2000, 8, 7, 2, 0xb0));
    core.open_on(nr::SOCKET, 5, -1, [2, 1, 0], "", 3, 0x2000);
    let socket = core.ingest.model.fd(PID, 5).unwrap().site;
    let pcs = core.ingest.stacks.made(socket.stack_id).to_vec();
    let created_by = Pc::Note(Note::CreatedBy);
    let r = Pc::Return;
    assert_eq!(
        pcs,
        [
            r(0xc0),
            r(0xc1),
            created_by,
            r(0xb0),
            r(0xb1),
            created_by,
            r(0xa0),
            r(0xa1)
        ]
    );
    // Goroutine sites: the `go` statement and its callers; detail: what it runs.
    let g2 = core.ingest.model.sites.values().find(|s| {
        s.id.kind == Kind::Goroutine && core.ingest.stacks.made(s.id.stack_id)[0] == r(0xb0)
    });
    assert_eq!(g2.unwrap().live_count, 1);
    assert_eq!(g2.unwrap().details[0].1, "main.worker");
    assert_eq!(core.ingest.goroutines(PID).len(), 2);
    // An ended goroutine's chain goes with it: its descriptors open later
    // (none can be) would no longer continue.
    core.ingest.end_goroutine(PID, 0x2000);
    core.ingest.recount();
    assert_eq!(g2_live(&core, 0xb0), 0);
    assert!(!core.ingest.go_ancestry.contains_key(&(PID, 0x2000)));
    assert_eq!(core.ingest.goroutines(PID), [(0x1000, 7)]);
    // A walk that did not reach the `go` statement: the statement alone.
    core.kernel.stacks.insert(4, (vec![0x1, 0x2], 0));
    core.apply(goroutine(0x3000, 9, 7, 4, 0xd0));
    let alone = core.ingest.go_ancestry[&(PID, 0x3000)];
    assert_eq!(
        core.ingest.stacks.made(alone),
        [r(0xd0), created_by, r(0xa0), r(0xa1)]
    );
    // The runtime reuses g1's `g` for a new goroutine: g1 ended, its id gone.
    core.apply(goroutine(0x1000, 10, 1, 1, 0xa0));
    let mut known = core.ingest.goroutines(PID);
    known.sort();
    assert_eq!(known, [(0x1000, 10), (0x3000, 9)]);
}

fn g2_live(core: &Core, go_statement: u64) -> u64 {
    core.ingest
        .model
        .sites
        .values()
        .filter(|s| {
            s.id.kind == Kind::Goroutine
                && core.ingest.stacks.made(s.id.stack_id).first() == Some(&Pc::Return(go_statement))
        })
        .map(|s| s.live_count)
        .sum()
}

#[test]
fn symbols_come_once_the_process_map_is_known_with_notes_and_truncation() {
    let mut core = Core::new();
    core.kernel
        .stacks
        .insert(3, (vec![0xc0, 0xc1], StackEnd::Depth as u32));
    core.process.functions.insert(0xc0, "open_log".into());
    core.open(nr::OPEN, 3, -1, [0; 3], "/f", 3);
    core.ingest.symbolize(&core.kernel, &mut core.process);
    assert!(
        core.ingest.model.sites[&site(PID, Kind::Fd, 3)]
            .frames
            .is_empty()
    );
    core.process.mapped.insert(PID);
    core.ingest.symbolize(&core.kernel, &mut core.process);
    let frames = &core.ingest.model.sites[&site(PID, Kind::Fd, 3)].frames;
    let names: Vec<String> = frames.iter().map(|f| f.short()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(frames[0].function.as_deref(), Some("open_log"));
    assert!(names[2].contains("--max-depth"), "{names:?}");
}

#[test]
fn the_go_runtime_own_mappings_are_left_to_the_go_heap() {
    let mut core = Core::new();
    core.ingest.set_go(PID);
    core.kernel.stacks.insert(7, (vec![0xd0], 0));
    core.kernel.stacks.insert(8, (vec![0xe0], 0));
    core.process
        .functions
        .insert(0xd0, "runtime.sysAlloc".into());
    core.process.functions.insert(0xe0, "main.mapFile".into());
    core.process.mapped.insert(PID);
    core.apply(mmap(PID, EventKind::Mmap, 0x10000, 4096, 7));
    core.apply(mmap(PID, EventKind::Mmap, 0x20000, 4096, 8));
    core.ingest.symbolize(&core.kernel, &mut core.process);
    assert!(
        !core
            .ingest
            .model
            .sites
            .contains_key(&site(PID, Kind::Mmap, 7))
    );
    assert_eq!(core.live(PID, Kind::Mmap, 8), 1);
    // Later mappings of that site are not even kept.
    core.apply(mmap(PID, EventKind::Mmap, 0x30000, 4096, 7));
    assert!(
        !core
            .ingest
            .model
            .sites
            .contains_key(&site(PID, Kind::Mmap, 7))
    );
}

#[test]
fn an_exited_process_leaves_only_what_it_leaked() {
    let mut core = Core::new();
    core.kernel.stacks.insert(1, (vec![0xa0], 0));
    core.apply(goroutine(0x1000, 7, 1, 1, 0xa0));
    core.open(nr::OPEN, 3, -1, [0; 3], "/f", 2);
    core.apply(mmap(PID, EventKind::Mmap, 0x10000, 4096, 7));
    let heap = block(PID, 64, 1, 9).1.site;
    let reachable = block(PID, 64, 1, 10).1.site;
    core.ingest.model.set_kernel_sites(
        &[(heap, stats(1, 64)), (reachable, stats(1, 64))],
        &HashMap::new(),
        0,
    );
    let mut all_reachable = crate::reach::Reach::default();
    all_reachable.add(crate::reach::Class::Reachable, 64);
    core.ingest.model.set_reach(
        PID,
        HashMap::from([(SiteId::in_kernel(&reachable), all_reachable)]),
    );
    assert!(core.ingest.end(PID, false));
    let left: Vec<Kind> = core
        .ingest
        .model
        .sites
        .values()
        .map(|s| s.id.kind)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&Kind::Heap) && left.contains(&Kind::Goroutine));
    assert!(core.ingest.model.sites.values().all(|s| s.ended));
    assert!(core.ingest.go_ancestry.is_empty() && core.ingest.start_functions.is_empty());
    assert!(core.detail(PID, 3).is_none());
    // The kernel's totals no longer move an ended site.
    core.ingest
        .model
        .set_kernel_sites(&[(heap, stats(0, 0))], &HashMap::new(), 0);
    assert_eq!(
        core.ingest.model.sites[&SiteId::in_kernel(&heap)].live_bytes,
        64
    );

    // A process that leaked nothing leaves nothing; one kept whole keeps all.
    let mut core = Core::new();
    core.open(nr::OPEN, 3, -1, [0; 3], "/f", 2);
    assert!(!core.ingest.end(PID, false));
    assert!(core.ingest.model.sites.is_empty());
    let mut core = Core::new();
    core.open(nr::OPEN, 3, -1, [0; 3], "/f", 2);
    assert!(core.ingest.end(PID, true));
    assert_eq!(core.live(PID, Kind::Fd, 2), 1);
}

fn thread(kind: EventKind, tid: u32, stack_id: StackId) -> Event {
    let e = leaktrace_common::ThreadEvent {
        kind: kind as u32,
        tgid: PID,
        ts_ns: 1,
        tid,
        _pad: 0,
        stack_id,
    };
    if kind == EventKind::ThreadNew {
        Event::ThreadNew(e)
    } else {
        Event::ThreadExit(e)
    }
}

#[test]
fn threads_are_counted_at_the_site_that_made_them_until_they_end_or_exec() {
    let mut core = Core::new();
    core.process
        .threads
        .insert(PID, vec![PID, PID + 1, PID + 2]);
    core.ingest.threads_before_attach(PID, 0, &core.process);
    assert_eq!(
        core.live(PID, Kind::Thread, BEFORE_ATTACH),
        2,
        "all but the first"
    );
    for tid in 200..205 {
        core.apply(thread(EventKind::ThreadNew, tid, 4));
    }
    core.apply(thread(EventKind::ThreadExit, 201, 0));
    core.apply(thread(EventKind::ThreadExit, PID + 1, 0));
    // A thread whose end comes before its start (it ran and exited before
    // its maker's clone returned) is not counted alive.
    core.apply(thread(EventKind::ThreadExit, 999, 0));
    core.apply(thread(EventKind::ThreadNew, 999, 4));
    assert_eq!(core.live(PID, Kind::Thread, 4), 4);
    assert_eq!(core.live(PID, Kind::Thread, BEFORE_ATTACH), 1);
    assert_eq!(
        core.ingest.model.sites[&site(PID, Kind::Thread, 4)].total_count,
        6,
        "999 was made too"
    );
    // An exec leaves one thread: the process's first.
    core.ingest.exec(PID, 10, &mut core.kernel, &core.process);
    core.ingest.recount();
    assert_eq!(core.live(PID, Kind::Thread, 4), 0);
    // Threads are not inherited by a fork.
    core.apply(thread(EventKind::ThreadNew, 300, 4));
    core.ingest.fork(PID, PID + 50);
    core.ingest.recount();
    assert_eq!(core.live(PID + 50, Kind::Thread, 4), 0);
    // An exited process's threads ended with it.
    assert!(!core.ingest.end(PID, false));
}

/// A goroutine as the runtime's list shows it.
fn live(g: u64, goid: u64, gopc: u64, parent_goid: u64) -> LiveGoroutine {
    LiveGoroutine {
        g,
        goid,
        gopc,
        parent_goid,
        start_pc: 0x5000,
        status: crate::golang::G_WAITING,
        sched_pc: 0,
        sched_bp: 0,
    }
}

#[test]
fn unannounced_goroutines_go_where_their_statements_announced_ones_stay() {
    let mut core = Core::new();
    // One `go` statement (0xa0) reached from two callers (0xa1, 0xa2).
    core.kernel.stacks.insert(1, (vec![0x1, 0xa0, 0xa1], 0));
    core.kernel.stacks.insert(2, (vec![0x1, 0xa0, 0xa2], 0));
    core.apply(goroutine(0x10, 10, 0, 1, 0xa0));
    core.apply(goroutine(0x20, 20, 0, 2, 0xa0));
    // The kernel counted 10 made there; 2 announced.
    let made = [(0xa0, 10)];
    assert!(core.ingest.goroutines_unannounced(PID, &made));
    // Alive now: the two announced, four more, one of them (0x70) made by 0x10's goroutine.
    let alive = [
        live(0x10, 10, 0xa0, 0),
        live(0x20, 20, 0xa0, 0),
        live(0x30, 30, 0xa0, 0),
        live(0x40, 40, 0xa0, 0),
        live(0x50, 50, 0xa0, 0),
        live(0x70, 70, 0xa0, 10),
    ];
    core.ingest
        .goroutines_found(PID, 5, &alive, &made, &mut core.process);
    core.ingest.recount();
    let sites: Vec<(Vec<Pc>, u64, u64)> = core
        .ingest
        .model
        .sites
        .values()
        .filter(|s| s.id.kind == Kind::Goroutine)
        .map(|s| {
            let pcs = core.ingest.stacks.made(s.id.stack_id).to_vec();
            (pcs, s.live_count, s.total_count)
        })
        .collect();
    assert_eq!(sites.len(), 2, "{sites:?}");
    let live_at = |caller: u64| {
        sites
            .iter()
            .find(|s| s.0 == [Pc::Return(0xa0), Pc::Return(caller)])
            .map(|s| (s.1, s.2))
            .unwrap()
    };
    // Each caller's site: its announced one and two found; the 4 never
    // seen (10 made, 6 counted) started and ended between reads.
    let (a1, a2) = (live_at(0xa1), live_at(0xa2));
    assert_eq!(a1.0 + a2.0, 6);
    assert_eq!((a1.0, a2.0), (3, 3));
    assert_eq!(a1.1 + a2.1, 10);
    assert!(!core.ingest.goroutines_unannounced(PID, &made));
    // 0x70's chain goes on into its creator's.
    let chain = core.ingest.go_ancestry[&(PID, 0x70)];
    assert!(
        core.ingest
            .stacks
            .made(chain)
            .contains(&Pc::Note(Note::CreatedBy))
    );
    // Read again, nothing new: nothing counted twice.
    core.ingest
        .goroutines_found(PID, 6, &alive, &made, &mut core.process);
    core.ingest.recount();
    assert_eq!(goroutines_made(&core), 10);
    // 0xa1's announced goroutine ends; 0xa2's stays: those found from now
    // on are where the announced ones stay alive.
    core.ingest.end_goroutine(PID, 0x10);
    let more = [live(0x90, 90, 0xa0, 0), live(0x98, 98, 0xa0, 0)];
    core.ingest
        .goroutines_found(PID, 7, &more, &[(0xa0, 12)], &mut core.process);
    core.ingest.recount();
    assert_eq!(live_count(&core, 0xa2), 5, "3 before and both new");
    // An announcement read after its goroutine was found moves it, uncounted.
    core.kernel.stacks.insert(3, (vec![0x1, 0xa0, 0xa3], 0));
    let late = [live(0x80, 80, 0xa0, 0)];
    core.ingest
        .goroutines_found(PID, 8, &late, &[(0xa0, 13)], &mut core.process);
    core.apply(goroutine(0x80, 80, 0, 3, 0xa0));
    core.ingest.recount();
    assert_eq!(goroutines_made(&core), 13);
}

/// Goroutines counted made, all sites.
fn goroutines_made(core: &Core) -> u64 {
    core.ingest
        .model
        .sites
        .values()
        .filter(|s| s.id.kind == Kind::Goroutine)
        .map(|s| s.total_count)
        .sum()
}

/// Live goroutines at the site of `go` statement 0xa0 called from `caller`.
fn live_count(core: &Core, caller: u64) -> u64 {
    core.ingest
        .model
        .sites
        .values()
        .find(|s| core.ingest.stacks.made(s.id.stack_id) == [Pc::Return(0xa0), Pc::Return(caller)])
        .map_or(0, |s| s.live_count)
}

#[test]
fn goroutines_alive_at_attach_join_the_site_of_their_go_statement() {
    let mut core = Core::new();
    let found = |g, gopc| live(g, g, gopc, 0);
    core.ingest.goroutines_before_attach(
        PID,
        0,
        vec![found(0x10, 0xa0), found(0x20, 0xa0), found(0x30, 0xf0)],
        &mut core.process,
    );
    // Started while traced at the same `go` statement (0xa0), from main.
    core.kernel.stacks.insert(1, (vec![0x1, 0xa0, 0xa1], 0));
    core.apply(goroutine(0x40, 40, 1, 1, 0xa0));
    let sites: Vec<&crate::model::Site> = core
        .ingest
        .model
        .sites
        .values()
        .filter(|s| s.id.kind == Kind::Goroutine)
        .collect();
    assert_eq!(sites.len(), 2, "0xa0's and 0xf0's");
    let joined = sites
        .iter()
        .find(|s| core.ingest.stacks.made(s.id.stack_id)[0] == Pc::Return(0xa0))
        .unwrap();
    assert_eq!((joined.live_count, joined.before_attach), (3, 2));
    assert_eq!(joined.total_count, 1, "only the one started while traced");
    assert_eq!(
        core.ingest.stacks.made(joined.id.stack_id),
        [Pc::Return(0xa0), Pc::Return(0xa1)],
        "the whole stack of the one seen started"
    );
    let id = joined.id;
    // Those ending count down the joined site.
    core.ingest.end_goroutine(PID, 0x10);
    core.ingest.recount();
    let joined = &core.ingest.model.sites[&id];
    assert_eq!((joined.live_count, joined.before_attach), (2, 1));
}
