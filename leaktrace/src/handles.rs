//! What a file descriptor is and points to: its kind from the syscall that made
//! it or from `/proc/PID/fd`, the path of a file, and for a socket its protocol
//! and addresses from `/proc/PID/net/*` ("tcp 127.0.0.1:41234 -> 127.0.0.1:8080").
use std::{
    collections::HashMap,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandleKind {
    File,
    Socket,
    Pipe,
    Eventfd,
    Epoll,
    Timerfd,
    Signalfd,
    Inotify,
    Memfd,
    Pidfd,
    Other,
    /// Not a descriptor: a goroutine, whose detail is the function it runs.
    Goroutine,
    /// Not a descriptor: a thread.
    Thread,
}

impl HandleKind {
    pub fn name(self) -> &'static str {
        match self {
            HandleKind::File => "file",
            HandleKind::Socket => "socket",
            HandleKind::Pipe => "pipe",
            HandleKind::Eventfd => "eventfd",
            HandleKind::Epoll => "epoll",
            HandleKind::Timerfd => "timerfd",
            HandleKind::Signalfd => "signalfd",
            HandleKind::Inotify => "inotify",
            HandleKind::Memfd => "memfd",
            HandleKind::Pidfd => "pidfd",
            HandleKind::Other => "other",
            HandleKind::Goroutine => "goroutine",
            HandleKind::Thread => "thread",
        }
    }
}

/// x86-64 syscall numbers, the eBPF side's (an [`FdOpen`](leaktrace_common::FdOpen)'s `nr`).
pub use leaktrace_common::syscalls as nr;

/// What a creating syscall says about its descriptor.
pub enum Origin {
    Made(HandleKind),
    /// A copy of the descriptor given as this argument index (dup family).
    CopyOf(usize),
    /// Only /proc can tell (pidfd_getfd).
    Unknown,
}

pub fn origin(syscall: u32) -> Origin {
    use HandleKind::*;
    match syscall {
        nr::OPEN | nr::OPENAT | nr::OPENAT2 | nr::CREAT | nr::OPEN_BY_HANDLE_AT => {
            Origin::Made(File)
        }
        nr::SOCKET | nr::ACCEPT | nr::ACCEPT4 | nr::SOCKETPAIR => Origin::Made(Socket),
        nr::PIPE | nr::PIPE2 => Origin::Made(Pipe),
        nr::EVENTFD | nr::EVENTFD2 => Origin::Made(Eventfd),
        nr::EPOLL_CREATE | nr::EPOLL_CREATE1 => Origin::Made(Epoll),
        nr::TIMERFD_CREATE => Origin::Made(Timerfd),
        nr::SIGNALFD | nr::SIGNALFD4 => Origin::Made(Signalfd),
        nr::INOTIFY_INIT | nr::INOTIFY_INIT1 => Origin::Made(Inotify),
        nr::MEMFD_CREATE => Origin::Made(Memfd),
        nr::PIDFD_OPEN => Origin::Made(Pidfd),
        nr::DUP | nr::DUP2 | nr::DUP3 | nr::FCNTL => Origin::CopyOf(0),
        nr::PIDFD_GETFD => Origin::Unknown,
        _ => Origin::Made(Other),
    }
}

/// `socket(family, type)` before it is connected: "tcp", "udp6", "unix stream"…
pub fn socket_detail(family: u64, ty: u64) -> String {
    const SOCK_STREAM: u64 = 1;
    const SOCK_DGRAM: u64 = 2;
    let ty = ty & 0xf; // SOCK_NONBLOCK and SOCK_CLOEXEC ride in the type
    match (family, ty) {
        (2, SOCK_STREAM) => "tcp".into(),
        (2, SOCK_DGRAM) => "udp".into(),
        (10, SOCK_STREAM) => "tcp6".into(),
        (10, SOCK_DGRAM) => "udp6".into(),
        (1, SOCK_STREAM) => "unix stream".into(),
        (1, SOCK_DGRAM) => "unix dgram".into(),
        (1, _) => "unix".into(),
        (16, _) => "netlink".into(),
        (family, ty) => format!("socket family {family} type {ty}"),
    }
}

/// A path the target opened, made absolute against its cwd (or the directory
/// `dir` of an openat), without "." components; paths stay as the target sees
/// them (".." is kept: a symlink may be behind it).
pub fn absolute(path: &str, dir: Option<&Path>) -> String {
    let joined = match dir {
        Some(dir) if !path.starts_with('/') => dir.join(path),
        _ => PathBuf::from(path),
    };
    joined
        .components()
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// The working directory of `pid`, as the target sees it.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// What `/proc/PID/fd/FD` points to.
pub fn link(pid: u32, fd: i32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Kind and detail of a `/proc/PID/fd` link.
pub fn classify(link: &str) -> (HandleKind, String) {
    use HandleKind::*;
    if link.starts_with("socket:[") {
        return (Socket, "socket".into());
    }
    if link.starts_with("pipe:[") {
        return (Pipe, String::new());
    }
    if let Some(name) = link.strip_prefix("/memfd:") {
        return (Memfd, name.trim_end_matches(" (deleted)").to_string());
    }
    if let Some(anon) = link.strip_prefix("anon_inode:") {
        let anon = anon.trim_matches(|c| c == '[' || c == ']');
        let kind = match anon {
            "eventfd" => Eventfd,
            "eventpoll" => Epoll,
            "timerfd" => Timerfd,
            "signalfd" => Signalfd,
            "inotify" => Inotify,
            "pidfd" => Pidfd,
            _ => Other,
        };
        let detail = if kind == Other {
            anon.to_string()
        } else {
            String::new()
        };
        return (kind, detail);
    }
    (File, link.to_string())
}

/// The inode of a socket link "socket:[12345]".
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Sockets of a network namespace by inode, from `/proc/PID/net/*`.
#[derive(Default)]
pub struct Sockets {
    by_inode: HashMap<u64, String>,
}

impl Sockets {
    pub fn read(pid: u32) -> Self {
        let mut s = Sockets::default();
        let net = PathBuf::from(format!("/proc/{pid}/net"));
        for proto in ["tcp", "tcp6", "udp", "udp6"] {
            if let Ok(text) = fs::read_to_string(net.join(proto)) {
                s.parse_inet(proto, &text);
            }
        }
        if let Ok(text) = fs::read_to_string(net.join("unix")) {
            s.parse_unix(&text);
        }
        s
    }

    pub fn describe(&self, inode: u64) -> Option<&str> {
        self.by_inode.get(&inode).map(String::as_str)
    }

    /// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`
    fn parse_inet(&mut self, proto: &str, text: &str) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) =
                (f.get(1), f.get(2), f.get(3), f.get(9))
            else {
                continue;
            };
            let (Some(local), Some(remote), Ok(inode)) =
                (endpoint(local), endpoint(remote), inode.parse::<u64>())
            else {
                continue;
            };
            let tcp = proto.starts_with("tcp");
            let detail = match *state {
                "0A" if tcp => format!("{proto} listen {local}"),
                _ if remote.ends_with(":0") && !tcp => format!("{proto} {local}"),
                _ => format!("{proto} {local} -> {remote}"),
            };
            self.by_inode.insert(inode, detail);
        }
    }

    /// `Num RefCount Protocol Flags Type St Inode Path`
    fn parse_unix(&mut self, text: &str) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(Ok(inode)) = f.get(6).map(|i| i.parse::<u64>()) else {
                continue;
            };
            let detail = match f.get(7) {
                Some(path) => format!("unix {path}"),
                None => "unix (unnamed)".to_string(),
            };
            self.by_inode.insert(inode, detail);
        }
    }
}

/// "0100007F:1F90" → "127.0.0.1:8080": the kernel prints each 32-bit word of
/// the address as the x86 host sees it, so a word's bytes are little-endian.
fn endpoint(hex: &str) -> Option<String> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [w] => Some(format!("{}:{port}", Ipv4Addr::from(w.to_le_bytes()))),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            let ip = Ipv6Addr::from(bytes);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => format!("{v4}:{port}"),
                None => format!("[{ip}]:{port}"),
            })
        }
        _ => None,
    }
}

/// The descriptors `pid` has open now: number and link.
pub fn open_fds(pid: u32) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut fds: Vec<(i32, String)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            Some((fd, link(pid, fd)?))
        })
        .collect();
    fds.sort();
    fds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// leaktrace-common's numbers are the C library's `SYS_*`.
    #[test]
    fn syscall_numbers_are_the_kernels() {
        let pairs = [
            (nr::MMAP, libc::SYS_mmap),
            (nr::MUNMAP, libc::SYS_munmap),
            (nr::MREMAP, libc::SYS_mremap),
            (nr::CLONE, libc::SYS_clone),
            (nr::FORK, libc::SYS_fork),
            (nr::VFORK, libc::SYS_vfork),
            (nr::EXECVE, libc::SYS_execve),
            (nr::CLONE3, libc::SYS_clone3),
            (nr::EXECVEAT, libc::SYS_execveat),
            (nr::OPEN, libc::SYS_open),
            (nr::CLOSE, libc::SYS_close),
            (nr::PIPE, libc::SYS_pipe),
            (nr::DUP, libc::SYS_dup),
            (nr::DUP2, libc::SYS_dup2),
            (nr::SOCKET, libc::SYS_socket),
            (nr::ACCEPT, libc::SYS_accept),
            (nr::SOCKETPAIR, libc::SYS_socketpair),
            (nr::FCNTL, libc::SYS_fcntl),
            (nr::CREAT, libc::SYS_creat),
            (nr::EPOLL_CREATE, libc::SYS_epoll_create),
            (nr::INOTIFY_INIT, libc::SYS_inotify_init),
            (nr::OPENAT, libc::SYS_openat),
            (nr::SIGNALFD, libc::SYS_signalfd),
            (nr::TIMERFD_CREATE, libc::SYS_timerfd_create),
            (nr::EVENTFD, libc::SYS_eventfd),
            (nr::ACCEPT4, libc::SYS_accept4),
            (nr::SIGNALFD4, libc::SYS_signalfd4),
            (nr::EVENTFD2, libc::SYS_eventfd2),
            (nr::EPOLL_CREATE1, libc::SYS_epoll_create1),
            (nr::DUP3, libc::SYS_dup3),
            (nr::PIPE2, libc::SYS_pipe2),
            (nr::INOTIFY_INIT1, libc::SYS_inotify_init1),
            (nr::PERF_EVENT_OPEN, libc::SYS_perf_event_open),
            (nr::FANOTIFY_INIT, libc::SYS_fanotify_init),
            (nr::OPEN_BY_HANDLE_AT, libc::SYS_open_by_handle_at),
            (nr::MEMFD_CREATE, libc::SYS_memfd_create),
            (nr::USERFAULTFD, libc::SYS_userfaultfd),
            (nr::IO_URING_SETUP, libc::SYS_io_uring_setup),
            (nr::PIDFD_OPEN, libc::SYS_pidfd_open),
            (nr::CLOSE_RANGE, libc::SYS_close_range),
            (nr::OPENAT2, libc::SYS_openat2),
            (nr::PIDFD_GETFD, libc::SYS_pidfd_getfd),
        ];
        for (ours, libc) in pairs {
            assert_eq!(i64::from(ours), libc);
        }
    }

    #[test]
    fn decodes_proc_net_addresses() {
        assert_eq!(endpoint("0100007F:1F90").unwrap(), "127.0.0.1:8080");
        assert_eq!(
            endpoint("0000000000000000FFFF00000100007F:0050").unwrap(),
            "127.0.0.1:80"
        );
        assert_eq!(
            endpoint("00000000000000000000000001000000:0016").unwrap(),
            "[::1]:22"
        );
    }

    #[test]
    fn reads_tcp_and_unix_tables() {
        let mut s = Sockets::default();
        s.parse_inet(
            "tcp",
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1\n\
             1: 0100007F:A0B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1002 1\n",
        );
        s.parse_unix(
            "Num       RefCount Protocol Flags    Type St Inode Path\n\
             0000000000000000: 00000002 00000000 00010000 0001 01 2001 /run/app.sock\n\
             0000000000000000: 00000003 00000000 00000000 0001 03 2002\n",
        );
        assert_eq!(s.describe(1001), Some("tcp listen 127.0.0.1:8080"));
        assert_eq!(
            s.describe(1002),
            Some("tcp 127.0.0.1:41138 -> 127.0.0.1:8080")
        );
        assert_eq!(s.describe(2001), Some("unix /run/app.sock"));
        assert_eq!(s.describe(2002), Some("unix (unnamed)"));
    }

    #[test]
    fn paths_are_made_absolute() {
        let dir = Some(Path::new("/srv/app/."));
        assert_eq!(absolute("./data/x.db", dir), "/srv/app/data/x.db");
        assert_eq!(absolute("/etc/hosts", dir), "/etc/hosts");
        assert_eq!(absolute("../x", dir), "/srv/app/../x");
        assert_eq!(absolute("x", None), "x");
    }

    #[test]
    fn classifies_proc_fd_links() {
        assert_eq!(
            classify("/etc/hosts"),
            (HandleKind::File, "/etc/hosts".into())
        );
        assert_eq!(classify("pipe:[77]").0, HandleKind::Pipe);
        assert_eq!(classify("anon_inode:[eventfd]").0, HandleKind::Eventfd);
        assert_eq!(classify("anon_inode:[eventpoll]").0, HandleKind::Epoll);
        assert_eq!(classify("anon_inode:inotify").0, HandleKind::Inotify);
        assert_eq!(
            classify("/memfd:cache (deleted)"),
            (HandleKind::Memfd, "cache".into())
        );
        assert_eq!(socket_inode("socket:[4242]"), Some(4242));
        assert_eq!(socket_detail(2, 1 | 0o2000000), "tcp");
    }
}
