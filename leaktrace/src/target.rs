//! The processes being traced: checking a PID, starting a command held before
//! `execve`, reading what /proc says about them.
use std::{
    ffi::{CString, OsString},
    fs,
    io::Write,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use crate::{
    allocator,
    elf::ElfImage,
    procmaps::{FileId, Mapping, ProcMaps},
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {0}")]
    NoSuchPid(u32),
    #[error("PID {0} is a kernel thread: it has no user memory to trace")]
    KernelThread(u32),
    #[error("PID {0} is leaktrace itself")]
    Myself(u32),
    #[error("cannot inspect PID {pid}: {error}{hint}")]
    Proc {
        pid: u32,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error("{0}: command not found")]
    CommandNotFound(String),
    // Not a `source`: the message says it, and a chain would say it twice.
    #[error("cannot start {cmd}: {error}")]
    Spawn { cmd: String, error: std::io::Error },
    #[error("no user {0} on this system (--user takes a name or a numeric UID)")]
    NoSuchUser(String),
}

/// Whom a started command runs as: `--user`, else the user who ran sudo.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    /// Where they came from, for the log line.
    from: &'static str,
}

impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (UID {}, GID {}; {})",
            self.name, self.uid, self.gid, self.from
        )
    }
}

impl Credentials {
    /// `--user USER` if given (`None` for root: nothing to change), else the
    /// sudo user, else `None`.
    pub fn for_command(user: Option<&str>) -> Result<Option<Self>, TargetError> {
        let (entry, from) = match user {
            Some(u) => (
                passwd(u).ok_or_else(|| TargetError::NoSuchUser(u.into()))?,
                "--user",
            ),
            None => {
                let sudo = std::env::var("SUDO_UID").ok().and_then(|u| passwd(&u));
                match sudo {
                    Some(e) => (e, "the user who ran sudo; --user root keeps root"),
                    None => return Ok(None),
                }
            }
        };
        if entry.uid == 0 {
            return Ok(None);
        }
        let groups = group_list(&entry.name, entry.gid);
        Ok(Some(Credentials {
            name: entry.name,
            uid: entry.uid,
            gid: entry.gid,
            groups,
            from,
        }))
    }
}

struct PasswdEntry {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// The password entry of `user`, a name or a numeric UID.
fn passwd(user: &str) -> Option<PasswdEntry> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: getpwnam_r/getpwuid_r fill `pwd` with pointers into `buf`,
    // which outlives their use here; `result` says whether it was found.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = match user.parse::<libc::uid_t>() {
            Ok(uid) => libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result),
            Err(_) => {
                let name = CString::new(user).ok()?;
                libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            }
        };
        if rc != 0 || result.is_null() {
            return None;
        }
        Some(PasswdEntry {
            name: std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        })
    }
}

/// `name`'s supplementary groups (with `gid`), as `initgroups` would set them.
fn group_list(name: &str, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let Ok(c_name) = CString::new(name) else {
        return vec![gid];
    };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: getgrouplist writes at most `n` entries and updates `n`.
        let rc = unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n as usize <= groups.len() || n > 65536 {
            return vec![gid];
        }
    }
}

/// One traced process.
#[derive(Clone, Debug)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    /// The executable as the target sees it (`/proc/PID/exe`).
    pub exe: PathBuf,
    /// Process start time (clock ticks after boot): tells a PID reused after exit.
    start_time: u64,
}

impl Target {
    /// An existing process.
    pub fn existing(pid: u32) -> Result<Self, TargetError> {
        if pid == std::process::id() {
            return Err(TargetError::Myself(pid));
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if pid == 0 || !proc_dir.exists() {
            return Err(TargetError::NoSuchPid(pid));
        }
        let stat = read_stat(pid).ok_or(TargetError::NoSuchPid(pid))?;
        let exe = match fs::read_link(proc_dir.join("exe")) {
            Ok(exe) => PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if stat.state == 'Z' {
                    TargetError::NoSuchPid(pid)
                } else {
                    TargetError::KernelThread(pid)
                });
            }
            Err(error) => {
                // Another user's process: reading its /proc links is a ptrace
                // access check, which root passes only with CAP_SYS_PTRACE.
                let hint = if error.kind() == std::io::ErrorKind::PermissionDenied {
                    " (leaktrace needs CAP_SYS_PTRACE to look into other users' processes: \
                     in a container, add it, e.g. --cap-add SYS_PTRACE)"
                } else {
                    ""
                };
                return Err(TargetError::Proc { pid, error, hint });
            }
        };
        Ok(Self {
            pid,
            comm: stat.comm,
            exe,
            start_time: stat.start_time,
        })
    }

    /// The executable, opened through the target's root (other mount
    /// namespaces); `/proc/PID/exe` when the path now names another file (the
    /// program was replaced or deleted since it started).
    pub fn exe_path(&self) -> PathBuf {
        let rooted = in_root(self.pid, &self.exe);
        let running = PathBuf::from(format!("/proc/{}/exe", self.pid));
        match FileId::of_path(&running) {
            Some(id) if FileId::of_path(&rooted) != Some(id) => running,
            _ => rooted,
        }
    }

    /// Whether the process still runs (not exited, not a zombie, PID not reused).
    pub fn alive(&self) -> bool {
        read_stat(self.pid)
            .is_some_and(|s| s.state != 'Z' && s.state != 'X' && s.start_time == self.start_time)
    }

    /// The target's allocators, found through the libraries it has mapped.
    pub fn allocators(&self) -> Result<allocator::Found, allocator::AllocatorError> {
        let maps = ProcMaps::read(self.pid).unwrap_or_default();
        let pid = self.pid;
        let mapped = move |name: &str, requester: &ElfImage| {
            if name.contains('/') {
                return Some(in_root(pid, Path::new(name)));
            }
            maps.find_file(name)
                .and_then(|m| mapped_file(pid, m))
                .or_else(|| allocator::search_library(name, requester))
        };
        let preload: Vec<PathBuf> = read_env(self.pid, "LD_PRELOAD")
            .map(|v| {
                allocator::preload_paths(&v)
                    .map(|p| in_root(self.pid, p))
                    .collect()
            })
            .unwrap_or_default();
        allocator::find(&self.exe_path(), &preload, &mapped)
    }
}

/// A command started by leaktrace, held before `execve` until the probes are in,
/// and again at its entry point until the unwinder knows the libraries the
/// dynamic loader mapped (see [`Launched::release`]).
///
/// Forked by hand: std's `Command::spawn` waits for the exec, which we must delay.
///
/// Dropped without [`Launched::release`] (an attach failed), the command is
/// killed before it ever runs: it never runs untraced.
pub struct Launched {
    pub pid: u32,
    release: Option<OwnedFd>,
    pub exe: PathBuf,
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.release.take().is_some() {
            let mut status = 0;
            // SAFETY: kill and waitpid on our own child, still blocked before
            // its exec (the pipe it waits on is open until after the kill).
            unsafe {
                libc::kill(self.pid as i32, libc::SIGKILL);
                libc::waitpid(self.pid as i32, &mut status, 0);
            }
        }
    }
}

impl Launched {
    /// Forks the command, held before `execve`; `user`: whom it runs as.
    pub fn spawn(argv: &[OsString], user: Option<&Credentials>) -> Result<Self, TargetError> {
        let name = argv[0].to_string_lossy().into_owned();
        let exe =
            find_in_path(&argv[0]).ok_or_else(|| TargetError::CommandNotFound(name.clone()))?;
        let spawn_err = |error| TargetError::Spawn {
            cmd: name.clone(),
            error,
        };
        if !executable(&exe) {
            return Err(spawn_err(std::io::Error::last_os_error()));
        }
        let c_exe = CString::new(exe.as_os_str().as_bytes()).map_err(|e| spawn_err(e.into()))?;
        let c_args: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| spawn_err(e.into()))?;
        let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
        c_argv.push(std::ptr::null());
        let (hold, release) = std::io::pipe().map_err(spawn_err)?;
        // SAFETY: getpid has no preconditions.
        let leaktrace = unsafe { libc::getpid() };
        // The command gets the open-files limit leaktrace was started with,
        // not the one it raised for itself.
        let nofile = crate::preflight::open_files_limit_at_start();
        let mounts = crate::preflight::callers_mounts();
        // Entering a mount namespace moves to its root: the command goes back
        // to the directory it was started in, by its path there.
        let cwd = mounts
            .and_then(|_| std::env::current_dir().ok())
            .and_then(|d| CString::new(d.as_os_str().as_bytes()).ok());
        // SAFETY: between fork and exec the child only calls async-signal-safe
        // functions (read, close, setns, chdir, setrlimit, setgroups, setgid, setuid, prctl,
        // getppid, ptrace, execv, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            unsafe {
                let fd = hold.as_raw_fd();
                libc::close(release.as_raw_fd());
                let mut byte = 0u8;
                // No byte: leaktrace died or gave up before attaching. The
                // command never runs untraced.
                if libc::read(fd, (&raw mut byte).cast(), 1) != 1 {
                    libc::_exit(127);
                }
                libc::close(fd);
                // The command sees the mounts leaktrace's caller sees.
                if let Some(ns) = mounts
                    && (libc::setns(ns, libc::CLONE_NEWNS) != 0
                        || cwd.as_ref().is_some_and(|d| libc::chdir(d.as_ptr()) != 0))
                {
                    libc::_exit(126);
                }
                if let Some(limit) = &nofile {
                    libc::setrlimit(libc::RLIMIT_NOFILE, limit);
                }
                if let Some(c) = user
                    && (libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0
                        || libc::setgid(c.gid) != 0
                        || libc::setuid(c.uid) != 0)
                {
                    libc::_exit(126);
                }
                // Nor once traced: it goes when leaktrace goes, however (set
                // after setuid, which clears it; checked for a parent that
                // went just before).
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != leaktrace {
                    libc::_exit(127);
                }
                // Stops at the exec (SIGTRAP) for `release`; without ptrace it just runs.
                if byte == HOLD_AT_ENTRY {
                    ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                }
                libc::execv(c_exe.as_ptr(), c_argv.as_ptr());
                libc::_exit(127);
            }
        }
        drop(hold);
        Ok(Self {
            pid: pid as u32,
            release: Some(release.into()),
            exe,
        })
    }

    /// The target as seen before `execve`: its pid, with the command's name and executable.
    pub fn target(&self) -> Target {
        Target {
            pid: self.pid,
            comm: self
                .exe
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(15).collect())
                .unwrap_or_default(),
            exe: self.exe.clone(),
            start_time: read_stat(self.pid).map_or(0, |s| s.start_time),
        }
    }

    /// Lets the command exec, and calls `mapped` twice: right after the exec
    /// (the executable and the dynamic loader are mapped), and at its entry
    /// point (the loader has mapped the libraries; `main` has not run). Held at
    /// both under ptrace (a breakpoint at `AT_ENTRY`), then let go; if ptrace is
    /// refused it runs on at once and `mapped` runs late.
    pub fn release(mut self, mut mapped: impl FnMut(u32)) -> Child {
        let release = self.release.take().expect("released once");
        let mut pipe = std::io::PipeWriter::from(release);
        let _ = pipe.write_all(&[HOLD_AT_ENTRY]);
        drop(pipe);
        let mut child = Child {
            pid: self.pid,
            status: None,
        };
        if let Err(e) = hold_at_entry(&mut child, &mut mapped) {
            log::debug!("PID {}: not held at its entry point: {e}", self.pid);
        }
        mapped(self.pid);
        // SAFETY: detaching our own tracee (an error means it was not one).
        unsafe { ptrace(libc::PTRACE_DETACH, self.pid as i32, 0, 0) };
        child
    }
}

/// The byte that lets the held child go, asking it to stop at its exec.
const HOLD_AT_ENTRY: u8 = b'e';

/// `AT_ENTRY` in the auxiliary vector: the executable's entry point.
const AT_ENTRY: u64 = 9;

/// Runs the traced child from its exec stop (calling `at_exec` there) to a
/// breakpoint at its entry point and undoes the breakpoint, leaving it stopped.
fn hold_at_entry(child: &mut Child, at_exec: &mut impl FnMut(u32)) -> std::io::Result<()> {
    let pid = child.pid as i32;
    let err = std::io::Error::other;
    let stopped = |child: &mut Child| -> std::io::Result<i32> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(std::io::Error::last_os_error());
        }
        if libc::WIFSTOPPED(status) {
            Ok(libc::WSTOPSIG(status))
        } else {
            child.status = Some(status); // the exec failed: it has exited
            Err(err("exited before its entry point"))
        }
    };
    if stopped(child)? != libc::SIGTRAP {
        return Err(err("not stopped at its exec"));
    }
    at_exec(child.pid);
    let entry = entry_point(child.pid)?;
    // SAFETY: ptrace on our stopped tracee; PEEKTEXT's result is data, errors
    // are told by errno.
    unsafe {
        *libc::__errno_location() = 0;
        let word = ptrace(libc::PTRACE_PEEKTEXT, pid, entry, 0);
        if *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let trap = (word & !0xff) | 0xcc;
        if ptrace(libc::PTRACE_POKETEXT, pid, entry, trap as u64) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut signal = 0;
        loop {
            ptrace(libc::PTRACE_CONT, pid, 0, signal as u64);
            match stopped(child)? {
                libc::SIGTRAP => break,
                // Anything else the loader meets is the program's to handle.
                other => signal = other,
            }
        }
        ptrace(libc::PTRACE_POKETEXT, pid, entry, word as u64);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        ptrace(libc::PTRACE_GETREGS, pid, 0, (&raw mut regs) as u64);
        if regs.rip != entry + 1 {
            return Err(err("stopped away from its entry point"));
        }
        regs.rip = entry;
        ptrace(libc::PTRACE_SETREGS, pid, 0, (&raw const regs) as u64);
    }
    Ok(())
}

/// Where process `pid`'s executable starts (`AT_ENTRY` of its auxiliary
/// vector): reached once the dynamic loader has mapped the libraries.
pub fn entry_point(pid: u32) -> std::io::Result<u64> {
    let auxv = fs::read(format!("/proc/{pid}/auxv"))?;
    auxv.chunks_exact(16)
        .map(|kv| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            (word(&kv[..8]), word(&kv[8..]))
        })
        .find(|&(key, _)| key == AT_ENTRY)
        .map(|(_, value)| value)
        .ok_or_else(|| std::io::Error::other("no AT_ENTRY"))
}

/// `ptrace(2)` with its address and data as the full-width words the kernel reads.
///
/// # Safety
/// As `ptrace(2)`: `addr`/`data` must be what `request` expects.
unsafe fn ptrace(request: libc::c_uint, pid: i32, addr: u64, data: u64) -> libc::c_long {
    // SAFETY: forwarded from the caller.
    unsafe {
        libc::ptrace(
            request,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

/// A command leaktrace started: reaped by us.
pub struct Child {
    pub pid: u32,
    /// The wait status, once reaped.
    status: Option<i32>,
}

impl Child {
    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
            if r == self.pid as i32 || r < 0 {
                self.status = Some(status);
            }
        }
        self.status.is_some()
    }

    /// Its exit code once it has exited: the code it gave `exit`, or 128 plus
    /// the signal that killed it (as shells say).
    pub fn exit_code(&self) -> Option<i32> {
        let status = self.status?;
        Some(if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        })
    }

    /// SIGTERM, then waits for it: SIGKILL after 5 s.
    pub fn terminate(&mut self) {
        if self.exited() {
            return;
        }
        // SAFETY: kill on our own, not yet reaped, child.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.exited() {
            if std::time::Instant::now() > deadline {
                let mut status = 0;
                // SAFETY: kill and waitpid on our own, not yet reaped, child.
                unsafe {
                    libc::kill(self.pid as i32, libc::SIGKILL);
                    libc::waitpid(self.pid as i32, &mut status, 0);
                }
                self.status = Some(status);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A command leaktrace started never outlives it untraced: however tracing
/// ends (an error included), it is stopped.
impl Drop for Child {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The file `execvp` would run for `cmd`: a regular file with an execute
/// bit (a name without one is found further along PATH, as the shell does).
fn find_in_path(cmd: &std::ffi::OsStr) -> Option<PathBuf> {
    let cmd = Path::new(cmd);
    if cmd.components().count() > 1 {
        return cmd.is_file().then(|| cmd.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file() && executable(p))
}

fn executable(path: &Path) -> bool {
    CString::new(path.as_os_str().as_bytes())
        // SAFETY: access(2) on a valid C string.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0)
}

/// The interpreter a `#!` script names (what the kernel runs, and so what
/// holds the allocator), read from the first line as the kernel does (its
/// first 256 bytes).
pub fn script_interpreter(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let interpreter = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(interpreter)))
}

/// The file behind mapping `m` of `pid`, as leaktrace can open it: its path
/// (through the target's root) while that still names the mapped file, else
/// the mapping itself (`/proc/PID/map_files/…`: a file deleted or replaced on
/// disk since it was mapped, such as a library upgraded under a running
/// daemon). `None` when neither is there (the process exited, the file was
/// replaced): better no names than wrong ones.
pub fn mapped_file(pid: u32, m: &Mapping) -> Option<PathBuf> {
    let path = m.path.as_ref()?;
    let rooted = in_root(pid, path);
    if m.file.is_some() && FileId::of_path(&rooted) == m.file {
        return Some(rooted);
    }
    let mapped = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    fs::metadata(&mapped).is_ok().then_some(mapped)
}

/// `path` as seen by process `pid`, reachable from our mount namespace.
pub fn in_root(pid: u32, path: &Path) -> PathBuf {
    let rooted = Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(path.strip_prefix("/").unwrap_or(path));
    if rooted.exists() {
        rooted
    } else {
        path.to_path_buf()
    }
}

pub(crate) struct Stat {
    pub comm: String,
    pub state: char,
    pub start_time: u64,
}

pub(crate) fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `/proc/PID/stat`: the name is whatever lies between the first `(` and the
/// last `)` (it may hold both, and spaces).
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        // Field 22 of stat; `rest` starts at field 3.
        start_time: rest.get(19)?.parse().ok()?,
    })
}

fn read_env(pid: u32, key: &str) -> Option<String> {
    let env = fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(key)
            .and_then(|v| v.strip_prefix('='))
            .map(str::to_string)
    })
}
