//! The limits a leak runs into: the memory limit of the target's cgroup (v2
//! `memory.max`, or v1 `memory.limit_in_bytes`), the tightest one on the way up
//! the hierarchy, with what the cgroup uses now.
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// v1 reports "no limit" as a huge page-aligned number.
const V1_UNLIMITED: u64 = 1 << 62;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryLimit {
    /// The cgroup whose limit is closest to being hit, as the target sees it.
    pub cgroup: String,
    pub limit_bytes: u64,
    pub used_bytes: u64,
}

impl MemoryLimit {
    pub fn headroom(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.used_bytes)
    }

    /// The memory limit of `pid`'s cgroup, `None` when nothing limits it.
    pub fn of(pid: u32) -> Option<Self> {
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut found = Vec::new();
        for line in cgroups.lines() {
            // "hierarchy-id:controllers:path"; v2 is "0::path".
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let v2 = id == "0" && controllers.is_empty();
            if !v2 && !controllers.split(',').any(|c| c == "memory") {
                continue;
            }
            let Some(root) = mount_point(&mounts, v2) else {
                continue;
            };
            let (limit, usage) = if v2 {
                ("memory.max", "memory.current")
            } else {
                ("memory.limit_in_bytes", "memory.usage_in_bytes")
            };
            found.extend(tightest(&root, path, limit, usage));
        }
        found.into_iter().min_by_key(Self::headroom)
    }
}

/// The open-files limit (RLIMIT_NOFILE, soft) of a process and what it has open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdLimit {
    pub limit: u64,
    pub open: u64,
}

impl FdLimit {
    pub fn headroom(&self) -> u64 {
        self.limit.saturating_sub(self.open)
    }

    pub fn of(pid: u32) -> Option<Self> {
        let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        let limit = line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let open = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some(Self { limit, open })
    }
}

/// Where the memory hierarchy (v1) or the unified one (v2) is mounted.
fn mount_point(mountinfo: &str, v2: bool) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fs = right.split_whitespace();
        let fstype = fs.next()?;
        let options = fs.nth(1).unwrap_or("");
        let wanted = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "memory")
        };
        // Only mounts of the hierarchy's root map cgroup paths one to one.
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (wanted && root == "/").then(|| PathBuf::from(point))
    })
}

/// The limit with the least headroom from `path` up to the root.
fn tightest(root: &Path, path: &str, limit: &str, usage: &str) -> Option<MemoryLimit> {
    let mut best: Option<MemoryLimit> = None;
    let mut cgroup = Some(Path::new(path));
    while let Some(dir) = cgroup {
        let full = root.join(dir.strip_prefix("/").unwrap_or(dir));
        let read = |file: &str| -> Option<u64> {
            fs::read_to_string(full.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        if let (Some(limit_bytes), Some(used_bytes)) = (read(limit), read(usage))
            && limit_bytes < V1_UNLIMITED
        {
            let candidate = MemoryLimit {
                cgroup: dir.display().to_string(),
                limit_bytes,
                used_bytes,
            };
            if best
                .as_ref()
                .is_none_or(|b| candidate.headroom() < b.headroom())
            {
                best = Some(candidate);
            }
        }
        cgroup = dir.parent();
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_mounts() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:32 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert_eq!(
            mount_point(info, false),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            mount_point(info, true),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }
}
