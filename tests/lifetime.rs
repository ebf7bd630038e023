//! A process that exits leaves nothing behind, in leaktrace or in the kernel:
//! what a node agent, which sees processes come and go for weeks, needs.
mod common;

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{leaktrace, report, root_or_skip, scratch_dir, wait_for_probe_removal};
use serde_json::Value;

/// leaktrace's resident anonymous memory, in KiB: its heap (the ring
/// buffer it shares with the kernel and the files it maps fill in as they
/// are used, and are not state).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn bpftool(args: &[&str]) -> Value {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entries of the eBPF map `name` that leaktrace `pid` holds (its
/// descriptors' fdinfo tell their map ids). Two bpftool calls: the wait for
/// the target set to empty measures leaktrace, not the looking.
fn kernel_map_entries(pid: u32, name: &str) -> usize {
    let ids = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap();
    let held: Vec<u64> = ids
        .flatten()
        .filter_map(|e| {
            let info = std::fs::read_to_string(e.path()).ok()?;
            let id = info.lines().find_map(|l| l.strip_prefix("map_id:"))?;
            id.trim().parse().ok()
        })
        .collect();
    let maps = bpftool(&["map", "show"]);
    let id = maps
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name && held.contains(&m["id"].as_u64().unwrap_or(0)))
        .unwrap_or_else(|| panic!("leaktrace holds no map {name}"))["id"]
        .to_string();
    bpftool(&["map", "dump", "id", &id])
        .as_array()
        .unwrap()
        .len()
}

/// Waits for `file` to appear (the command's phase is over), then until
/// leaktrace has caught up: the kernel's target set holds the shell and its
/// `sleep` alone. Returns how long that took.
fn after(file: &Path, pid: u32) -> Duration {
    let started = Instant::now();
    while !file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{} never came",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended = Instant::now();
    while kernel_map_entries(pid, "TARGETS") > 2 {
        assert!(
            ended.elapsed() < Duration::from_secs(60),
            "the kernel's target set still holds {} processes",
            kernel_map_entries(pid, "TARGETS")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And its once-a-second check of which processes exited has run.
    std::thread::sleep(Duration::from_millis(1500));
    ended.elapsed()
}

#[test]
fn five_thousand_short_processes_leave_no_state_behind() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("lifetime");
    let json = dir.join("report.json");
    // 3,000 processes to warm every cache (the symbols of the `sleep`s,
    // followed, load the C library's debug information), then 2,000 more;
    // each phase ends with a file and a pause in which the shell alone runs.
    let script = format!(
        "run() {{ i=0; while [ $i -lt $1 ]; do /bin/true; i=$((i+1)); done; }}; \
         run 1000; sleep 2; run 2000; touch {d}/one; sleep 10; run 2000; touch {d}/two; sleep 15",
        d = dir.display()
    );
    let mut tracer = leaktrace()
        .args(["-q", "--no-heap", "-d", "300s", "-o"])
        .arg(&json)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = tracer.id();
    // Freed memory goes back to the system once a second at most, after
    // exits (malloc_trim): 2 s of samples, the most before and the least
    // after. State kept per process stays in every sample.
    let samples = |pid| {
        (0..10).map(move |_| {
            std::thread::sleep(Duration::from_millis(200));
            rss_kib(pid)
        })
    };
    after(&dir.join("one"), pid);
    let warm = samples(pid).max().unwrap();
    let lag = after(&dir.join("two"), pid);
    let after_5000 = samples(pid).min().unwrap();
    let targets = kernel_map_entries(pid, "TARGETS");
    let sites = kernel_map_entries(pid, "SITES");
    let status = tracer.wait().unwrap();
    wait_for_probe_removal();
    assert!(status.success());
    eprintln!(
        "leaktrace's heap: {warm} KiB after 3,000 processes, {after_5000} KiB after 5,000; \
         caught up {lag:.1?} after the last"
    );
    assert_eq!(
        targets, 2,
        "the kernel's target set: the shell and its sleep"
    );
    assert_eq!(sites, 0, "no heap traced: no kernel site");
    // 2,000 processes more: the state of each would be ≥ 2 KiB (its
    // descriptor and mapping tables, memory map, sites, target record).
    assert!(
        after_5000 <= warm + 2 * 1024,
        "leaktrace grew by {} KiB over 2,000 exited processes",
        after_5000.saturating_sub(warm)
    );
    let r = report(&json);
    let listed = r["targets"].as_array().unwrap().len() as u64;
    let unlisted = r["targets_unlisted"].as_u64().unwrap_or(0);
    // The shell and each of its children (5,000 trues, 3 sleeps, 2
    // touches), listed or counted.
    assert_eq!(listed + unlisted, 5006, "{listed} listed, {unlisted} not");
    assert!(listed <= 300, "{listed} exited processes listed");
    let children_sites = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] != r["targets"][0]["pid"])
        .count();
    assert_eq!(children_sites, 0, "exited children left sites");
}
