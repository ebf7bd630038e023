//! Threads alive per site: a C service whose detached workers never end, a
//! Go program whose locked goroutines each keep an OS thread, and the threads
//! a process already had when leaktrace attached.
mod common;

use std::time::Duration;

use common::{go::go_target, leaktrace, prod, report, root_or_skip, run, scratch_dir, wait_until};
use serde_json::Value;

/// The thread sites of `pid`.
fn thread_sites(r: &Value, pid: u64) -> Vec<&Value> {
    r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "thread" && s["pid"] == pid)
        .collect()
}

/// The thread site whose stack goes through `function`.
fn made_in<'a>(sites: &[&'a Value], function: &str) -> &'a Value {
    sites
        .iter()
        .find(|s| prod::functions(s).contains(&Some(function)))
        .unwrap_or_else(|| panic!("no thread site through {function}: {sites:?}"))
}

fn threads_c() -> std::path::PathBuf {
    prod::cc_build(
        "gcc",
        "threads.c",
        &["-O2", "-g", "-pthread"],
        &[],
        "threads-O2",
    )
}

#[test]
fn detached_threads_that_never_end_are_counted_at_the_site_that_made_them() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("threads-c");
    let (r, pid) = prod::trace_command(&dir, &threads_c(), &["20", "4", "300"]);
    let sites = thread_sites(&r, pid);
    let jobs = made_in(&sites, "start_job");
    assert_eq!(jobs["outstanding_count"], 20, "{jobs}");
    assert_eq!(jobs["total_count"], 20);
    let pool = made_in(&sites, "run_pool");
    assert_eq!(pool["outstanding_count"], 0, "joined: {pool}");
    assert_eq!(pool["total_count"], 80);
    assert_eq!(r["totals"]["threads"], 20);
}

#[test]
fn go_threads_kept_by_locked_goroutines_are_counted() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("threads-go");
    let (r, pid) = prod::trace_command(&dir, &go_target("threads"), &["12", "30", "20ms"]);
    let alive: u64 = thread_sites(&r, pid)
        .iter()
        .map(|s| s["outstanding_count"].as_u64().unwrap())
        .sum();
    // One per locked goroutine, and the runtime's own few (sysmon, an M per P).
    assert!((12..=12 + 8).contains(&alive), "{alive} threads alive");
    let frames = thread_sites(&r, pid)
        .iter()
        .flat_map(|s| prod::functions(s))
        .flatten()
        .any(|f| f == "runtime.newm");
    assert!(frames, "the runtime makes its threads in newm");
}

#[test]
fn threads_alive_at_attach_are_under_one_site() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("threads-pid");
    let mut target = std::process::Command::new(threads_c())
        .args(["10", "0", "20000"])
        .spawn()
        .unwrap();
    let pid = target.id();
    let tasks = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    assert!(wait_until(Duration::from_secs(10), || tasks() == 11));
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "1s", "--pid", &pid.to_string(), "-o"])
        .arg(&json));
    let _ = target.kill();
    let _ = target.wait();
    assert!(out.status.success());
    let r = report(&json);
    let sites = thread_sites(&r, u64::from(pid));
    let before = sites
        .iter()
        .find(|s| s["frames"][0]["function"] == "[started before attach]")
        .expect("a site of the threads alive at attach");
    assert_eq!(
        before["outstanding_count"], 10,
        "the 10 workers, not the first thread"
    );
}
