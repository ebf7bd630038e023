//! leaktrace as a command: errors said on one line, a usage error, no probe
//! left behind when it is killed.
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{c::spawn_waiting, leaktrace, root_or_skip, run, spawn_until_logged, wait_until};

#[test]
fn no_such_pid_is_a_one_line_error() {
    if !root_or_skip() {
        return;
    }
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
    if !root_or_skip() {
        return;
    }
    let mut t = spawn_waiting(4000, 1000);
    let (mut tracer, _log) = spawn_until_logged(
        leaktrace()
            .args(["-q", "--pid", &t.id().to_string()])
            .stdout(Stdio::null()),
        &format!("tracing PID {}", t.id()),
    );
    assert!(our_programs_loaded(), "probes attached while tracing");
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    // The kernel frees the programs once the last descriptor is closed.
    wait_until(Duration::from_secs(30), || !our_programs_loaded());
    assert!(!our_programs_loaded(), "probes left behind after SIGKILL");
    // The target goes on to allocate (through the formerly probed malloc) and exit cleanly.
    assert!(t.wait().unwrap().success());
}

#[test]
fn not_root_is_a_one_line_error() {
    // As root, leaktrace is run as nobody; not root, as the test runs.
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_leaktrace"));
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        as_nobody
    } else {
        leaktrace()
    };
    let out = run(cmd.args(["--pid", "1"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
