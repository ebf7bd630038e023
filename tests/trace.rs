//! End-to-end tests: real probes on real processes (run as root).
//! The C targets in tests/targets/ leak known amounts from known functions.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, OnceLock},
    thread::sleep,
    time::Duration,
};

use serde_json::Value;

const PAGE: u64 = 4096;

fn leaktrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leaktrace"))
}

/// Compiles a C target once per test run (-O0 keeps every allocation).
fn target(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("targets");
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    let out = dir.join(name);
    if built.iter().any(|b| b == name) {
        return out;
    }
    built.push(name.to_string());
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/targets")
        .join(format!("{name}.c"));
    let status = Command::new("gcc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(status.success(), "compiling {}", src.display());
    out
}

fn report(json: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(json).expect("report written")).expect("valid JSON")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run leaktrace");
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The site of `kind` whose stack holds `function` (the caller of the allocator).
fn site<'a>(report: &'a Value, pid: u64, kind: &str, function: &str) -> Option<&'a Value> {
    report["sites"].as_array().unwrap().iter().find(|s| {
        s["kind"] == kind
            && s["pid"] == pid
            && s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function)
    })
}

fn outstanding(report: &Value, pid: u64, kind: &str, function: &str) -> (u64, u64) {
    let s =
        site(report, pid, kind, function).unwrap_or_else(|| panic!("no {kind} site at {function}"));
    (
        s["outstanding_bytes"].as_u64().unwrap(),
        s["outstanding_count"].as_u64().unwrap(),
    )
}

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
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("command.json");
    let out = run(leaktrace()
        .arg("-q")
        .arg("-o")
        .arg(&json)
        .arg("--")
        .arg(target("heap")));
    assert!(out.status.success());
    let r = report(&json);
    assert_eq!(r["version"], 2);
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

fn spawn_waiting(delay_ms: u32, linger_ms: u32) -> Child {
    Command::new(target("heap"))
        .args([delay_ms.to_string(), linger_ms.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn several_running_pids() {
    let mut a = spawn_waiting(1500, 8000);
    let mut b = spawn_waiting(1500, 8000);
    sleep(Duration::from_millis(200));
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

#[test]
fn no_such_pid_is_a_one_line_error() {
    let out = run(leaktrace().args(["--pid", "999999999"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no process with PID 999999999"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn nothing_to_trace_is_a_usage_error() {
    let out = run(&mut leaktrace());
    assert_eq!(out.status.code(), Some(2));
}

fn our_programs_loaded() -> bool {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool (run cargo xtask setup)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("malloc_enter") || text.contains("alloc_return")
}

#[test]
fn sigkill_leaves_no_probe_and_the_target_runs_on() {
    let mut t = spawn_waiting(4000, 1000);
    let mut tracer = leaktrace()
        .args(["-q", "--pid", &t.id().to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1500));
    assert!(our_programs_loaded(), "probes attached while tracing");
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    sleep(Duration::from_millis(500));
    assert!(!our_programs_loaded(), "probes left behind after SIGKILL");
    // The target goes on to allocate (through the formerly probed malloc) and exit cleanly.
    assert!(t.wait().unwrap().success());
}

#[test]
fn not_root_is_a_one_line_error() {
    let out = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_leaktrace"))
        .args(["--pid", "1"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
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
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            sleep(Duration::from_millis(100));
        }
    }
}

fn verdict_of<'a>(report: &'a Value, pid: u64, kind: &str, function: &str) -> &'a Value {
    site(report, pid, kind, function).unwrap_or_else(|| panic!("no {kind} site at {function}"))
}

#[test]
fn verdicts_tell_leaks_from_caches_pools_and_delayed_frees() {
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
    ] {
        assert_eq!(s(kind, f)["verdict"], "leak", "{f}: {}", s(kind, f));
    }
    for f in ["lru_put", "pool_init", "delayed_free_put", "garbage"] {
        assert_ne!(s("heap", f)["verdict"], "leak", "{f}: {}", s("heap", f));
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
