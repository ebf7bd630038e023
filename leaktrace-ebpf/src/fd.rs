//! File descriptors: every successful call that creates one (open, socket,
//! accept, pipe, dup, eventfd, epoll, timerfd, …) and every way one ends (close,
//! close_range; exec's close-on-exec is applied by userspace on fork.rs's exec
//! event). Each goes to userspace, which keeps the table per process: dup2 onto
//! an open descriptor and close-on-exec need its knowledge.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
};
use leaktrace_common::{
    Counter, EventKind, FD_PATH_LEN, FdClose, FdOpen, SyscallArgs, syscalls as sys,
};

use crate::{
    maps::{EVENTS, count, wakeup},
    unwind,
};

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

#[inline(always)]
pub fn wants(nr: u32) -> bool {
    matches!(
        nr,
        sys::OPEN
            | sys::CLOSE
            | sys::PIPE
            | sys::DUP
            | sys::DUP2
            | sys::SOCKET
            | sys::ACCEPT
            | sys::SOCKETPAIR
            | sys::EXECVE
            | sys::FCNTL
            | sys::CREAT
            | sys::EPOLL_CREATE
            | sys::INOTIFY_INIT
            | sys::OPENAT
            | sys::SIGNALFD
            | sys::TIMERFD_CREATE
            | sys::EVENTFD
            | sys::ACCEPT4
            | sys::SIGNALFD4
            | sys::EVENTFD2
            | sys::EPOLL_CREATE1
            | sys::DUP3
            | sys::PIPE2
            | sys::INOTIFY_INIT1
            | sys::PERF_EVENT_OPEN
            | sys::FANOTIFY_INIT
            | sys::OPEN_BY_HANDLE_AT
            | sys::MEMFD_CREATE
            | sys::EXECVEAT
            | sys::USERFAULTFD
            | sys::IO_URING_SETUP
            | sys::PIDFD_OPEN
            | sys::CLOSE_RANGE
            | sys::OPENAT2
            | sys::PIDFD_GETFD
    )
}

/// execve or execveat: the process gets a new image.
#[inline(always)]
pub fn is_exec(nr: u32) -> bool {
    nr == sys::EXECVE || nr == sys::EXECVEAT
}

/// Whether to follow this call to its exit: calls that change no descriptor stay out.
#[inline(always)]
pub fn keep(call: &SyscallArgs) -> bool {
    let [a0, a1, a2, ..] = call.args;
    match call.nr {
        sys::FCNTL => a1 == F_DUPFD || a1 == F_DUPFD_CLOEXEC,
        // signalfd on an existing descriptor only updates its mask.
        sys::SIGNALFD | sys::SIGNALFD4 => a0 as i32 == -1,
        sys::CLOSE_RANGE => a2 & CLOSE_RANGE_CLOEXEC == 0,
        _ => true,
    }
}

#[inline(always)]
pub fn exit(tgid: u32, call: &SyscallArgs, ret: u64, regs: &pt_regs) {
    let [a0, a1, ..] = call.args;
    match call.nr {
        sys::CLOSE => closed(tgid, a0 as u32, a0 as u32),
        sys::CLOSE_RANGE => closed(tgid, a0 as u32, a1 as u32),
        // Both descriptors are written to the caller's int[2].
        sys::PIPE | sys::PIPE2 => opened(tgid, call, a0, regs),
        sys::SOCKETPAIR => opened(tgid, call, call.args[3], regs),
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
        sys::OPEN | sys::CREAT | sys::MEMFD_CREATE => a0,
        sys::OPENAT | sys::OPENAT2 => a1,
        _ => 0,
    };
    // SAFETY: `event` is our reserved ring-buffer slot.
    unsafe {
        (*event).kind = EventKind::FdOpen as u32;
        (*event).tgid = tgid;
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).nr = call.nr;
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
