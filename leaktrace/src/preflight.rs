//! Checks made before touching the kernel, each failing with what to do next.
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "leaktrace needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load eBPF programs: run it with sudo"
    )]
    NotPrivileged,
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
    if !privileged() {
        return Err(PreflightError::NotPrivileged);
    }
    if !Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        return Err(PreflightError::NoBpf);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

fn privileged() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF]
        .iter()
        .all(|c| effective & (1 << c) != 0)
}
