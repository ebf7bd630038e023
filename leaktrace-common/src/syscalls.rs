//! x86-64 syscall numbers (`__NR_*` of the kernel's
//! `arch/x86/entry/syscalls/syscall_64.tbl`), named as there in capitals.
//!
//! The eBPF tracepoints pick the calls they follow by them, and userspace tells
//! the descriptor an [`FdOpen`](crate::FdOpen) event reports by its `nr`: one
//! list, so the two sides cannot disagree. `u32`, the width of `FdOpen::nr`
//! and of [`SyscallArgs::nr`](crate::SyscallArgs): the kernel takes a syscall
//! number as an `int`.

// Memory mappings (leaktrace-ebpf/src/mmap.rs).
pub const MMAP: u32 = 9;
pub const MUNMAP: u32 = 11;
pub const MREMAP: u32 = 25;

// Processes (leaktrace-ebpf/src/fork.rs).
pub const CLONE: u32 = 56;
pub const FORK: u32 = 57;
pub const VFORK: u32 = 58;
pub const EXECVE: u32 = 59;
/// A thread's own end (`exit_group` ends the process).
pub const EXIT: u32 = 60;
pub const CLONE3: u32 = 435;
pub const EXECVEAT: u32 = 322;

// Descriptors created or closed (leaktrace-ebpf/src/fd.rs; leaktrace/src/handles.rs).
pub const OPEN: u32 = 2;
pub const CLOSE: u32 = 3;
pub const PIPE: u32 = 22;
pub const DUP: u32 = 32;
pub const DUP2: u32 = 33;
pub const SOCKET: u32 = 41;
pub const ACCEPT: u32 = 43;
pub const SOCKETPAIR: u32 = 53;
pub const FCNTL: u32 = 72;
pub const CREAT: u32 = 85;
pub const EPOLL_CREATE: u32 = 213;
pub const INOTIFY_INIT: u32 = 253;
pub const OPENAT: u32 = 257;
pub const SIGNALFD: u32 = 282;
pub const TIMERFD_CREATE: u32 = 283;
pub const EVENTFD: u32 = 284;
pub const ACCEPT4: u32 = 288;
pub const SIGNALFD4: u32 = 289;
pub const EVENTFD2: u32 = 290;
pub const EPOLL_CREATE1: u32 = 291;
pub const DUP3: u32 = 292;
pub const PIPE2: u32 = 293;
pub const INOTIFY_INIT1: u32 = 294;
pub const PERF_EVENT_OPEN: u32 = 298;
pub const FANOTIFY_INIT: u32 = 300;
pub const OPEN_BY_HANDLE_AT: u32 = 304;
pub const MEMFD_CREATE: u32 = 319;
pub const USERFAULTFD: u32 = 323;
pub const IO_URING_SETUP: u32 = 425;
pub const PIDFD_OPEN: u32 = 434;
pub const CLOSE_RANGE: u32 = 436;
pub const OPENAT2: u32 = 437;
pub const PIDFD_GETFD: u32 = 438;

/// The calls followed, each with its tracepoints' name (`syscalls:sys_enter_NAME`,
/// `syscalls:sys_exit_NAME`) and the families that follow it (`0`: always).
/// Only these are hooked: a call not listed costs untraced processes a bit test.
pub const FOLLOWED: &[(u32, &str, u32)] = {
    use crate::{FAMILY_FDS as F, FAMILY_FORKS, FAMILY_MMAP as M, FAMILY_THREADS as T};
    const P: u32 = FAMILY_FORKS | T;
    &[
        (MMAP, "mmap", M),
        (MUNMAP, "munmap", M),
        (MREMAP, "mremap", M),
        (CLONE, "clone", P),
        (FORK, "fork", P),
        (VFORK, "vfork", P),
        (CLONE3, "clone3", P),
        // A new image needs its probes, whatever is followed.
        (EXECVE, "execve", 0),
        (EXECVEAT, "execveat", 0),
        (EXIT, "exit", T),
        (OPEN, "open", F),
        (CLOSE, "close", F),
        (PIPE, "pipe", F),
        (DUP, "dup", F),
        (DUP2, "dup2", F),
        (SOCKET, "socket", F),
        (ACCEPT, "accept", F),
        (SOCKETPAIR, "socketpair", F),
        (FCNTL, "fcntl", F),
        (CREAT, "creat", F),
        (EPOLL_CREATE, "epoll_create", F),
        (INOTIFY_INIT, "inotify_init", F),
        (OPENAT, "openat", F),
        (SIGNALFD, "signalfd", F),
        (TIMERFD_CREATE, "timerfd_create", F),
        (EVENTFD, "eventfd", F),
        (ACCEPT4, "accept4", F),
        (SIGNALFD4, "signalfd4", F),
        (EVENTFD2, "eventfd2", F),
        (EPOLL_CREATE1, "epoll_create1", F),
        (DUP3, "dup3", F),
        (PIPE2, "pipe2", F),
        (INOTIFY_INIT1, "inotify_init1", F),
        (PERF_EVENT_OPEN, "perf_event_open", F),
        (FANOTIFY_INIT, "fanotify_init", F),
        (OPEN_BY_HANDLE_AT, "open_by_handle_at", F),
        (MEMFD_CREATE, "memfd_create", F),
        (USERFAULTFD, "userfaultfd", F),
        (IO_URING_SETUP, "io_uring_setup", F),
        (PIDFD_OPEN, "pidfd_open", F),
        (CLOSE_RANGE, "close_range", F),
        (OPENAT2, "openat2", F),
        (PIDFD_GETFD, "pidfd_getfd", F),
    ]
};
