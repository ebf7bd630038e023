//! Go toolchains `cargo xtask setup` installs, and the Go test targets built with them.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

/// The newest and the oldest Go that `cargo xtask setup` installs.
pub const GO_NEWEST: &str = "1.27.3";
pub const GO_OLDEST: &str = "1.21.13";

/// `go` from the toolchain `cargo xtask setup` installs, with its caches here.
pub fn go() -> Command {
    go_at(GO_NEWEST)
}

pub fn go_at(version: &str) -> Command {
    let go = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/toolchains/go{version}/bin/go"));
    assert!(
        go.exists(),
        "{} missing: run cargo xtask setup",
        go.display()
    );
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut cmd = Command::new(go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOCACHE", tmp.join(format!("gocache{version}")))
        .env("GOPATH", tmp.join("gopath"))
        .env("GOFLAGS", "-buildvcs=false");
    cmd
}

/// Builds tests/targets/go/NAME.go once per test run.
pub fn go_target(name: &str) -> PathBuf {
    go_build(name, GO_NEWEST, false)
}

/// Builds tests/targets/go/NAME.go with Go `version`, stripped and
/// position-independent if `stripped_pie`, once per test run.
pub fn go_build(name: &str, version: &str, stripped_pie: bool) -> PathBuf {
    static BUILT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let flavour = if stripped_pie { "-stripped-pie" } else { "" };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("targets/{name}-go{version}{flavour}"));
    let mut built = BUILT.lock().unwrap();
    if built.contains(&out) {
        return out;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/targets/go/{name}.go"));
    let mut cmd = go_at(version);
    cmd.arg("build").arg("-o").arg(&out);
    if stripped_pie {
        cmd.args(["-buildmode=pie", "-ldflags=-s -w"]);
    }
    let status = cmd.arg(&src).status().unwrap();
    assert!(status.success(), "go build {}", src.display());
    built.push(out.clone());
    out
}
