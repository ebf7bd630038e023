//! Exports: pprof profiles read by the real `go tool pprof`, flamegraphs,
//! folded stacks, snapshots (run as root).
mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    c::target,
    leaktrace,
    profiles::{decode, pprof},
    report, root_or_skip, run, wait_until,
};

#[test]
fn exports_read_in_go_tool_pprof_flamegraphs_and_folded_stacks() {
    if !root_or_skip() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("export");
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| dir.join(name);
    let out = run(leaktrace()
        .arg("-q")
        .args(["-o".as_ref(), file("heap.pb.gz").as_os_str()])
        .args(["-o".as_ref(), file("heap.svg").as_os_str()])
        .args(["-o".as_ref(), file("heap.folded").as_os_str()])
        .args(["-o".as_ref(), file("heap.json").as_os_str()])
        .arg("--")
        .arg(target("heap")));
    assert!(out.status.success());
    let r = report(&file("heap.json"));
    let profile = file("heap.pb.gz");

    // The real go tool pprof: exact bytes per function, file:line in traces.
    let top = pprof(&["-top", "-unit=B", "-sample_index=inuse_space"], &profile);
    for (function, bytes) in [
        ("leak_malloc", 10_000),
        ("leak_calloc", 5_000),
        ("leak_realloc", 8_192),
        ("leak_posix_memalign", 6_144),
    ] {
        assert!(
            top.lines()
                .any(|l| l.ends_with(function) && l.trim_start().starts_with(&format!("{bytes}B"))),
            "{function} {bytes}B not in:\n{top}"
        );
    }
    let traces = pprof(&["-traces", "-lines"], &profile);
    assert!(
        traces.contains("leak_malloc ") && traces.contains("heap.c:"),
        "{traces}"
    );
    let objects = pprof(&["-top", "-sample_index=inuse_objects"], &profile);
    assert!(objects.contains("leak_malloc"), "{objects}");

    // Round trip: every id and string index resolves; Go's heap-profile shape.
    let p = decode(&profile);
    assert_eq!(leaktrace::pprof::check(&p), Vec::<String>::new());
    let s = |i: i64| p.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, leaktrace::pprof::SAMPLE_TYPES);
    assert_eq!(s(p.default_sample_type), "inuse_space");
    assert_eq!(
        s(p.mapping[0].filename),
        r["targets"][0]["exe"].as_str().unwrap()
    );
    assert!(
        !s(p.mapping[0].build_id).is_empty(),
        "gcc writes a build id"
    );

    // SVG: well-formed, names the leaking function.
    let svg = std::fs::read_to_string(file("heap.svg")).unwrap();
    let xml = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(&svg, xml).expect("well-formed SVG");
    assert!(svg.contains("leak_malloc"));

    // Folded stacks sum to the outstanding bytes.
    let folded = std::fs::read_to_string(file("heap.folded")).unwrap();
    let sum: u64 = folded
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    let totals = &r["totals"];
    assert_eq!(
        sum,
        totals["heap_bytes"].as_u64().unwrap() + totals["mmap_bytes"].as_u64().unwrap()
    );
    assert!(
        folded
            .lines()
            .any(|l| l.ends_with(";main;leak_malloc 10000")),
        "{folded}"
    );
}

#[test]
fn snapshots_show_growth_and_sigterm_still_writes_the_profile() {
    if !root_or_skip() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("snapshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("leaks.pb.gz");
    let mut tracer = leaktrace()
        .args(["-q", "--snapshot-every", "1s", "-o"])
        .arg(&profile)
        .arg("--")
        .arg(target("scenario"))
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Loading and attaching takes about a second; then a snapshot a second.
    // Each is written through a rename: there once complete.
    let third = dir.join("leaks.0003.pb.gz");
    if !wait_until(Duration::from_secs(30), || third.exists()) {
        let _ = tracer.kill();
        let _ = tracer.wait();
        panic!("no third snapshot after 30 s");
    }
    let kill = Command::new("kill")
        .args(["-TERM", &tracer.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(
        tracer.wait().unwrap().success(),
        "SIGTERM ends a trace normally"
    );
    for n in 1..=3 {
        let snap = dir.join(format!("leaks.{n:04}.pb.gz"));
        assert_eq!(
            leaktrace::pprof::check(&decode(&snap)),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        leaktrace::pprof::check(&decode(&profile)),
        Vec::<String>::new()
    );
    // Growth between snapshots: 2 s of leak_forever at 40 KiB/s.
    let diff = pprof(
        &[
            "-top",
            "-unit=B",
            "-base",
            dir.join("leaks.0001.pb.gz").to_str().unwrap(),
        ],
        &dir.join("leaks.0003.pb.gz"),
    );
    let grown: u64 = diff
        .lines()
        .find(|l| l.ends_with(" leak_forever"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.trim_end_matches('B').parse().ok())
        .unwrap_or_else(|| panic!("no leak_forever growth in:\n{diff}"));
    assert!(
        (61_440..=102_400).contains(&grown),
        "{grown} B in 2 s:\n{diff}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
