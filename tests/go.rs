//! Go programs: the Go heap and goroutines per call site against the
//! runtime's own heap profile, with the newest and the oldest Go supported,
//! plain and stripped PIE; attach to a running Go process; its sockets and
//! files. Real probes on tests/targets/go/ (run as root).
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    fd_links,
    go::{GO_NEWEST, GO_OLDEST, go_build, go_target},
    leaktrace, prod,
    profiles::{decode, pprof},
    report, root_or_skip, run, scratch_dir,
    sites::{details, site, verdict_of},
    wait_until,
};
use serde_json::Value;

#[test]
fn go_sockets_of_unclosed_response_bodies_and_unclosed_files() {
    use std::io::BufRead;
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("gofds");
    let mut t = Command::new(go_target("fds"))
        .arg(&dir)
        .arg("1500ms")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Its listener open: the runtime is up and main runs, 1.5 s before the
    // first request.
    assert!(
        wait_until(Duration::from_secs(10), || fd_links(t.id())
            .iter()
            .any(|l| l.starts_with("socket:"))),
        "the target never listened"
    );
    let pid = t.id() as u64;
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "3500ms", "--pid", &pid.to_string(), "-o"])
        .arg(&json));
    assert!(out.status.success());
    let mut ready = String::new();
    std::io::BufReader::new(t.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let server = ready
        .trim()
        .strip_prefix("ready ")
        .expect("target ready")
        .to_string();
    t.kill().unwrap();
    let _ = t.wait();
    let r = report(&json);

    // Each request's connection: six sockets to the server, from the dialer the
    // Transport runs for the request, on a goroutine it created for the
    // function that made the request.
    let dial = site(&r, pid, "socket", "net/http.(*Transport).dialConn").expect("client sockets");
    assert_eq!(dial["outstanding_count"], 6, "{dial}");
    let functions: Vec<&str> = dial["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    let created = functions
        .iter()
        .position(|&f| f == "[goroutine created by]")
        .expect("the dialing goroutine's creation");
    assert!(
        functions[created..].contains(&"main.fetchWithoutClose"),
        "{functions:?}"
    );
    // Each kept connection also keeps its read and write loop goroutines.
    let loops: u64 = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["kind"] == "goroutine"
                && s["frames"][0]["function"] == "net/http.(*Transport).dialConn"
        })
        .map(|s| s["outstanding_count"].as_u64().unwrap())
        .sum();
    assert_eq!(loops, 12, "read and write loops of six connections");
    let peers = details(dial);
    assert_eq!(
        peers.iter().map(|p| p.2).sum::<u64>(),
        5,
        "top five details"
    );
    assert!(
        peers
            .iter()
            .all(|p| p.1.ends_with(&format!(" -> {server}"))),
        "{peers:?} not to {server}"
    );
    // os.Open without Close: attributed to the Go function, with its path.
    let open = site(&r, pid, "fd", "main.openWithoutClose").expect("file site");
    assert_eq!(open["outstanding_count"], 4);
    assert_eq!(
        details(open),
        [("file".into(), format!("{}/data.txt", dir.display()), 4)]
    );
}

/// The Go heap in use per function of a Go heap profile, as `go tool pprof
/// -top -inuse_space` adds it up (flat: the sample's innermost function).
fn runtime_inuse(profile: &Path, function: &str) -> i64 {
    let p = decode(profile);
    let index = p
        .sample_type
        .iter()
        .position(|t| p.string_table[t.r#type as usize] == "inuse_space")
        .expect("inuse_space");
    let name_of_location = |id: u64| {
        let loc = p.location.iter().find(|l| l.id == id).unwrap();
        let line = loc.line.first().unwrap();
        let f = p
            .function
            .iter()
            .find(|f| f.id == line.function_id)
            .unwrap();
        p.string_table[f.name as usize].clone()
    };
    p.sample
        .iter()
        .filter(|s| name_of_location(s.location_id[0]) == function)
        .map(|s| s.value[index])
        .sum()
}

/// Go heap bytes leaktrace reports at sites whose innermost frame is `function`.
fn go_heap_at(report: &Value, function: &str) -> u64 {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "go_heap" && s["frames"][0]["function"] == function)
        .map(|s| s["outstanding_bytes"].as_u64().unwrap())
        .sum()
}

/// Traces tests/targets/go/leaks.go built with Go `version` from its start to its
/// exit and checks what it leaks against its own counts and its own heap profile.
/// Returns the report and the folder holding it and leaktrace's `leaks.pb.gz`.
fn go_leaks(version: &str, stripped_pie: bool, rounds: u64, interval: &str) -> (Value, PathBuf) {
    let flavour = if stripped_pie { "-stripped-pie" } else { "" };
    let dir = scratch_dir(&format!("goleaks{version}{flavour}"));
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args(["-q", "-n", "100", "-o"])
        .arg(&json)
        .arg("-o")
        .arg(dir.join("leaks.pb.gz"))
        .arg("--")
        .arg(go_build("leaks", version, stripped_pie))
        .arg(&dir)
        .arg(rounds.to_string())
        .arg(interval));
    assert!(out.status.success());
    let r = report(&json);
    let target = &r["targets"][0];
    let pid = target["pid"].as_u64().unwrap();
    // The target ran undisturbed to its end.
    assert_eq!(target["exit_code"], 0, "{target}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("done {rounds}")), "{text}");
    assert!(
        text.contains("go_heap") && text.contains("main.appendRecord"),
        "{text}"
    );
    assert_eq!(target["go"]["version"], format!("go{version}"));
    // The program's own rate (it writes a profile), found in a stripped
    // binary too (from the code of the runtime functions that read it).
    assert_eq!(target["go"]["mem_profile_rate"], 512 * 1024);
    assert_eq!(target["go"]["sampling_turned_on"], false);

    // Goroutines, by the function holding the `go` statement, with what they run.
    for (creator, runs, alive) in [
        ("main.blockForever", "main.blockForever.func1", rounds),
        ("main.sleepForever", "main.sleepForever.func1", rounds),
        ("main.startWorkers", "main.startWorkers.func1", 4),
    ] {
        let s = site(&r, pid, "goroutine", creator)
            .unwrap_or_else(|| panic!("no goroutine site at {creator}"));
        assert_eq!(s["frames"][0]["function"], creator, "{s}");
        assert_eq!(s["outstanding_count"], alive, "{s}");
        assert_eq!(details(s), [("goroutine".into(), runs.into(), alive)]);
    }

    // The Go heap per function agrees with the runtime's own profile.
    let profile = dir.join("heap.pprof");
    let ours = go_heap_at(&r, "main.appendRecord") as f64;
    let theirs = runtime_inuse(&profile, "main.appendRecord") as f64;
    eprintln!(
        "go{version}{flavour}: go_heap at main.appendRecord: leaktrace {ours}, runtime {theirs}"
    );
    assert!(
        theirs > 0.0 && (ours - theirs).abs() <= 0.01 * theirs,
        "go_heap at main.appendRecord: leaktrace {ours}, runtime {theirs}"
    );
    (r, dir)
}

#[test]
fn go_heap_and_goroutines_newest_go_with_verdicts() {
    if !root_or_skip() {
        return;
    }
    // Five requests a second for 12 s: long enough for verdicts.
    let (r, dir) = go_leaks(GO_NEWEST, false, 60, "200ms");
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    // go tool pprof shows the Go heap and the goroutines of leaktrace's profile.
    let profile = dir.join("leaks.pb.gz");
    let goroutines = pprof(&["-top", "-sample_index=goroutine"], &profile);
    assert!(goroutines.contains("main.blockForever"), "{goroutines}");
    let go_heap = pprof(&["-top", "-tagfocus=kind=go_heap"], &profile);
    assert!(go_heap.contains("main.appendRecord"), "{go_heap}");
    let verdict = |kind, f| verdict_of(&r, pid, kind, f)["verdict"].clone();
    for (kind, f) in [
        ("go_heap", "main.appendRecord"),
        ("goroutine", "main.blockForever"),
        ("goroutine", "main.sleepForever"),
    ] {
        assert_eq!(verdict(kind, f), "leak", "{kind} at {f}");
    }
    assert_ne!(verdict("goroutine", "main.startWorkers"), "leak");
    for f in ["main.cachePut", "main.usePool", "main.makeGarbage"] {
        let sites = r["sites"].as_array().unwrap().iter();
        for s in sites.filter(|s| s["kind"] == "go_heap" && s["frames"][0]["function"] == f) {
            assert_ne!(s["verdict"], "leak", "{s}");
        }
    }
}

#[test]
fn go_heap_and_goroutines_oldest_go() {
    if !root_or_skip() {
        return;
    }
    go_leaks(GO_OLDEST, false, 15, "100ms");
}

#[test]
fn go_heap_and_goroutines_stripped_pie_builds() {
    if !root_or_skip() {
        return;
    }
    for version in [GO_OLDEST, GO_NEWEST] {
        go_leaks(version, true, 15, "100ms");
    }
}

#[test]
fn go_heap_sampling_off_is_turned_on_and_said_unless_told_not_to() {
    if !root_or_skip() {
        return;
    }
    let unsampled = go_target("unsampled");
    let dir = scratch_dir("gounsampled");
    let trace = |extra: &[&str], json: &Path| {
        let out = run(leaktrace()
            .arg("-q")
            .args(extra)
            .arg("-o")
            .arg(json)
            .arg("--")
            .arg(&unsampled)
            .args(["30", "100ms"]));
        assert!(out.status.success());
        (
            report(json),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (off, text) = trace(&["--no-go-heap-sampling"], &dir.join("off.json"));
    assert_eq!(off["targets"][0]["go"]["mem_profile_rate"], 0);
    assert_eq!(off["targets"][0]["go"]["sampling_turned_on"], false);
    assert!(text.contains("--no-go-heap-sampling"), "{text}");
    assert_eq!(go_heap_at(&off, "main.keep"), 0);
    let (on, text) = trace(&[], &dir.join("on.json"));
    assert_eq!(on["targets"][0]["go"]["mem_profile_rate"], 64 * 1024);
    assert_eq!(on["targets"][0]["go"]["sampling_turned_on"], true);
    assert!(text.contains("turned on"), "{text}");
    assert_eq!(on["targets"][0]["exit_code"], 0);
    // Sampling starts once leaktrace has seen the runtime up: most of the 30 MiB,
    // estimated from ~480 samples of 64 KiB.
    let kept = go_heap_at(&on, "main.keep");
    assert!((15 << 20..=33 << 20).contains(&kept), "{kept}");
    // A rate of leaktrace's choosing.
    let (fine, _) = trace(&["--go-sample-rate", "16KiB"], &dir.join("fine.json"));
    assert_eq!(fine["targets"][0]["go"]["mem_profile_rate"], 16 * 1024);
}

#[test]
fn goroutines_and_go_heap_from_before_attach_are_counted() {
    if !root_or_skip() {
        return;
    }
    for version in [GO_OLDEST, GO_NEWEST] {
        goroutines_before_attach(version);
    }
}

fn goroutines_before_attach(version: &str) {
    use std::io::BufRead;
    let dir = scratch_dir(&format!("gobefore{version}"));
    let mut t = Command::new(go_build("leaks", version, false))
        .arg(&dir)
        .args(["10", "10ms", "30s"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut done = String::new();
    std::io::BufReader::new(t.stdout.take().unwrap())
        .read_line(&mut done)
        .unwrap();
    assert_eq!(done.trim(), "done 10");
    let pid = t.id() as u64;
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args([
            "-q",
            "-d",
            "5s",
            "--no-mmap",
            "--pid",
            &pid.to_string(),
            "-o",
        ])
        .arg(&json));
    t.kill().unwrap();
    let _ = t.wait();
    assert!(out.status.success());
    let r = report(&json);
    for (creator, runs, alive) in [
        ("main.blockForever", "main.blockForever.func1", 10),
        ("main.sleepForever", "main.sleepForever.func1", 10),
        ("main.startWorkers", "main.startWorkers.func1", 4),
    ] {
        let s = site(&r, pid, "goroutine", creator)
            .unwrap_or_else(|| panic!("no goroutine site at {creator}"));
        assert_eq!(s["outstanding_count"], alive, "{s}");
        assert_eq!(s["total_count"], 0, "not started while traced: {s}");
        assert_eq!(s["frames"][1]["function"], "[started before attach]");
        assert_eq!(details(s), [("goroutine".into(), runs.into(), alive)]);
    }
    let before = r["targets"][0]["go"]["goroutines_before_attach"]
        .as_u64()
        .unwrap();
    assert_eq!(
        r["totals"]["goroutines"].as_u64().unwrap(),
        before,
        "none started since"
    );
    // The Go heap in use at attach, from the runtime's buckets: what its own
    // profile said when the target finished.
    let s = site(&r, pid, "go_heap", "main.appendRecord").expect("go_heap before attach");
    let last = s["frames"].as_array().unwrap().last().unwrap();
    assert_eq!(last["function"], "[allocated before attach]", "{s}");
    let ours = go_heap_at(&r, "main.appendRecord") as f64;
    let theirs = runtime_inuse(&dir.join("heap.pprof"), "main.appendRecord") as f64;
    eprintln!("go{version} before attach: main.appendRecord: leaktrace {ours}, runtime {theirs}");
    assert!(
        theirs > 0.0 && (ours - theirs).abs() <= 0.01 * theirs,
        "leaktrace {ours}, runtime {theirs}"
    );
    // The garbage buffer in use at attach was dropped 3 s after "done": its
    // free, of an object leaktrace did not see allocated, counts it down.
    let garbage = site(&r, pid, "go_heap", "main.makeGarbage").unwrap_or_else(|| {
        // Seen missing once in a full run, never alone: say what there was.
        let heap: Vec<String> = r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["kind"] == "go_heap")
            .map(|s| format!("{} {}", s["outstanding_bytes"], s["frames"]))
            .collect();
        panic!("no garbage at attach; go_heap sites:\n{}", heap.join("\n"))
    });
    let last = garbage["frames"].as_array().unwrap().last().unwrap();
    assert_eq!(last["function"], "[allocated before attach]", "{garbage}");
    assert_eq!(garbage["outstanding_bytes"], 0, "{garbage}");
}

/// The line of `marker` in tests/targets/go/NAME.go.
fn line_of(name: &str, marker: &str) -> u64 {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/targets/go/{name}.go"));
    let text = std::fs::read_to_string(src).unwrap();
    1 + text.lines().position(|l| l.contains(marker)).unwrap() as u64
}

#[test]
fn goroutine_sites_say_where_their_goroutines_wait() {
    if !root_or_skip() {
        return;
    }
    let send_line = line_of("waiting", "waits: chan send");
    let nap_line = line_of("waiting", "waits: sleep");
    // `g.sched`'s frame pointer is not at the same place in 1.21 and 1.27; a
    // stripped build's `runtime.allgs` is found in the runtime's code.
    for (version, stripped) in [(GO_OLDEST, false), (GO_NEWEST, false), (GO_NEWEST, true)] {
        let exe = go_build("waiting", version, stripped);
        let dir = scratch_dir(&format!("gowaiting{version}{stripped}"));
        let json = dir.join("report.json");
        let out = run(leaktrace()
            .args(["-q", "-d", "2500ms", "-o"])
            .arg(&json)
            .arg("--")
            .arg(&exe)
            .args(["7", "4"]));
        assert!(out.status.success());
        let r = report(&json);
        let waiting = |function: &str| -> Value {
            r["sites"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["kind"] == "goroutine")
                .flat_map(|s| s["waiting"].as_array().cloned().unwrap_or_default())
                .find(|w| w["function"] == function)
                .unwrap_or_else(|| {
                    panic!(
                        "go{version} stripped {stripped}: no goroutines waiting in {function}: {r}"
                    )
                })
        };
        // A stripped binary's lines come from its pclntab.
        let line = Value::from;
        let send = waiting("main.send");
        assert_eq!(send["reason"], "chan send", "{send}");
        assert_eq!(send["count"], 7, "{send}");
        assert_eq!(send["line"], line(send_line), "{send}");
        let nap = waiting("main.nap");
        assert_eq!(nap["reason"], "sleep", "{nap}");
        assert_eq!(nap["count"], 4, "{nap}");
        assert_eq!(nap["line"], line(nap_line), "{nap}");
    }
}

/// A `go` statement too busy to have each goroutine announced with its
/// stack (leaktrace-ebpf/src/go.rs): its goroutines are still all counted,
/// those alive found in the runtime's list, and the ones that stay are
/// placed at the caller whose announced goroutines stay.
#[test]
fn a_busy_go_statements_goroutines_are_all_counted_and_placed() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("go-busy");
    let rounds = 5_000u64;
    let (r, pid) = prod::trace_command(&dir, &go_target("busy"), &[&rounds.to_string()]);
    let sites: Vec<&Value> = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["kind"] == "goroutine"
                && s["pid"] == pid
                && prod::functions(s).contains(&Some("main.spawn"))
        })
        .collect();
    let through = |f: &str| -> (u64, u64) {
        sites
            .iter()
            .filter(|s| prod::functions(s).contains(&Some(f)))
            .map(|s| {
                (
                    s["outstanding_count"].as_u64().unwrap(),
                    s["total_count"].as_u64().unwrap(),
                )
            })
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (leak, quick) = (through("main.leakOne"), through("main.quickOne"));
    let alive: u64 = sites
        .iter()
        .map(|s| s["outstanding_count"].as_u64().unwrap())
        .sum();
    let made: u64 = sites
        .iter()
        .map(|s| s["total_count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        made,
        rounds * 10,
        "every goroutine made is counted: {sites:?}"
    );
    assert_eq!(alive, rounds, "every one alive is found: {sites:?}");
    assert!(
        leak.0 >= rounds * 9 / 10 && quick.0 <= rounds / 10,
        "those alive are placed at leakOne: leakOne {leak:?}, quickOne {quick:?}"
    );
    assert!(
        quick.1 >= rounds * 8 && leak.1 <= rounds * 2,
        "those made are placed where they are announced: leakOne {leak:?}, quickOne {quick:?}"
    );
}
