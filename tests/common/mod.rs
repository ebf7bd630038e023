//! What every integration test file needs: leaktrace, run and its report, a
//! scratch directory, the root check, waiting for a condition.
// Each test file uses a part of what is here.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod c;
pub mod go;
pub mod prod;
pub mod profiles;
pub mod sites;

/// Probes need root: without it a test says so on one line and passes,
/// unless `CI` is set, where a skipped test would pass unseen: there it fails.
/// Each test that attaches probes starts with `if !root_or_skip() { return; }`.
pub fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "needs root: CI is set, so this test fails instead of skipping"
    );
    eprintln!("skipped: needs root");
    false
}

/// Polls `condition` every 50 ms until it holds (true) or `timeout` has
/// passed (false): for what a test waits for before going on.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn leaktrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leaktrace"))
}

/// Runs `cmd`, printing what it wrote (shown when a test fails), then waits
/// until the probes of the processes it traced are all removed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run leaktrace");
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_probe_removal();
    out
}

/// leaktrace leaves the removal of many exited processes' probes to a
/// process of its own (`leaktrace-rm`): each removal holds a lock every
/// attachment takes, so the next test waits for it to end.
pub fn wait_for_probe_removal() {
    wait_until(Duration::from_secs(300), || !removing_probes());
}

/// Whether a `leaktrace-rm` process (not a zombie) is running.
pub fn removing_probes() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            std::fs::read_to_string(p.path().join("stat"))
                .is_ok_and(|s| s.contains("(leaktrace-rm) ") && !s.contains(") Z "))
        })
}

/// The JSON report leaktrace wrote to `json`, each site's `stack` (indices
/// into the report's `frames`) also given as its `frames`, for the tests.
pub fn report(json: &Path) -> Value {
    let mut r: Value =
        serde_json::from_slice(&std::fs::read(json).expect("report written")).expect("valid JSON");
    let table = r["frames"].as_array().expect("a frame table").clone();
    for site in r["sites"].as_array_mut().expect("sites") {
        let frames: Vec<Value> = site["stack"]
            .as_array()
            .expect("a stack")
            .iter()
            .map(|i| table[i.as_u64().expect("an index") as usize].clone())
            .collect();
        site["frames"] = Value::Array(frames);
    }
    r
}

/// An empty directory of this name under the tests' scratch space.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Spawns leaktrace's `cmd` with its log (`RUST_LOG=info`) on a pipe and
/// waits until a line of it contains `line` (leaktrace logs `tracing PID N`
/// and `started EXE as PID N` once its probes are attached). The log goes on
/// being read, and printed, by the thread returned, which ends with it.
pub fn spawn_until_logged(cmd: &mut Command, line: &str) -> (Child, JoinHandle<()>) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leaktrace");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (seen, on_seen) = mpsc::channel();
    let wanted = line.to_string();
    let log = std::thread::spawn(move || {
        for l in stderr.lines().map_while(Result::ok) {
            eprintln!("leaktrace: {l}");
            if l.contains(&wanted) {
                let _ = seen.send(());
            }
        }
    });
    if on_seen.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("leaktrace never logged \"{line}\"");
    }
    (child, log)
}

/// Whether process `pid` runs `exe` (its exec is done) with a file whose path
/// contains `mapped` in its memory map (its loader has mapped the C library).
pub fn runs_with(pid: u32, exe: &Path, mapped: &str) -> bool {
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
        && std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .is_ok_and(|maps| maps.lines().any(|l| l.contains(mapped)))
}

/// What process `pid`'s open descriptors point to (none once it is gone).
pub fn fd_links(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect()
}

/// Whether process `pid` is gone, or a zombie its parent has yet to reap.
pub fn gone_or_zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest.trim_start());
    stat.is_empty() || state.starts_with('Z')
}

/// A process killed (and reaped) however the test ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
