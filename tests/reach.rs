//! Reachability of the heap (docs/reachability.md): the scan at exit against
//! LeakSanitizer on the same sources, the --fail-on gate, and scans of a
//! running process that mutates its heap under them.
mod common;

use std::{collections::BTreeMap, ffi::OsStr, path::Path, process::Command};

use common::{go::go_target, leaktrace, prod, report, run, scratch_dir};
use serde_json::Value;

/// (unreachable or direct, indirect, reachable) blocks.
type Classes = (u64, u64, u64);

/// LeakSanitizer's report of `exe ARGS`, a build with -fsanitize=leak: per
/// function of `ours` (the first of them on a leak's stack), its direct and
/// indirect leaks (LSan does not list reachable blocks).
fn lsan(exe: &Path, args: &[&str], ours: &[&str]) -> BTreeMap<String, Classes> {
    let out = Command::new(exe)
        .args(args)
        .output()
        .expect("run the LSan build");
    let text = String::from_utf8_lossy(&out.stderr);
    eprintln!("LeakSanitizer:\n{text}");
    let mut found: BTreeMap<String, Classes> = BTreeMap::new();
    // (direct, objects) of the leak whose frames are being read, until one
    // of ours is found among them.
    let mut leak: Option<(bool, u64)> = None;
    for line in text.lines() {
        let header = line
            .strip_prefix("Direct leak of ")
            .map(|r| (true, r))
            .or_else(|| line.strip_prefix("Indirect leak of ").map(|r| (false, r)));
        if let Some((direct, rest)) = header {
            let objects = rest
                .split(" in ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect("N byte(s) in M object(s)");
            leak = Some((direct, objects));
            continue;
        }
        let Some((direct, objects)) = leak else {
            continue;
        };
        let named = |name: &&&str| {
            [" ", "(", "["].iter().any(|end| {
                line.contains(&format!(" in {name}{end}"))
                    || line.contains(&format!("::{name}{end}"))
            })
        };
        if let Some(name) = ours.iter().find(named) {
            let c = found.entry(name.to_string()).or_default();
            if direct {
                c.0 += objects;
            } else {
                c.1 += objects;
            }
            leak = None;
        }
    }
    found
}

/// leaktrace's latest scan (at exit, or while running) of the process `pid`
/// in `r`: per function of `ours` (the first of them on a site's stack), its
/// blocks by class.
fn scanned(r: &Value, pid: u64, ours: &[&str], at_exit: bool) -> BTreeMap<String, Classes> {
    let mut found: BTreeMap<String, Classes> = BTreeMap::new();
    for site in prod::sites(r, pid, "heap") {
        let reach = &site["reachability"];
        if site["outstanding_count"] == 0 {
            continue;
        }
        if !reach.is_object() {
            // Only allocations made since the last running scan are unscanned.
            assert!(!at_exit, "a heap site unscanned:\n{}", prod::stack(site));
            continue;
        }
        assert_eq!(reach["at_exit"], at_exit);
        let ours = prod::functions(site).into_iter().flatten().find_map(|f| {
            ours.iter().find(|name| {
                f == **name
                    || f.ends_with(&format!("::{name}"))
                    || f.starts_with(&format!("{name}["))
            })
        });
        let Some(name) = ours else { continue };
        let c = found.entry(name.to_string()).or_default();
        let n = |k: &str| reach[k].as_u64().unwrap();
        c.0 += n("unreachable_count");
        c.1 += n("indirect_count");
        c.2 += n("reachable_count");
    }
    found
}

/// Builds tests/targets/prod/SOURCE plainly (`-O2 -g`) and with
/// -fsanitize=leak, traces the first to its end with leaktrace's default exit
/// scan and runs the second: their classes per function of `ours` agree, and
/// leaktrace's reachable blocks are `reachable`.
fn agrees_with_lsan(source: &str, args: &[&str], ours: &[&str], reachable: &[(&str, u64)]) {
    let exe = prod::cc_target(source, "-O2");
    let compiler = if source.ends_with(".cpp") {
        "g++"
    } else {
        "gcc"
    };
    let lsan_exe = prod::cc_build(
        compiler,
        source,
        &["-O2", "-g", "-fsanitize=leak"],
        &[],
        &format!("{}-lsan", source.replace('.', "-")),
    );
    let (exe, lsan_exe) = (exe.as_path(), lsan_exe.as_path());
    let dir = scratch_dir(&format!(
        "reach-{}",
        exe.file_name().unwrap().to_string_lossy()
    ));
    let (r, pid) = prod::trace_command(&dir, exe, args);
    assert_eq!(r["scans"]["at_exit"], 1, "{}", r["scans"]);
    let ours_found = scanned(&r, pid, ours, true);
    let lsan_found = lsan(lsan_exe, args, ours);
    assert!(
        !lsan_found.is_empty(),
        "LeakSanitizer found no leak of ours"
    );
    for (name, &(direct, indirect, _)) in &lsan_found {
        let (unreachable, ind, _) = ours_found.get(name).copied().unwrap_or_default();
        assert_eq!(
            (unreachable, ind),
            (direct, indirect),
            "{name}: leaktrace (unreachable, indirect) against LeakSanitizer (direct, indirect)"
        );
    }
    for (name, classes) in &ours_found {
        if !lsan_found.contains_key(name) {
            assert_eq!(
                (classes.0, classes.1),
                (0, 0),
                "{name}: lost for leaktrace, not for LeakSanitizer"
            );
        }
    }
    for (name, want) in reachable {
        assert_eq!(
            ours_found.get(*name).map(|c| c.2),
            Some(*want),
            "{name}: reachable blocks"
        );
    }
    // A site with lost blocks is a leak, however short the trace.
    for site in prod::sites(&r, pid, "heap") {
        let n = |k: &str| site["reachability"][k].as_u64().unwrap_or(0);
        let lost = n("unreachable_count") + n("indirect_count");
        if lost > 0 {
            assert_eq!(site["verdict"], "leak", "{}", prod::stack(site));
        }
    }
}

const C_FUNCTIONS: [&str; 7] = [
    "lost_block",
    "list_node",
    "cycle_node",
    "cached_block",
    "interior_block",
    "tls_block",
    "stack_block",
];

#[test]
fn c_blocks_are_classified_as_leak_sanitizer_classifies_them() {
    if !common::root_or_skip() {
        return;
    }
    agrees_with_lsan(
        "reach.c",
        &["leaks"],
        &C_FUNCTIONS,
        &[
            ("cached_block", 4),
            ("interior_block", 1),
            ("tls_block", 2),
            ("stack_block", 1),
        ],
    );
}

#[test]
fn cpp_blocks_are_classified_as_leak_sanitizer_classifies_them() {
    if !common::root_or_skip() {
        return;
    }
    // The global vector and map are destroyed before exit: what they held is
    // lost then, for both.
    agrees_with_lsan(
        "reach.cpp",
        &[],
        &[
            "make_session",
            "make_buffer",
            "make_node",
            "make_name",
            "make_entry",
            "_M_construct",
        ],
        &[],
    );
}

/// `leaktrace -q OPTIONS -o report.json -- COMMAND…` in a scratch directory
/// `name`: its exit status, stderr and report.
fn trace(name: &str, options: &[&str], command: &[&OsStr]) -> (i32, String, Value) {
    let dir = scratch_dir(name);
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .current_dir(&dir)
        .arg("-q")
        .args(options)
        .arg("-o")
        .arg(&json)
        .arg("--")
        .args(command));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().expect("an exit status"),
        stderr,
        report(&json),
    )
}

/// `exe ARGS` as a command for [`trace`].
fn command<'a>(exe: &'a Path, args: &'a [&'a str]) -> Vec<&'a OsStr> {
    std::iter::once(exe.as_os_str())
        .chain(args.iter().map(OsStr::new))
        .collect()
}

/// leaktrace --fail-on WHAT -- EXE ARGS: its exit status, stderr and report.
fn gate(what: &str, exe: &Path, args: &[&str]) -> (i32, String, Value) {
    trace(
        "reach-gate",
        &["-d", "60s", "--fail-on", what],
        &command(exe, args),
    )
}

#[test]
fn the_gate_fails_a_leaking_run_with_status_3_and_passes_a_clean_one() {
    if !common::root_or_skip() {
        return;
    }
    let exe = prod::cc_target("reach.c", "-O2");
    let (status, stderr, r) = gate("unreachable", &exe, &["leaks", "7"]);
    assert_eq!(status, 3, "{stderr}");
    assert_eq!(
        r["targets"][0]["exit_code"], 7,
        "the target's own code is kept"
    );
    for lost in ["lost_block", "list_node", "cycle_node"] {
        assert!(stderr.contains(lost), "{lost} not listed: {stderr}");
    }
    for kept in ["cached_block", "interior_block", "stack_block", "tls_block"] {
        assert!(!stderr.contains(kept), "{kept} listed: {stderr}");
    }
    let (status, stderr, r) = gate("unreachable", &exe, &["clean", "5"]);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(r["targets"][0]["exit_code"], 5);
    // `leak`: every site with verdict leak, the lost ones among them.
    let (status, stderr, _) = gate("leak", &exe, &["leaks"]);
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains("lost_block"), "{stderr}");
}

#[test]
fn the_gate_fails_a_go_program_on_goroutines_alive_and_files_open_at_exit() {
    if !common::root_or_skip() {
        return;
    }
    let exe = go_target("gate");
    let (status, stderr, _) = gate("unreachable", &exe, &["leak"]);
    assert_eq!(status, 3, "{stderr}");
    assert!(stderr.contains("goroutine"), "{stderr}");
    assert!(stderr.contains("main.main"), "{stderr}");
    assert!(stderr.contains("leaktrace-gate"), "the open file: {stderr}");
    let (status, stderr, _) = gate("unreachable", &exe, &["clean"]);
    assert_eq!(status, 0, "{stderr}");
}

/// The sites of process `pid` with blocks lost in the latest scan.
fn lost_sites(r: &Value, pid: u64) -> Vec<&Value> {
    prod::sites(r, pid, "heap")
        .into_iter()
        .filter(|s| {
            let n = |k: &str| s["reachability"][k].as_u64().unwrap_or(0);
            n("unreachable_count") + n("indirect_count") > 0
        })
        .collect()
}

#[test]
fn running_scans_of_a_heap_mutated_under_them_call_nothing_lost() {
    if !common::root_or_skip() {
        return;
    }
    let exe = prod::cc_target("reach.c", "-O2");
    let (status, stderr, r) = trace(
        "reach-churn",
        &["--scan-every", "50ms"],
        &command(&exe, &["churn", "10"]),
    );
    assert_eq!(status, 0, "{stderr}");
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    assert!(
        r["scans"]["running"].as_u64().unwrap() >= 100,
        "{}",
        r["scans"]
    );
    assert_eq!(r["scans"]["failed"], 0, "{}", r["scans"]);
    let lost = lost_sites(&r, pid);
    assert!(lost.is_empty(), "called lost:\n{}", prod::stacks(&lost));
}

#[test]
fn running_scans_find_lost_blocks_before_exit() {
    if !common::root_or_skip() {
        return;
    }
    let exe = prod::cc_target("reach.c", "-O2");
    // Without the exit scan: what is found is the running scans'.
    let (status, stderr, r) = trace(
        "reach-hold",
        &["--no-exit-scan", "--scan-every", "500ms"],
        &command(&exe, &["hold", "4"]),
    );
    assert_eq!(status, 0, "{stderr}");
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    assert_eq!(r["scans"]["at_exit"], 0);
    let found = scanned(&r, pid, &C_FUNCTIONS, false);
    let lost = |f: &str| found.get(f).map(|c| (c.0, c.1));
    assert_eq!(lost("lost_block"), Some((5, 0)));
    assert_eq!(lost("list_node"), Some((1, 3)));
    assert_eq!(lost("cycle_node"), Some((0, 2)));
    for kept in ["cached_block", "interior_block", "tls_block", "stack_block"] {
        assert_eq!(lost(kept), Some((0, 0)), "{kept}");
    }
    for site in lost_sites(&r, pid) {
        assert_eq!(site["verdict"], "leak", "{}", prod::stack(site));
    }
}

#[test]
fn a_process_with_nothing_outstanding_is_not_stopped_at_exit() {
    if !common::root_or_skip() {
        return;
    }
    // dash holds heap blocks when it exits; /bin/true (no arguments) none.
    let sh = Path::new("sh");
    let (status, stderr, r) = trace(
        "reach-nothing",
        &[],
        &command(sh, &["-c", "/bin/true; /bin/true; echo"]),
    );
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(
        r["targets"].as_array().unwrap().len(),
        3,
        "sh and two trues"
    );
    assert_eq!(r["scans"]["at_exit"], 1, "only sh: {}", r["scans"]);
}
