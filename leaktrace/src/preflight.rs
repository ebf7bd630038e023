//! Checks made before touching the kernel, each failing with what to do next.
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "leaktrace needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load eBPF programs: run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "leaktrace lacks {0}: CAP_BPF loads its programs, CAP_PERFMON attaches them, CAP_SYS_ADMIN is what uprobes need on kernels with the CVE-2025-38466 fix (add it to the container's capabilities)"
    )]
    MissingCapabilities(String),
    #[error(
        "this kernel has no BPF support (/sys/fs/bpf or the bpf syscall is missing): leaktrace needs Linux 5.8 or newer"
    )]
    NoBpf,
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): leaktrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check() -> Result<(), PreflightError> {
    let missing = missing_capabilities();
    if missing.len() == CAPABILITIES.len() {
        return Err(PreflightError::NotPrivileged);
    }
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities(missing.join(" and ")));
    }
    if !Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        return Err(PreflightError::NoBpf);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

const CAPABILITIES: [(u32, &str); 3] = [
    (CAP_BPF, "CAP_BPF"),
    (CAP_PERFMON, "CAP_PERFMON"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
];

/// The capabilities leaktrace needs and has not, by name.
fn missing_capabilities() -> Vec<&'static str> {
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let v = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(v.trim(), 16).ok()
        })
        .unwrap_or(0);
    CAPABILITIES
        .iter()
        .filter(|(c, _)| effective & (1 << c) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The open-files limit leaktrace started with, before [`raise_open_files_limit`].
static STARTED_WITH: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the soft open-files limit to the hard one: every probe attached to
/// every followed process is a descriptor of leaktrace's, and 1024 runs out
/// at a few dozen forked workers. Commands leaktrace starts get the limit it
/// started with back (see [`open_files_limit_at_start`]).
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let _ = STARTED_WITH.set(limit);
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                log::debug!(
                    "open-files limit stays {}: {}",
                    limit.rlim_cur,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// The open-files limit leaktrace started with, if it raised it.
pub fn open_files_limit_at_start() -> Option<libc::rlimit> {
    STARTED_WITH.get().copied()
}

/// Where the syscall tracepoints are found.
const TRACEFS: &str = "/sys/kernel/tracing";

/// leaktrace's caller's mount namespace, when leaktrace left it for one of
/// its own (see [`mount_tracefs`]): a command it starts goes back to it.
static CALLERS_MOUNTS: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// The syscall tracepoints are attached through tracefs. Where it is not
/// mounted (minimal hosts, containers), leaktrace mounts it in a mount
/// namespace of its own, which the host's mounts still reach: nothing is left
/// mounted behind it. Call it before any thread starts (a process with
/// threads cannot change its mount namespace); failing, it says so and the
/// attach fails later with the fix.
pub fn mount_tracefs() {
    use std::os::fd::{AsRawFd, OwnedFd};
    let listed = |p: &str| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
    if listed(TRACEFS) || listed("/sys/kernel/debug/tracing") {
        return;
    }
    let callers = match std::fs::File::open("/proc/self/ns/mnt") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            log::debug!("tracefs is not mounted, and /proc/self/ns/mnt cannot be opened: {e}");
            return;
        }
    };
    let ok = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: no thread yet; constant C strings; no data argument.
    let mounted = unsafe {
        ok(libc::unshare(libc::CLONE_NEWNS))
            .and_then(|()| {
                // Mounts made here propagate nowhere; the host's still come in.
                ok(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ))
            })
            .and_then(|()| {
                ok(libc::mount(
                    c"tracefs".as_ptr(),
                    c"/sys/kernel/tracing".as_ptr(),
                    c"tracefs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ))
            })
    };
    match mounted {
        Ok(()) => {
            log::debug!("tracefs mounted in a mount namespace of leaktrace's own");
            let _ = CALLERS_MOUNTS.set(callers);
        }
        Err(e) => {
            log::debug!(
                "tracefs is not mounted at {TRACEFS} and leaktrace could not mount it: {e}"
            );
            // Back where the caller was, if it left.
            // SAFETY: setns on an open namespace descriptor.
            unsafe { libc::setns(callers.as_raw_fd(), libc::CLONE_NEWNS) };
        }
    }
}

/// The caller's mount namespace, if leaktrace is in one of its own.
pub fn callers_mounts() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    CALLERS_MOUNTS.get().map(|f| f.as_raw_fd())
}
