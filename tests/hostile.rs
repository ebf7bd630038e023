//! A hostile or unlucky environment: planted links where leaktrace (root)
//! writes, targets whose names and paths carry terminal escapes, sudo, a
//! reader that goes away, outputs that cannot be written, scripts, files
//! without an execute bit. Run as root.
mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use common::{
    gone_or_zombie, leaktrace,
    prod::{cc_build, functions},
    report, root_or_skip, run, runs_with, scratch_dir, spawn_until_logged, wait_until,
};

#[test]
fn a_link_planted_where_the_output_is_written_is_never_written_through() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-link");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let out = dir.join("out.json");
    let tracer = leaktrace()
        .args(["-q", "-d", "2s", "-o"])
        .arg(&out)
        .args(["--", "sleep", "5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Links at the names a temporary file could be guessed by (the tracer's
    // PID) and at the output itself.
    for name in [
        format!("out.json.tmp.{}", tracer.id()),
        format!(".out.json.tmp.{}", tracer.id()),
    ] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    let done = tracer.wait_with_output().unwrap();
    assert!(done.status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!out.is_symlink(), "the link at the output was replaced");
    assert_eq!(report(&out)["version"], 4);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn escapes_in_names_and_paths_are_shown_escaped_everywhere_text_goes() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-escapes");
    // A program named with a screen-clearing escape, opening (and keeping) a
    // file whose name forges a report line.
    let built = cc_build("gcc", "leaks.c", &["-O2", "-g"], &[], "leaks-escapes");
    let evil = dir.join("evil\x1b[2J\x1b[Hname");
    std::fs::copy(&built, &evil).unwrap();
    let folded = dir.join("out.folded");
    let svg = dir.join("out.svg");
    let json = dir.join("out.json");
    let out = run(leaktrace()
        .current_dir(&dir)
        .args(["-d", "20s", "-i", "1s", "-o"])
        .arg(&folded)
        .arg("-o")
        .arg(&svg)
        .arg("-o")
        .arg(&json)
        .arg("--")
        .arg(&evil)
        .args(["5", "300"]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains('\x1b'),
        "no raw escape reaches the terminal"
    );
    assert!(stdout.contains("evil\\x1b[2J\\x1b[Hname"), "{stdout}");
    let folded = std::fs::read_to_string(&folded).unwrap();
    assert!(!folded.contains('\x1b'), "{folded}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    let xml = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(&svg, xml).expect("the flamegraph is valid XML");
    // JSON keeps the name as it is (escaped by JSON itself).
    let r = report(&json);
    assert_eq!(
        r["targets"][0]["comm"].as_str().unwrap().chars().next(),
        Some('e')
    );
    assert!(r["targets"][0]["exe"].as_str().unwrap().contains('\x1b'));
}

/// `id -u` as leaktrace starts it, with `args` and `env`: the UID it ran as.
fn uid_of_command(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(leaktrace()
        .envs(env.iter().copied())
        .arg("-q")
        .args(args)
        .args(["--", "id", "-u"]));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_command_runs_as_the_user_asked_for_or_the_sudo_user() {
    if !root_or_skip() {
        return;
    }
    assert_eq!(uid_of_command(&["--user", "nobody"], &[]), "65534");
    let sudo = [
        ("SUDO_UID", "65534"),
        ("SUDO_GID", "65534"),
        ("SUDO_USER", "nobody"),
    ];
    assert_eq!(uid_of_command(&[], &sudo), "65534");
    assert_eq!(uid_of_command(&["--user", "root"], &sudo), "0");
    assert_eq!(uid_of_command(&[], &[]), "0");
    let out = run(leaktrace().args(["--user", "no-such-user", "--", "true"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn a_command_gets_the_open_files_limit_leaktrace_was_started_with() {
    if !root_or_skip() {
        return;
    }
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) };
    assert!(hard.rlim_max > 1024, "a hard limit above 1024 to raise to");
    let out = run(Command::new("prlimit")
        .arg(format!("--nofile=1024:{}", hard.rlim_max))
        .arg(env!("CARGO_BIN_EXE_leaktrace"))
        .args(["-q", "--", "sh", "-c", "ulimit -Sn"]));
    assert!(out.status.success());
    let first = String::from_utf8_lossy(&out.stdout);
    assert_eq!(first.lines().next(), Some("1024"), "{first}");
}

#[test]
fn a_reader_that_goes_away_leaves_the_trace_and_its_files_whole() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-head");
    let json = dir.join("out.json");
    let sh = format!(
        "{} -i 1s -d 3s -o {} -- sleep 5 | head -c 10",
        env!("CARGO_BIN_EXE_leaktrace"),
        json.display()
    );
    let out = run(Command::new("bash").args(["-c", &format!("{sh}; exit ${{PIPESTATUS[0]}}")]));
    assert_eq!(out.status.code(), Some(0), "no panic when stdout closes");
    assert_eq!(report(&json)["version"], 4);
    // `top` without a terminal: one line, not a panic.
    let out = run(leaktrace()
        .args(["top", "--pid", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped()));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a terminal"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// Runs leaktrace on a command that would create `ran` in `dir`; asserts it
/// fails with one line containing `says`, and that the command never ran.
fn assert_refused_and_never_ran(dir: &Path, args: &[&str], cmd: &[&str], says: &str) {
    let out = run(leaktrace().current_dir(dir).args(args).arg("--").args(cmd));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(says), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    // Time the command would have had to run: nothing to poll for.
    sleep(Duration::from_millis(300));
    assert!(!dir.join("ran").exists(), "the command ran");
}

#[test]
fn unwritable_outputs_and_files_without_an_execute_bit_fail_before_anything_runs() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-refused");
    let touch = ["sh", "-c", "touch ran"];
    assert_refused_and_never_ran(
        &dir,
        &["-o", "/no/such/dir/out.json"],
        &touch,
        "cannot write /no/such/dir/out.json",
    );
    let exe = dir.join("no-x");
    std::fs::copy("/usr/bin/touch", &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused_and_never_ran(
        &dir,
        &[],
        &[exe.to_str().unwrap(), "ran"],
        "Permission denied",
    );
}

#[test]
fn a_script_is_traced_through_its_interpreter() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-script");
    let script = dir.join("job.sh");
    std::fs::write(&script, "#!/bin/sh\ntouch ran\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let json = dir.join("out.json");
    let out = run(leaktrace()
        .current_dir(&dir)
        .args(["-q", "-o"])
        .arg(&json)
        .arg("--")
        .arg(&script));
    assert!(out.status.success());
    assert!(dir.join("ran").exists());
    let r = report(&json);
    assert_eq!(r["targets"][0]["exit_code"], 0);
    assert_eq!(r["targets"][0]["allocators"][0]["name"], "glibc", "{r}");
    assert!(
        r["totals"]["allocations"].as_u64().unwrap() > 0,
        "the shell's heap seen"
    );
}

#[test]
fn a_command_goes_when_leaktrace_is_killed() {
    if !root_or_skip() {
        return;
    }
    // Traced: leaktrace says "started … as PID N" once attached.
    let (mut tracer, _log) = spawn_until_logged(
        leaktrace()
            .args(["-q", "--", "sleep", "60"])
            .stdout(Stdio::null()),
        " as PID ",
    );
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.id())).unwrap();
    let child: u32 = children
        .split_whitespace()
        .next()
        .expect("the command started")
        .parse()
        .unwrap();
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    wait_until(Duration::from_secs(10), || gone_or_zombie(child));
    let state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for init to reap it.
    assert!(
        state.is_empty() || state.contains(") Z"),
        "the command runs on untraced: {state}"
    );
}

#[test]
fn a_library_replaced_on_disk_under_a_running_process_is_traced_as_mapped() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-replaced");
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let libc = lib.join("libc.so.6");
    std::fs::copy("/lib/x86_64-linux-gnu/libc.so.6", &libc).unwrap();
    let exe = cc_build("gcc", "leaks.c", &["-O2", "-g"], &[], "leaks-replaced");
    // 60 rounds 100 ms apart, on its own copy of the C library.
    let mut target = Command::new(&exe)
        .args(["60", "100"])
        .current_dir(&dir)
        .env("LD_LIBRARY_PATH", &lib)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Running, with its copy of the C library mapped.
    let copy = libc.to_string_lossy().into_owned();
    assert!(
        wait_until(Duration::from_secs(10), || runs_with(
            target.id(),
            &exe,
            &copy
        )),
        "the target never mapped {copy}"
    );
    // The package manager's way: a new file renamed over the old one, which
    // stays mapped, deleted.
    let new = lib.join("libc.so.6.new");
    std::fs::copy("/lib/x86_64-linux-gnu/libc.so.6", &new).unwrap();
    std::fs::rename(&new, &libc).unwrap();
    let json = dir.join("out.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "3s", "-o"])
        .arg(&json)
        .args(["--pid", &target.id().to_string()]));
    let _ = target.kill();
    let _ = target.wait();
    assert!(out.status.success());
    let r = report(&json);
    assert!(
        r["totals"]["allocations"].as_u64().unwrap() > 0,
        "allocations through the mapped (deleted) C library seen: {}",
        r["totals"]
    );
    let named = r["sites"].as_array().unwrap().iter().any(|s| {
        s["kind"] == "heap"
            && s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == "build_record")
    });
    assert!(named, "the leak's site is named");
}

#[test]
fn forked_processes_left_untraced_by_the_open_files_limit_are_counted() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-nofile");
    let json = dir.join("out.json");
    // A hard limit leaktrace cannot raise past: each probe is a descriptor.
    let out = run(Command::new("prlimit")
        .arg("--nofile=160:160")
        .arg(env!("CARGO_BIN_EXE_leaktrace"))
        .args(["-q", "-o"])
        .arg(&json)
        .args([
            "--",
            "sh",
            "-c",
            "for i in $(seq 40); do sleep 2 & done; wait",
        ]));
    assert!(out.status.success());
    let r = report(&json);
    let untraced = r["lost"]["untraced_heaps"].as_u64().unwrap();
    assert!(untraced > 0, "{}", r["lost"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("nothing lost"), "{stdout}");
    assert!(stdout.contains("forked processes' heaps"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ulimit -n"), "the fix is named: {stderr}");
}

#[test]
fn without_cap_sys_ptrace_the_missing_capability_is_named() {
    if !root_or_skip() {
        return;
    }
    let mut other = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "30",
        ])
        .spawn()
        .unwrap();
    // setpriv has become nobody and run sleep.
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{}/comm", other.id()))
                .is_ok_and(|c| c == "sleep\n")
        }),
        "setpriv never ran sleep"
    );
    let out = run(Command::new("setpriv")
        .args(["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"])
        .arg(env!("CARGO_BIN_EXE_leaktrace"))
        .args(["--pid", &other.id().to_string()]));
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CAP_SYS_PTRACE"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("Permission denied").count(),
        1,
        "said once: {stderr}"
    );
}

/// Every site through `function`, in any process of the report: (their
/// outstanding allocations, the processes they are in).
fn outstanding_through(r: &serde_json::Value, function: &str) -> (u64, Vec<u64>) {
    let mut pids = Vec::new();
    let mut count = 0;
    for s in r["sites"].as_array().unwrap() {
        if s["kind"] == "heap" && functions(s).contains(&Some(function)) {
            count += s["outstanding_count"].as_u64().unwrap();
            pids.push(s["pid"].as_u64().unwrap());
        }
    }
    pids.sort_unstable();
    pids.dedup();
    (count, pids)
}

fn trace_spawns(name: &str, cmd: &[&str]) -> serde_json::Value {
    let dir = scratch_dir(name);
    let json = dir.join("out.json");
    let out = run(leaktrace()
        .args(["-q", "-o"])
        .arg(&json)
        .arg("--")
        .args(cmd));
    assert!(out.status.success());
    report(&json)
}

#[test]
fn forked_and_execd_processes_are_traced_from_their_first_allocation() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_build("gcc", "spawns.c", &["-O2", "-g"], &[], "spawns");
    let exe = exe.to_str().unwrap();
    // A wrapper: sh forks, the child execs a program that leaks and ends at once.
    let r = trace_spawns(
        "hostile-wrapper",
        &["sh", "-c", &format!("{exe} leak; true")],
    );
    let (count, pids) = outstanding_through(&r, "quick_leak");
    assert_eq!(
        count, 64,
        "every allocation of the exec'd child: {}",
        r["sites"]
    );
    assert_eq!(pids.len(), 1);
    assert_ne!(
        pids[0], r["targets"][0]["pid"],
        "in the child, not the shell"
    );
    // Its stacks go through the libraries its loader mapped, known before
    // `main` ran: strdup's caller is seen, and what called main.
    let (count, _) = outstanding_through(&r, "dup_name");
    assert_eq!(count, 16, "stacks through the C library: {}", r["sites"]);
    let (count, _) = outstanding_through(&r, "__libc_start_call_main");
    assert!(count >= 64 + 16, "whole stacks: {}", r["sites"]);
    // A pre-fork server's way: children that allocate as soon as they exist.
    let r = trace_spawns("hostile-forks", &[exe, "fork", "20"]);
    let (count, pids) = outstanding_through(&r, "child_leak");
    assert_eq!(count, 20 * 8, "every child's allocations: {}", r["lost"]);
    assert_eq!(pids.len(), 20, "one site per child");
    assert_eq!(r["lost"]["untraced_heaps"], 0);
}

#[test]
fn the_heap_of_an_image_replaced_by_exec_is_dropped() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_build("gcc", "spawns.c", &["-O2", "-g"], &[], "spawns");
    let exe = exe.to_str().unwrap();
    let r = trace_spawns("hostile-exec", &[exe, "exec", exe, "leak"]);
    let (before, _) = outstanding_through(&r, "leak_before_exec");
    assert_eq!(
        before, 0,
        "the old image's heap went with it: {}",
        r["sites"]
    );
    let (after, pids) = outstanding_through(&r, "quick_leak");
    assert_eq!(after, 64, "the new image's heap is traced");
    assert_eq!(pids, [r["targets"][0]["pid"].as_u64().unwrap()]);
}

#[test]
fn a_burst_of_descriptor_events_loses_none() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_build("gcc", "fd_burst.c", &["-O2"], &[], "fd_burst");
    let dir = scratch_dir("hostile-fd-burst");
    let json = dir.join("out.json");
    let out = run(leaktrace()
        .args(["-q", "-o"])
        .arg(&json)
        .arg("--")
        .arg(&exe)
        .arg("3"));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r = report(&json);
    assert_eq!(r["lost"]["ring_buffer_overruns"], 0, "{stdout}");
    // stdin, stdout and stderr: every burst descriptor was seen closed.
    assert!(
        r["totals"]["open_fds"].as_u64().unwrap() <= 3,
        "{}",
        r["totals"]
    );
}

#[test]
fn a_duration_is_kept_to_the_millisecond_not_the_next_second() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-duration");
    let json = dir.join("out.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "1500ms", "-o"])
        .arg(&json)
        .args(["--", "sleep", "30"]));
    assert!(out.status.success());
    let took = report(&json)["duration_s"].as_f64().unwrap();
    assert!((1.5..1.9).contains(&took), "traced {took} s for -d 1500ms");
}

#[test]
fn a_second_interrupt_quits_without_the_final_report() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_build(
        "gcc",
        "many_stacks.c",
        &["-O2", "-g", "-fno-optimize-sibling-calls"],
        &[],
        "many_stacks",
    );
    let dir = scratch_dir("hostile-interrupts");
    let json = dir.join("out.json");
    // 50,000 sites: their final report takes seconds.
    let lt = leaktrace()
        .args(["-q", "--max-stacks", "65536", "-o"])
        .arg(&json)
        .arg("--")
        .arg(&exe)
        .args(["16", "60", "50000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A fixed wait: for the target to make its sites and leaktrace to take
    // in their events, so that the first interrupt's drain is short and the
    // second lands in the final report; nothing outside shows the latter.
    sleep(Duration::from_secs(8));
    let pid = lt.id() as i32;
    let target = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    let target = String::from_utf8_lossy(&target.stdout).trim().to_string();
    assert!(!target.is_empty(), "the command runs under leaktrace");
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    // The second interrupt comes a while after the first: the scenario.
    sleep(Duration::from_millis(300));
    unsafe { libc::kill(pid, libc::SIGINT) };
    let started = std::time::Instant::now();
    let out = lt.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(!out.status.success(), "quit, not finished");
    assert!(!json.exists(), "no report was written");
    assert!(took < Duration::from_secs(10), "quit after {took:?}");
    wait_until(Duration::from_secs(10), || {
        gone_or_zombie(target.parse().unwrap())
    });
    // Gone, or a zombie its new parent has yet to reap.
    let stat = std::fs::read_to_string(format!("/proc/{target}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest.trim_start());
    assert!(
        stat.is_empty() || state.starts_with('Z'),
        "the command went with leaktrace: {stat}"
    );
}

#[test]
fn the_probes_of_many_exited_processes_are_removed_after_leaktrace_has_exited() {
    if !root_or_skip() {
        return;
    }
    common::wait_for_probe_removal();
    // 40 processes, ~20 probes each: removing them takes ~0.1 s apiece, which
    // leaktrace leaves to a process of its own, after its report is out.
    let out = leaktrace()
        .args([
            "-q",
            "--",
            "sh",
            "-c",
            "for i in $(seq 40); do /bin/true; done",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        common::removing_probes(),
        "leaktrace removed them itself before exiting, or left them to no one"
    );
    common::wait_for_probe_removal();
    assert!(!common::removing_probes());
}

#[test]
fn memory_watched_by_userfaultfd_is_never_read_by_the_scan() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("hostile-uffd");
    let exe = cc_build("gcc", "uffd.c", &["-O2", "-g"], &[], "uffd");
    let json = dir.join("report.json");
    // Reading the watched page would wait for the target's own handler, and
    // the target waits, stopped at exit, for the scan.
    let mut tracer = leaktrace()
        .args(["-q", "-o"])
        .arg(&json)
        .arg("--")
        .arg(&exe)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if !wait_until(Duration::from_secs(60), || {
        tracer.try_wait().unwrap().is_some()
    }) {
        let _ = tracer.kill();
        let _ = Command::new("pkill").args(["-KILL", "-x", "uffd"]).status();
        panic!("the scan hung on a page userfaultfd watches");
    }
    let out = tracer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("userfaultfd"), "{stderr}");
    let r = report(&json);
    assert_eq!(r["scans"]["failed"], 1, "{}", r["scans"]);
    assert_eq!(r["targets"][0]["exit_code"], 0);
    common::wait_for_probe_removal();
}
