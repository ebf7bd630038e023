//! Descriptors and sockets per call site: what the target holds open, close
//! on exec, forked children with what they inherit. Real probes on
//! tests/targets/fds.c (run as root).
mod common;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    c::target,
    fd_links, leaktrace,
    profiles::pprof,
    report, root_or_skip, run, scratch_dir,
    sites::{details, outstanding, site},
    wait_until,
};
use serde_json::Value;

/// A listener on 127.0.0.1 that accepts and keeps every connection.
fn listener() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for c in l.incoming() {
            kept.push(c);
        }
    });
    port
}

#[test]
fn descriptors_and_sockets_per_site_match_the_target() {
    if !root_or_skip() {
        return;
    }
    let port = listener();
    let dir = scratch_dir("fds");
    let d = dir.to_str().unwrap();
    let mut t = Command::new(target("fds"))
        .args([d, &port.to_string(), "1500", "15000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Attached once before.txt is open: it is there when leaktrace comes.
    let before = format!("{d}/before.txt");
    assert!(
        wait_until(Duration::from_secs(10), || fd_links(t.id())
            .contains(&before)),
        "the target never opened {before}"
    );
    let pid = t.id() as u64;
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "4s", "--pid", &pid.to_string(), "-o"])
        .arg(&json)
        .arg("-o")
        .arg(dir.join("report.pb.gz")));
    assert!(out.status.success());
    // Ground truth while the target waits, leaks done.
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let r = report(&json);
    let sockets = links.iter().filter(|l| l.starts_with("socket:")).count() as u64;
    assert_eq!(
        r["totals"]["open_sockets"].as_u64(),
        Some(sockets),
        "{links:?}"
    );
    assert_eq!(
        r["totals"]["open_fds"].as_u64(),
        Some(links.len() as u64 - sockets),
        "{links:?}"
    );

    let open = |kind: &str, f: &str| outstanding(&r, pid, kind, f).1;
    let s = |kind: &str, f: &str| site(&r, pid, kind, f).unwrap_or_else(|| panic!("no {f}"));
    assert_eq!(open("fd", "leak_open"), 4);
    assert_eq!(
        details(s("fd", "leak_open")),
        [("file".into(), format!("{d}/open.txt"), 4)]
    );
    assert_eq!(open("fd", "leak_openat"), 2);
    assert_eq!(
        details(s("fd", "leak_openat")),
        [("file".into(), format!("{d}/openat.txt"), 2)]
    );
    assert_eq!(open("fd", "leak_pipe"), 4);
    assert_eq!(
        details(s("fd", "leak_pipe")),
        [("pipe".into(), String::new(), 4)]
    );
    assert_eq!(open("fd", "leak_dup"), 2);
    assert_eq!(
        details(s("fd", "leak_dup"))[0].1,
        *d,
        "a dup copies what it duplicates"
    );
    assert_eq!(open("fd", "leak_eventfd"), 1);
    // The same in pprof: open descriptors as their own sample type.
    // The leaf is the libc wrapper; the leaking function holds them cumulatively.
    let cum = |index: &str, function: &str| -> Option<u64> {
        let args = ["-top".to_string(), format!("-sample_index={index}")];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let top = pprof(&args, &dir.join("report.pb.gz"));
        top.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 6 && f[5] == function).then(|| f[3].parse().ok())?
        })
    };
    assert_eq!(cum("open_fds", "leak_open"), Some(4));
    assert_eq!(cum("open_sockets", "leak_connect"), Some(5));
    assert_eq!(open("socket", "leak_connect"), 5);
    let peers = details(s("socket", "leak_connect"));
    assert_eq!(peers.len(), 5);
    let to = format!(" -> 127.0.0.1:{port}");
    assert!(
        peers
            .iter()
            .all(|p| p.1.starts_with("tcp 127.0.0.1:") && p.1.ends_with(&to) && p.2 == 1),
        "{peers:?}"
    );
    assert_eq!(open("socket", "make_listener"), 1);
    let listen = &details(s("socket", "make_listener"))[0].1;
    assert!(listen.starts_with("tcp listen 127.0.0.1:"), "{listen}");
    let listen_port = listen.rsplit(':').next().unwrap();
    assert_eq!(open("socket", "leak_accept"), 3);
    assert!(
        details(s("socket", "leak_accept")).iter().all(|p| p
            .1
            .starts_with(&format!("tcp 127.0.0.1:{listen_port} -> 127.0.0.1:"))),
        "accepted sockets show their peer"
    );
    // fopen's own caller is hidden behind glibc's frameless internals: the
    // site is found by its path.
    let fopen = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| details(s).iter().any(|d| d.1.ends_with("/fopen.txt")))
        .expect("fopen site");
    assert_eq!(fopen["outstanding_count"], 3);

    // Distractors close everything they open.
    for (kind, f, made) in [
        ("fd", "open_close", 10),
        ("fd", "pipe_close", 20),
        ("socket", "socket_close", 10),
        ("fd", "open_for_range", 5),
        // Two sites in dup2_over, one descriptor each: the open and the dup2 onto it.
        ("fd", "dup2_over", 1),
    ] {
        let site = s(kind, f);
        assert_eq!(site["outstanding_count"], 0, "{f}: {site}");
        assert_eq!(site["total_count"], made, "{f}: {site}");
    }
    // Open before attach: under their own site, with their paths.
    let before = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == pid && s["frames"][0]["function"] == "[opened before attach]")
        .expect("opened-before-attach site");
    assert!(
        details(before)
            .iter()
            .any(|x| x.1 == format!("{d}/before.txt")),
        "{before}"
    );
    assert!(t.wait().unwrap().success());
}

#[test]
fn exec_closes_close_on_exec_descriptors() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("exec");
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "2s", "--no-heap", "--no-mmap", "-o"])
        .arg(&json)
        .arg("--")
        .arg(target("fds"))
        .args([dir.to_str().unwrap(), "exec"]));
    assert!(out.status.success());
    let r = report(&json);
    let pid = r["targets"][0]["pid"].as_u64().unwrap();
    assert_eq!(outstanding(&r, pid, "fd", "open_kept").1, 1);
    let gone = site(&r, pid, "fd", "open_cloexec").expect("open_cloexec site");
    assert_eq!(
        (
            gone["outstanding_count"].as_u64(),
            gone["total_count"].as_u64()
        ),
        (Some(0), Some(1))
    );
}

#[test]
fn forked_children_are_followed_with_inherited_descriptors() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("fork");
    let json = dir.join("report.json");
    let out = run(leaktrace()
        .args(["-q", "-d", "1500ms", "--no-mmap", "-o"])
        .arg(&json)
        .arg("--")
        .arg(target("fds"))
        .args([dir.to_str().unwrap(), "fork"]));
    assert!(out.status.success());
    let r = report(&json);
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2, "{targets:?}");
    let (parent, child) = (
        targets[0]["pid"].as_u64().unwrap(),
        targets[1]["pid"].as_u64().unwrap(),
    );
    // Two calls on two lines: two call sites, one descriptor each.
    let in_child: Vec<&Value> = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == child && s["frames"][1]["function"] == "open_in_child")
        .collect();
    assert_eq!(in_child.len(), 2, "{in_child:?}");
    assert!(in_child.iter().all(|s| s["outstanding_count"] == 1));
    assert!(site(&r, parent, "fd", "open_in_child").is_none());
    // Inherited: open in both, under the site that opened it.
    assert_eq!(outstanding(&r, parent, "fd", "open_kept").1, 1);
    assert_eq!(outstanding(&r, child, "fd", "open_kept").1, 1);
}
