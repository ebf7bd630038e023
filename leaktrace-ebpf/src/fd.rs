//! File descriptors: every successful call that creates one (open, socket,
//! accept, pipe, dup, eventfd, epoll, timerfd, …) and every way one ends (close,
//! close_range; exec's close-on-exec is applied by userspace on fork.rs's exec
//! event). Each goes to userspace, which keeps the table per process: dup2 onto
//! an open descriptor and close-on-exec need its knowledge.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
};
use leaktrace_common::{Counter, EventKind, FD_PATH_LEN, FdClose, FdOpen, SyscallArgs};

use crate::{
    maps::{EVENTS, count, wakeup},
    unwind,
};

// x86-64 syscall numbers.
const OPEN: u64 = 2;
const CLOSE: u64 = 3;
const PIPE: u64 = 22;
const DUP: u64 = 32;
const DUP2: u64 = 33;
const SOCKET: u64 = 41;
const ACCEPT: u64 = 43;
const SOCKETPAIR: u64 = 53;
const EXECVE: u64 = 59;
const FCNTL: u64 = 72;
const CREAT: u64 = 85;
const EPOLL_CREATE: u64 = 213;
const INOTIFY_INIT: u64 = 253;
const OPENAT: u64 = 257;
const SIGNALFD: u64 = 282;
const TIMERFD_CREATE: u64 = 283;
const EVENTFD: u64 = 284;
const ACCEPT4: u64 = 288;
const SIGNALFD4: u64 = 289;
const EVENTFD2: u64 = 290;
const EPOLL_CREATE1: u64 = 291;
const DUP3: u64 = 292;
const PIPE2: u64 = 293;
const INOTIFY_INIT1: u64 = 294;
const PERF_EVENT_OPEN: u64 = 298;
const FANOTIFY_INIT: u64 = 300;
const OPEN_BY_HANDLE_AT: u64 = 304;
const MEMFD_CREATE: u64 = 319;
const EXECVEAT: u64 = 322;
const USERFAULTFD: u64 = 323;
const IO_URING_SETUP: u64 = 425;
const PIDFD_OPEN: u64 = 434;
const CLOSE_RANGE: u64 = 436;
const OPENAT2: u64 = 437;
const PIDFD_GETFD: u64 = 438;

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

#[inline(always)]
pub fn wants(nr: u64) -> bool {
    matches!(
        nr,
        OPEN | CLOSE
            | PIPE
            | DUP
            | DUP2
            | SOCKET
            | ACCEPT
            | SOCKETPAIR
            | EXECVE
            | FCNTL
            | CREAT
            | EPOLL_CREATE
            | INOTIFY_INIT
            | OPENAT
            | SIGNALFD
            | TIMERFD_CREATE
            | EVENTFD
            | ACCEPT4
            | SIGNALFD4
            | EVENTFD2
            | EPOLL_CREATE1
            | DUP3
            | PIPE2
            | INOTIFY_INIT1
            | PERF_EVENT_OPEN
            | FANOTIFY_INIT
            | OPEN_BY_HANDLE_AT
            | MEMFD_CREATE
            | EXECVEAT
            | USERFAULTFD
            | IO_URING_SETUP
            | PIDFD_OPEN
            | CLOSE_RANGE
            | OPENAT2
            | PIDFD_GETFD
    )
}

/// execve or execveat: the process gets a new image.
#[inline(always)]
pub fn is_exec(nr: u64) -> bool {
    nr == EXECVE || nr == EXECVEAT
}

/// Whether to follow this call to its exit: calls that change no descriptor stay out.
#[inline(always)]
pub fn keep(call: &SyscallArgs) -> bool {
    let [a0, a1, a2, ..] = call.args;
    match call.nr {
        FCNTL => a1 == F_DUPFD || a1 == F_DUPFD_CLOEXEC,
        // signalfd on an existing descriptor only updates its mask.
        SIGNALFD | SIGNALFD4 => a0 as i32 == -1,
        CLOSE_RANGE => a2 & CLOSE_RANGE_CLOEXEC == 0,
        _ => true,
    }
}

#[inline(always)]
pub fn exit(tgid: u32, call: &SyscallArgs, ret: u64, regs: &pt_regs) {
    let [a0, a1, ..] = call.args;
    match call.nr {
        CLOSE => closed(tgid, a0 as u32, a0 as u32),
        CLOSE_RANGE => closed(tgid, a0 as u32, a1 as u32),
        // Both descriptors are written to the caller's int[2].
        PIPE | PIPE2 => opened(tgid, call, a0, regs),
        SOCKETPAIR => opened(tgid, call, call.args[3], regs),
        _ => send_open(tgid, call, ret as i32, -1, regs),
    }
}

#[inline(always)]
fn closed(tgid: u32, first: u32, last: u32) {
    let Some(mut entry) = EVENTS.reserve::<FdClose>(0) else {
        count(Counter::EventsLost);
        return;
    };
    entry.write(FdClose {
        kind: EventKind::FdClose as u32,
        tgid,
        // SAFETY: reads no memory of ours.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        first,
        last,
    });
    entry.submit(wakeup(false));
}

/// A pair written to the user array at `pair`.
#[inline(always)]
fn opened(tgid: u32, call: &SyscallArgs, pair: u64, regs: &pt_regs) {
    // SAFETY: reads the target's memory; a fault returns Err.
    let Ok(fds) = (unsafe { bpf_probe_read_user(pair as *const [i32; 2]) }) else {
        return;
    };
    send_open(tgid, call, fds[0], fds[1], regs);
}

#[inline(always)]
fn send_open(tgid: u32, call: &SyscallArgs, fd: i32, fd2: i32, regs: &pt_regs) {
    let Some(mut entry) = EVENTS.reserve::<FdOpen>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let event = entry.as_mut_ptr();
    let [a0, a1, a2, ..] = call.args;
    let path_arg = match call.nr {
        OPEN | CREAT | MEMFD_CREATE => a0,
        OPENAT | OPENAT2 => a1,
        _ => 0,
    };
    // SAFETY: `event` is our reserved ring-buffer slot.
    unsafe {
        (*event).kind = EventKind::FdOpen as u32;
        (*event).tgid = tgid;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).nr = call.nr as u32;
        (*event).fd = fd;
        (*event).fd2 = fd2;
        (*event)._pad = 0;
        (*event).args = [a0, a1, a2];
        (*event).g = regs.r14;
        (*event).stack_id = unwind::stack_id(regs.rip, regs.rsp, regs.rbp);
        let path = &mut (*event).path;
        path[0] = 0;
        if path_arg != 0
            && bpf_probe_read_user_str_bytes(path_arg as *const u8, &mut path[..FD_PATH_LEN])
                .is_err()
        {
            path[0] = 0;
        }
    }
    entry.submit(wakeup(false));
}
