//! The ring buffer's events, typed: what the probes told, before anything is
//! done with it.
use leaktrace_common::{
    EventHeader, EventKind, ExitEvent, FdClose, FdOpen, GoroutineEvent, MapEvent, ProcEvent,
    ThreadEvent,
};

/// One ring-buffer event, told by the kind tag it starts with.
#[derive(Clone, Debug)]
pub enum Event {
    /// An anonymous mmap, munmap or mremap.
    Map(MapEvent),
    FdOpen(Box<FdOpen>),
    FdClose(FdClose),
    /// A target made a process, now a target too (stopped if `paused`).
    Fork(ProcEvent),
    /// A target exec'd a new image (stopped if `paused`).
    Exec(ProcEvent),
    /// A new image reached its entry point (stopped if `paused`).
    Entry(ProcEvent),
    /// A target is in `_exit` (stopped if `paused`).
    Exit(Box<ExitEvent>),
    GoroutineNew(GoroutineEvent),
    ThreadNew(ThreadEvent),
    ThreadExit(ThreadEvent),
}

impl Event {
    /// The event in `bytes`, or `None` for an unknown kind or too few bytes.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        use EventKind::*;
        Some(match EventHeader::read(bytes)?.kind()? {
            Mmap | Munmap | Mremap => Event::Map(read_as(bytes)?),
            FdOpen => Event::FdOpen(Box::new(read_as(bytes)?)),
            FdClose => Event::FdClose(read_as(bytes)?),
            Fork => Event::Fork(read_as(bytes)?),
            Exec => Event::Exec(read_as(bytes)?),
            Entry => Event::Entry(read_as(bytes)?),
            Exit => Event::Exit(Box::new(read_as(bytes)?)),
            GoroutineNew => Event::GoroutineNew(read_as(bytes)?),
            ThreadNew => Event::ThreadNew(read_as(bytes)?),
            ThreadExit => Event::ThreadExit(read_as(bytes)?),
        })
    }

    /// The process the event is about (for a fork, the parent).
    pub fn pid(&self) -> u32 {
        match self {
            Event::Map(e) => e.tgid,
            Event::FdOpen(e) => e.tgid,
            Event::FdClose(e) => e.tgid,
            Event::Fork(e) | Event::Exec(e) | Event::Entry(e) => e.tgid,
            Event::Exit(e) => e.tgid,
            Event::GoroutineNew(e) => e.tgid,
            Event::ThreadNew(e) | Event::ThreadExit(e) => e.tgid,
        }
    }

    /// The process a stopped process event left waiting, if it did: the
    /// child of a fork, else the process itself.
    pub fn paused_pid(&self) -> Option<u32> {
        match self {
            Event::Fork(e) if e.paused != 0 => Some(e.child),
            Event::Exec(e) | Event::Entry(e) if e.paused != 0 => Some(e.tgid),
            Event::Exit(e) if e.paused != 0 => Some(e.tgid),
            _ => None,
        }
    }
}

/// A `#[repr(C)]` event of plain integers from the ring buffer.
fn read_as<T: Copy>(bytes: &[u8]) -> Option<T> {
    // SAFETY: the eBPF side writes whole T; any bytes are valid integers; the
    // ring does not align them.
    (bytes.len() >= size_of::<T>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: plain integers, read as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast(), size_of::<T>()) }.to_vec()
    }

    fn proc_event(kind: EventKind, paused: u32) -> ProcEvent {
        ProcEvent {
            kind: kind as u32,
            tgid: 10,
            ts_ns: 5,
            child: 11,
            paused,
        }
    }

    #[test]
    fn each_kind_reads_as_its_event() {
        let close = FdClose {
            kind: EventKind::FdClose as u32,
            tgid: 7,
            ts_ns: 1,
            first: 3,
            last: 9,
        };
        match Event::read(&bytes(&close)) {
            Some(Event::FdClose(e)) => assert_eq!((e.tgid, e.first, e.last), (7, 3, 9)),
            other => panic!("{other:?}"),
        }
        for (kind, want) in [
            (EventKind::Fork, "Fork"),
            (EventKind::Exec, "Exec"),
            (EventKind::Entry, "Entry"),
        ] {
            let read = Event::read(&bytes(&proc_event(kind, 0))).unwrap();
            assert!(format!("{read:?}").starts_with(want), "{read:?}");
        }
        let map = MapEvent {
            kind: EventKind::Mremap as u32,
            tgid: 1,
            ts_ns: 0,
            addr: 0x1000,
            len: 4096,
            old_addr: 0,
            old_len: 0,
            stack_id: 3,
        };
        assert!(matches!(Event::read(&bytes(&map)), Some(Event::Map(e)) if e.addr == 0x1000));
    }

    #[test]
    fn unknown_kinds_and_short_events_are_refused() {
        assert!(Event::read(&[]).is_none());
        assert!(Event::read(&[1, 0]).is_none());
        assert!(Event::read(&99u32.to_ne_bytes()).is_none());
        let fork = bytes(&proc_event(EventKind::Fork, 0));
        assert!(Event::read(&fork[..fork.len() - 1]).is_none());
        // Trailing bytes (the ring's padding) are ignored.
        let mut padded = fork.clone();
        padded.extend([0; 8]);
        assert!(Event::read(&padded).is_some());
    }

    #[test]
    fn a_paused_fork_waits_in_its_child_and_others_in_their_process() {
        let fork = Event::Fork(proc_event(EventKind::Fork, 1));
        assert_eq!(fork.paused_pid(), Some(11));
        let exec = Event::Exec(proc_event(EventKind::Exec, 1));
        assert_eq!(exec.paused_pid(), Some(10));
        assert_eq!(
            Event::Exec(proc_event(EventKind::Exec, 0)).paused_pid(),
            None
        );
    }
}
