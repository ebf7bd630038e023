//! Heap and mmap leaks per call site: a command traced from its start,
//! running processes by PID, and verdicts over a 20 s trace in a memory
//! cgroup. Real probes on tests/targets/heap.c and scenario.c (run as root).
mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    c::{spawn_waiting, target},
    leaktrace, report, root_or_skip, run, runs_with,
    sites::{outstanding, verdict_of},
    wait_until,
};
use serde_json::Value;

const PAGE: u64 = 4096;

fn assert_heap_target(report: &Value, pid: u64) {
    assert_eq!(
        outstanding(report, pid, "heap", "leak_malloc"),
        (10_000, 10)
    );
    assert_eq!(outstanding(report, pid, "heap", "leak_calloc"), (5_000, 5));
    assert_eq!(outstanding(report, pid, "heap", "leak_realloc"), (8_192, 1));
    assert_eq!(
        outstanding(report, pid, "heap", "leak_posix_memalign"),
        (6_144, 3)
    );
    assert_eq!(
        outstanding(report, pid, "heap", "leak_aligned_alloc"),
        (8_192, 2)
    );
    // churn's malloc loop and its calloc are two sites (two call lines); both freed all.
    let churn: Vec<&Value> = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pid && s["frames"][0]["function"] == "churn")
        .collect();
    assert_eq!(churn.len(), 2, "{churn:?}");
    assert!(
        churn
            .iter()
            .all(|s| s["outstanding_bytes"] == 0 && s["outstanding_count"] == 0)
    );
    assert_eq!(
        churn
            .iter()
            .map(|s| s["total_count"].as_u64().unwrap())
            .sum::<u64>(),
        101
    );
    assert_eq!(outstanding(report, pid, "mmap", "map_keep"), (12 * PAGE, 3));
    assert_eq!(
        outstanding(report, pid, "mmap", "map_partial"),
        (6 * PAGE, 2)
    );
    assert_eq!(outstanding(report, pid, "mmap", "map_grow"), (6 * PAGE, 1));
    assert_eq!(outstanding(report, pid, "mmap", "map_free"), (0, 0));
    // The biggest heap site is the leaking malloc loop, and it has a file:line.
    let top_heap = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "heap")
        .max_by_key(|s| s["outstanding_bytes"].as_u64())
        .unwrap();
    assert_eq!(top_heap["frames"][0]["function"], "leak_malloc");
    assert!(
        top_heap["frames"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("heap.c")
    );
    assert!(top_heap["frames"][0]["line"].as_u64().is_some());
    assert!(top_heap["oldest_age_s"].as_f64().is_some());
    // A run this short cannot call a leak; it can see growth.
    assert!(
        ["growing", "stable"].contains(&top_heap["verdict"].as_str().unwrap()),
        "{top_heap}"
    );
}

#[test]
fn command_leaks_are_found_per_site_with_exact_bytes() {
    if !root_or_skip() {
        return;
    }
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("command.json");
    let out = run(leaktrace()
        .arg("-q")
        .arg("-o")
        .arg(&json)
        .arg("--")
        .arg(target("heap")));
    assert!(out.status.success());
    let r = report(&json);
    assert_eq!(r["version"], 4);
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    assert_eq!(
        r["targets"][0]["exited"], true,
        "the target exited mid-trace: a report, not an error"
    );
    assert_eq!(r["lost"]["allocs_map_full"], 0);
    assert_heap_target(&r, pid);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("leak_malloc (heap.c:"), "{text}");
}

#[test]
fn several_running_pids() {
    if !root_or_skip() {
        return;
    }
    let mut a = spawn_waiting(1500, 16000);
    let mut b = spawn_waiting(1500, 16000);
    // Both have exec'd the target and mapped the C library leaktrace probes.
    for child in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || runs_with(
                child.id(),
                &target("heap"),
                "libc.so.6"
            )),
            "PID {} never ran the target",
            child.id()
        );
    }
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pids.json");
    let out = run(leaktrace()
        .args([
            "-q",
            "-d",
            "3500ms",
            "--pid",
            &a.id().to_string(),
            "--pid",
            &b.id().to_string(),
            "-o",
        ])
        .arg(&json));
    assert!(out.status.success());
    let r = report(&json);
    for child in [&a, &b] {
        assert_heap_target(&r, child.id() as u64);
    }
    // --pid targets are left running.
    assert!(a.try_wait().unwrap().is_none() && b.try_wait().unwrap().is_none());
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
}

/// A fresh memory cgroup with `limit` bytes (v1 or v2, whichever this machine
/// has); returns its directory and the file a process writes its PID to to join.
struct Cgroup(PathBuf);

impl Cgroup {
    fn with_limit(limit: u64) -> Self {
        let name = format!("leaktrace-test-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (dir, file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else {
            let root = Path::new("/sys/fs/cgroup");
            std::fs::write(root.join("cgroup.subtree_control"), "+memory").unwrap();
            (root.join(&name), "memory.max")
        };
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(file), limit.to_string()).unwrap();
        Cgroup(dir)
    }

    fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once the target is gone; retried because the kernel lags a little.
        wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

#[test]
fn verdicts_tell_leaks_from_caches_pools_and_delayed_frees() {
    if !root_or_skip() {
        return;
    }
    const LIMIT: u64 = 256 << 20;
    let cgroup = Cgroup::with_limit(LIMIT);
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("verdicts.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "20s", "--min-age", "5s", "-o"])
        .arg(&json)
        .arg("--")
        .arg(target("scenario"))
        .arg("60")
        .arg(cgroup.procs()));
    assert!(out.status.success());
    let r = report(&json);
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    let s = |kind, f| verdict_of(&r, pid, kind, f);
    for (kind, f) in [
        ("heap", "leak_forever"),
        ("heap", "grow_buffer"),
        ("mmap", "map_forever"),
        ("fd", "leak_pipe"),
        ("socket", "leak_socketpair"),
    ] {
        assert_eq!(s(kind, f)["verdict"], "leak", "{f}: {}", s(kind, f));
    }
    for (kind, f) in [
        ("heap", "lru_put"),
        ("heap", "pool_init"),
        ("heap", "delayed_free_put"),
        ("heap", "garbage"),
        ("fd", "open_close"),
        ("fd", "open_fixed"),
    ] {
        assert_ne!(s(kind, f)["verdict"], "leak", "{f}: {}", s(kind, f));
    }
    // Handles grow by count: 2 pipe ends a second, 4 socket ends a second.
    for (kind, f, rate) in [("fd", "leak_pipe", 2.0), ("socket", "leak_socketpair", 4.0)] {
        let g = s(kind, f)["growth_count_per_s"].as_f64().unwrap();
        assert!((g - rate).abs() < 0.1 * rate, "{f}: {g}/s, not {rate}");
        assert!(
            s(kind, f)["time_to_limit_s"].as_f64().is_some(),
            "RLIMIT_NOFILE is known"
        );
    }
    assert_eq!(s("heap", "garbage")["verdict"], "transient");
    assert_eq!(s("heap", "pool_init")["verdict"], "stable");

    // Growth rates are the program's: 40 KiB/s, 10 KiB/s, 64 KiB/s (±10%).
    for (kind, f, rate) in [
        ("heap", "leak_forever", 40960.0),
        ("heap", "grow_buffer", 10240.0),
        ("mmap", "map_forever", 65536.0),
    ] {
        let g = s(kind, f)["growth_bytes_per_s"].as_f64().unwrap();
        assert!((g - rate).abs() < 0.1 * rate, "{f}: {g} B/s, not {rate}");
    }

    // Time to the cgroup's limit at each site's own rate.
    let limit = &r["targets"][0]["memory_limit"];
    assert_eq!(limit["limit_bytes"].as_u64(), Some(LIMIT), "{limit}");
    let headroom = (LIMIT - limit["used_bytes"].as_u64().unwrap()) as f64;
    let ttl = s("heap", "leak_forever")["time_to_limit_s"]
        .as_f64()
        .unwrap();
    let expected = headroom / 40960.0;
    assert!(
        (ttl - expected).abs() < 0.1 * expected,
        "{ttl} s, not {expected}"
    );
    assert!(s("heap", "pool_init")["time_to_limit_s"].is_null());

    // --min-age 5s: what is younger is left out of the outstanding numbers.
    assert_eq!(s("heap", "delayed_free_put")["outstanding_count"], 0);
    assert_eq!(s("heap", "lru_put")["outstanding_count"], 0);
    assert_eq!(s("heap", "pool_init")["outstanding_count"], 64);
    let old = s("heap", "leak_forever")["outstanding_count"]
        .as_u64()
        .unwrap();
    let duration = r["duration_s"].as_f64().unwrap();
    let want = (duration - 5.0) * 10.0;
    assert!(
        (old as f64 - want).abs() <= 15.0,
        "{old} older than 5 s, not ~{want}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("memory limit in ~"), "{text}");
}
