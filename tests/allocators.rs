//! Every allocator a production binary uses, found and probed: real probes on
//! programs built the way they ship, linked against or preloading the
//! allocators Debian ships, and Rust's two most used global allocators from
//! crates.io. Run as root; the targets are in tests/targets/prod/.
mod common;

use std::path::Path;

use common::{
    leaktrace,
    prod::{
        cargo_release, cc_build, sites_through, stack, stacks, trace_command, trace_command_with,
    },
    root_or_skip, run, scratch_dir,
};
use serde_json::Value;

const LIB: &str = "/usr/lib/x86_64-linux-gnu";

/// The allocators the report names for its only target: (name, file).
fn allocators(r: &Value) -> Vec<(String, String)> {
    r["targets"][0]["allocators"]
        .as_array()
        .expect("allocators listed")
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["file"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The one heap site through `function`.
fn site<'a>(r: &'a Value, pid: u64, function: &str) -> &'a Value {
    let found = sites_through(r, pid, "heap", function);
    assert_eq!(
        found.len(),
        1,
        "one heap site through {function}:\n{}",
        stacks(&found)
    );
    found[0]
}

/// tests/targets/prod/churn.c, as `name` and its allocator `family`, traced
/// for `ROUNDS` rounds: the leak is exact, and every block churned was seen
/// given back (every free passed its probe).
fn assert_churn(exe: &Path, preload: Option<&str>, family: &str, file_has: &str) {
    const ROUNDS: u64 = 40;
    const KEEP: u64 = 3000;
    const CHURN: u64 = 50;
    let dir = scratch_dir(&format!(
        "allocators-{}",
        exe.file_name().unwrap().to_string_lossy()
    ));
    let env: Vec<(&str, &str)> = preload.map(|lib| ("LD_PRELOAD", lib)).into_iter().collect();
    let (r, pid, _) = trace_command_with(&dir, exe, &[&ROUNDS.to_string()], &env);
    let probed = allocators(&r);
    assert!(
        probed
            .iter()
            .any(|(name, file)| name == family && file.contains(file_has)),
        "{family} in a file named *{file_has}* probed: {probed:?}"
    );
    for (cause, n) in r["lost"].as_object().unwrap() {
        assert_eq!(n, 0, "lost: {cause}");
    }
    let kept = site(&r, pid, "keep_block");
    assert_eq!(kept["outstanding_bytes"], ROUNDS * KEEP, "{}", stack(kept));
    assert_eq!(kept["outstanding_count"], ROUNDS, "{}", stack(kept));
    // malloc, calloc and realloc in churn: all given back, none missed.
    let churned = sites_through(&r, pid, "heap", "churn");
    let made: u64 = churned
        .iter()
        .map(|s| s["total_count"].as_u64().unwrap())
        .sum();
    assert_eq!(made, 3 * ROUNDS * CHURN, "{}", stacks(&churned));
    for s in &churned {
        assert_eq!(s["outstanding_count"], 0, "{}", stack(s));
    }
}

#[test]
fn c_programs_on_each_c_allocator_have_exact_leaks_and_every_free_seen() {
    if !root_or_skip() {
        return;
    }
    let o2 = ["-O2", "-g"];
    let glibc = cc_build("gcc", "churn.c", &o2, &[], "churn-glibc");
    assert_churn(&glibc, None, "glibc", "libc.so.6");
    let jemalloc = format!("{LIB}/libjemalloc.so.2");
    let exe = cc_build("gcc", "churn.c", &o2, &[&jemalloc], "churn-jemalloc");
    assert_churn(&exe, None, "jemalloc", "libjemalloc.so.2");
    let tcmalloc = format!("{LIB}/libtcmalloc_minimal.so.4");
    assert_churn(&glibc, Some(&tcmalloc), "tcmalloc", "libtcmalloc_minimal");
    // mimalloc's own API (and its override of the plain names).
    let mimalloc = format!("{LIB}/libmimalloc.so.2");
    let exe = cc_build(
        "gcc",
        "churn.c",
        &["-O2", "-g", "-DMIMALLOC_API"],
        &[&mimalloc],
        "churn-mimalloc",
    );
    assert_churn(&exe, None, "mimalloc", "libmimalloc.so.2");
    let exe = cc_build("musl-gcc", "churn.c", &o2, &[], "churn-musl");
    assert_churn(&exe, None, "musl", "musl");
    let exe = cc_build(
        "musl-gcc",
        "churn.c",
        &["-O2", "-g", "-static"],
        &[],
        "churn-musl-static",
    );
    assert_churn(&exe, None, "musl", "churn-musl-static");
}

#[test]
fn rust_global_allocators_jemalloc_and_mimalloc_have_exact_leaks_and_leak_verdicts() {
    if !root_or_skip() {
        return;
    }
    const ROUNDS: u64 = 100;
    const ROW: u64 = 4096;
    let release = cargo_release("rust-global-alloc");
    for (bin, family) in [("jemalloc", "jemalloc"), ("mimalloc", "mimalloc")] {
        let dir = scratch_dir(&format!("allocators-rust-{bin}"));
        let exe = release.join(bin);
        // 100 rounds 100 ms apart: 10 s, enough for a verdict.
        let (r, pid) = trace_command(&dir, &exe, &[&ROUNDS.to_string(), &ROW.to_string(), "100"]);
        let probed = allocators(&r);
        assert!(
            probed
                .iter()
                .any(|(name, file)| name == family && file.ends_with(bin)),
            "{family} in the executable probed: {probed:?}"
        );
        let kept = site(&r, pid, "rust_global_alloc::keep_row");
        // Requested sizes: 4096 is one of both allocators' size classes.
        assert_eq!(kept["outstanding_bytes"], ROUNDS * ROW, "{}", stack(kept));
        assert_eq!(kept["outstanding_count"], ROUNDS, "{}", stack(kept));
        assert_eq!(kept["verdict"], "leak", "{}", stack(kept));
        let scratch = site(&r, pid, "rust_global_alloc::scratch_row");
        assert_eq!(scratch["outstanding_count"], 0, "{}", stack(scratch));
        assert_eq!(scratch["total_count"], ROUNDS, "{}", stack(scratch));
    }
}

#[test]
fn a_command_whose_allocator_cannot_be_probed_never_runs() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("allocators-unprobed");
    // Statically linked and stripped: its malloc has no symbol to probe.
    let exe = dir.join("touch-static");
    std::fs::write(
        dir.join("touch.c"),
        "#include <stdio.h>\nint main(void) { return fopen(\"ran\", \"w\") == 0; }\n",
    )
    .unwrap();
    let status = std::process::Command::new("gcc")
        .args(["-O2", "-static", "-s", "-o"])
        .arg(&exe)
        .arg(dir.join("touch.c"))
        .status()
        .expect("gcc");
    assert!(status.success());
    let out = run(leaktrace().current_dir(&dir).arg("--").arg(&exe));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no allocator leaktrace knows"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    // Time the command would have had to run: nothing to poll for.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!dir.join("ran").exists(), "the command ran untraced");
}

#[test]
fn an_allocator_loaded_later_with_dlopen_is_probed() {
    if !root_or_skip() {
        return;
    }
    const ROUNDS: u64 = 50;
    let exe = cc_build("gcc", "late_alloc.c", &["-O2", "-g"], &[], "late-alloc");
    let dir = scratch_dir("allocators-late");
    let mimalloc = format!("{LIB}/libmimalloc.so.2");
    let (r, pid) = trace_command(&dir, &exe, &[&mimalloc, &ROUNDS.to_string()]);
    let probed = allocators(&r);
    assert!(
        probed
            .iter()
            .any(|(name, file)| name == "mimalloc" && file.contains("libmimalloc")),
        "mimalloc probed once loaded: {probed:?}"
    );
    let kept = site(&r, pid, "keep_late");
    assert_eq!(kept["outstanding_bytes"], ROUNDS * 700, "{}", stack(kept));
    let churned = site(&r, pid, "churn_late");
    assert_eq!(churned["total_count"], ROUNDS, "{}", stack(churned));
    assert_eq!(churned["outstanding_count"], 0, "{}", stack(churned));
}

#[test]
fn a_malloc_probed_single_stepped_is_said_with_its_measured_cost() {
    if !root_or_skip() {
        return;
    }
    const ROUNDS: u64 = 30;
    let exe = cc_build("gcc", "own_malloc.c", &["-O2", "-g"], &[], "own-malloc");
    let dir = scratch_dir("allocators-stepped");
    let (r, pid, stderr) = trace_command_with(&dir, &exe, &[&ROUNDS.to_string()], &[]);
    let warning: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("single-stepped"))
        .collect();
    assert_eq!(warning.len(), 1, "said once: {stderr}");
    assert!(
        warning[0].contains("malloc") && warning[0].contains("µs per call here"),
        "{stderr}"
    );
    let own = &r["targets"][0]["allocators"][0];
    assert_eq!(own["name"], "malloc", "{own}");
    assert!(
        own["single_stepped"]
            .as_array()
            .unwrap()
            .contains(&Value::from("malloc")),
        "{own}"
    );
    let kept = site(&r, pid, "keep_own");
    assert_eq!(kept["outstanding_bytes"], ROUNDS * 200, "{}", stack(kept));
}
