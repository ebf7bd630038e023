//! Programs built the way production builds are, traced, and their report
//! read: shared by the test files on production builds (unwind.rs,
//! allocators.rs), each of which uses a part.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use super::{leaktrace, report, run};

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

pub fn prod_sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/targets/prod")
}

/// Compiles tests/targets/prod/SOURCE (C with gcc, C++ with g++) the way
/// production builds are made: `opt` and -g, frame pointers left to the
/// compiler (omitted at -O1 and up).
pub fn cc_target(source: &str, opt: &str) -> PathBuf {
    let compiler = if source.ends_with(".cpp") {
        "g++"
    } else {
        "gcc"
    };
    cc_build(
        compiler,
        source,
        &[opt, "-g"],
        &[],
        &format!("{}{opt}", source.replace('.', "-")),
    )
}

/// Compiles tests/targets/prod/SOURCE with `compiler`, `options` and
/// `libraries` (linked after the source) into the scratch file `name`.
pub fn cc_build(
    compiler: &str,
    source: &str,
    options: &[&str],
    libraries: &[&str],
    name: &str,
) -> PathBuf {
    // Once per test run: tests running side by side must not overwrite a
    // program another is running.
    static BUILT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let dir = tmp().join("prod");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    let mut built = BUILT.lock().unwrap();
    if built.contains(&out) {
        return out;
    }
    let src = prod_sources().join(source);
    let status = Command::new(compiler)
        .args(options)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .args(libraries)
        .status()
        .unwrap_or_else(|e| panic!("{compiler}: {e} (run cargo xtask setup)"));
    assert!(
        status.success(),
        "compiling {} with {compiler}",
        src.display()
    );
    built.push(out.clone());
    out
}

/// Builds the crate tests/targets/prod/NAME with `cargo build --release`:
/// the default release profile (no frame pointers, no debug info, symbols
/// kept). Its `release` directory.
pub fn cargo_release(name: &str) -> PathBuf {
    let target_dir = tmp().join(name);
    let status = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
        ])
        .arg(prod_sources().join(name).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // The default profile, whatever flags the outer build was given.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo");
    assert!(status.success(), "building {name}");
    target_dir.join("release")
}

/// Starts `exe ARGS` under leaktrace in `dir` and traces it until it exits;
/// the report and the target's PID.
pub fn trace_command(dir: &Path, exe: &Path, args: &[&str]) -> (Value, u64) {
    let (r, pid, _) = trace_command_with(dir, exe, args, &[]);
    (r, pid)
}

/// [`trace_command`] with `env` set for leaktrace (and so for the command);
/// also what leaktrace wrote to stderr.
pub fn trace_command_with(
    dir: &Path,
    exe: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Value, u64, String) {
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(["-q", "-d", "60s", "-o"])
        .arg(&json)
        .arg("--")
        .arg(exe)
        .args(args));
    assert!(out.status.success());
    let r = report(&json);
    assert_eq!(r["targets"][0]["exit_code"], 0, "the target ran to its end");
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    (r, pid, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A frame's function without C++ parameters or Rust hash:
/// `create_session(int)` is `create_session`, `rust_leaks::make_row::h06b9700d8eae88f3`
/// is `rust_leaks::make_row`.
pub fn function(frame: &Value) -> Option<&str> {
    let f = frame["function"].as_str()?;
    let f = f.split_once('(').map_or(f, |(name, _)| name);
    Some(match f.rsplit_once("::h") {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name
        }
        _ => f,
    })
}

/// The functions of a site's stack, innermost first, without the frames
/// inlined into them.
pub fn functions(site: &Value) -> Vec<Option<&str>> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["inlined"] != true)
        .map(function)
        .collect()
}

/// A stack to read in a failure message.
pub fn stack(site: &Value) -> String {
    let mut s = format!(
        "{} site, {} outstanding, {} in all, {}:\n",
        site["kind"], site["outstanding_count"], site["total_count"], site["verdict"]
    );
    for f in site["frames"].as_array().unwrap() {
        s += &format!(
            "    {} ({}:{}) [{}+{}]{}\n",
            f["function"].as_str().unwrap_or("?"),
            f["file"].as_str().unwrap_or("?"),
            f["line"],
            f["module"].as_str().unwrap_or("?"),
            f["address"].as_str().unwrap_or("?"),
            if f["inlined"] == true { " inlined" } else { "" }
        );
    }
    s
}

pub fn stacks(sites: &[&Value]) -> String {
    sites.iter().map(|s| stack(s)).collect()
}

pub fn sites<'a>(r: &'a Value, pid: u64, kind: &str) -> Vec<&'a Value> {
    r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pid && s["kind"] == kind)
        .collect()
}

/// The sites of `kind` whose stack passes through `function`.
pub fn sites_through<'a>(r: &'a Value, pid: u64, kind: &str, function: &str) -> Vec<&'a Value> {
    sites(r, pid, kind)
        .into_iter()
        .filter(|s| functions(s).contains(&Some(function)))
        .collect()
}

/// Asserts that `chain` (a leaf and its callers, innermost first) is in the
/// stack as consecutive frames; returns the leaf's index among the frames not inlined.
pub fn assert_chain(site: &Value, chain: &[&str]) -> usize {
    let names = functions(site);
    let leaf = names.iter().position(|f| *f == Some(chain[0]));
    let leaf = leaf.unwrap_or_else(|| panic!("no {} in {}", chain[0], stack(site)));
    let want: Vec<Option<&str>> = chain.iter().map(|f| Some(*f)).collect();
    assert!(
        names[leaf..].starts_with(&want),
        "not {} in {}",
        chain.join(" ← "),
        stack(site)
    );
    leaf
}

/// Every site of `kind` through `chain[0]` holds the whole chain; at least one does.
pub fn chain_sites<'a>(r: &'a Value, pid: u64, kind: &str, chain: &[&str]) -> Vec<&'a Value> {
    let found = sites_through(r, pid, kind, chain[0]);
    assert!(
        !found.is_empty(),
        "no {kind} site through {}; the {kind} sites:\n{}",
        chain[0],
        stacks(&sites(r, pid, kind))
    );
    for s in &found {
        assert_chain(s, chain);
    }
    found
}

/// The one site of `kind` made by `chain[0]`, with its whole chain.
pub fn chain_site<'a>(r: &'a Value, pid: u64, kind: &str, chain: &[&str]) -> &'a Value {
    let found = chain_sites(r, pid, kind, chain);
    assert_eq!(
        found.len(),
        1,
        "one {kind} site per call site, not:\n{}",
        stacks(&found)
    );
    found[0]
}
