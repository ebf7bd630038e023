//! What every integration test file needs: leaktrace, run and its report, a
//! scratch directory.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

pub mod prod;

pub fn leaktrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leaktrace"))
}

/// Runs `cmd`, printing what it wrote (shown when a test fails).
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run leaktrace");
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON report leaktrace wrote to `json`.
pub fn report(json: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(json).expect("report written")).expect("valid JSON")
}

/// An empty directory of this name under the tests' scratch space.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
