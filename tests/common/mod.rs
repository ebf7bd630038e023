//! What every integration test file needs: leaktrace, run and its report, a
//! scratch directory.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

pub mod go;
pub mod prod;

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
    let started = std::time::Instant::now();
    while removing_probes() && started.elapsed() < std::time::Duration::from_secs(300) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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
