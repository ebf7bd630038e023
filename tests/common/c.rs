//! The C programs of tests/targets/, which leak known amounts from known
//! functions.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
};

/// Compiles a C target once per test run (-O0 keeps every allocation).
pub fn target(name: &str) -> PathBuf {
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

/// tests/targets/heap.c, which waits `delay_ms`, leaks, then waits
/// `linger_ms` before it exits.
pub fn spawn_waiting(delay_ms: u32, linger_ms: u32) -> Child {
    Command::new(target("heap"))
        .args([delay_ms.to_string(), linger_ms.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}
