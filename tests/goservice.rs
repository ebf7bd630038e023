//! A Go HTTP service as production runs it (no pprof, so heap sampling starts
//! off), attached with `--pid` while it serves a mix of handlers: the leak
//! among them is found with its bytes, the caches, pools, garbage and workers
//! beside it are not called leaks, and every reply stays what it was. Go 1.21
//! and 1.27, plain and stripped PIE (run as root).
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    go::{GO_NEWEST, GO_OLDEST, go_build},
    leaktrace, report, root_or_skip, scratch_dir, spawn_until_logged,
};
use serde_json::Value;

const RECORD: u64 = 4096;
/// Requests per second to each handler but /garbage (10 a second: 20 MiB/s).
const RATE: u64 = 50;
const TRACE_S: u64 = 60;

#[test]
fn go_service_newest_go() {
    if root_or_skip() {
        service(GO_NEWEST, false, false);
    }
}

#[test]
fn go_service_newest_go_stripped_pie() {
    if root_or_skip() {
        service(GO_NEWEST, true, false);
    }
}

#[test]
fn go_service_oldest_go() {
    if root_or_skip() {
        service(GO_OLDEST, false, false);
    }
}

#[test]
fn go_service_oldest_go_stripped_pie() {
    if root_or_skip() {
        service(GO_OLDEST, true, false);
    }
}

/// A service that samples its own heap (at leaktrace's default rate): what
/// it held at attach and what it allocated since at the same place are one site.
#[test]
fn go_service_sampled_before_attach_has_one_row_per_site() {
    if root_or_skip() {
        service(GO_NEWEST, false, true);
    }
}

/// The checksum tests/targets/go/service.go's `fill` returns for `len` bytes
/// derived from `n`.
fn fill(len: usize, n: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    let mut sum = 0u64;
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sum = sum.wrapping_mul(31).wrapping_add(x & 0xff);
    }
    sum
}

/// One keep-alive HTTP/1.1 connection to the service.
struct Client(BufReader<TcpStream>);

impl Client {
    fn get(&mut self, path: &str) -> String {
        let stream = self.0.get_mut();
        let request = format!("GET {path} HTTP/1.1\r\nHost: service\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut length = None;
        let mut status = String::new();
        self.0.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().ok();
            }
        }
        let mut body = vec![0; length.expect("a content length")];
        self.0.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

/// Sends one round of requests numbered `n` and checks every reply.
fn round(c: &mut Client, n: u64) {
    let expect = |len: usize, n: u64| format!("{}\n", fill(len, n));
    assert_eq!(c.get(&format!("/append?n={n}")), expect(4096, n));
    assert_eq!(c.get(&format!("/cache?n={n}")), expect(4096, n % 1024));
    assert_eq!(c.get(&format!("/pool?n={n}")), expect(64 << 10, n));
    assert_eq!(c.get(&format!("/work?n={n}")), expect(1024, n));
    if n.is_multiple_of(5) {
        assert_eq!(c.get(&format!("/garbage?n={n}")), expect(4096, n));
    }
}

/// Rounds at RATE a second until `until` says stop; returns how many.
fn load(c: &mut Client, next: &mut u64, mut until: impl FnMut() -> bool) -> u64 {
    let start = Instant::now();
    let mut sent = 0;
    while !until() {
        round(c, *next);
        *next += 1;
        sent += 1;
        let due = start + Duration::from_millis(sent * 1000 / RATE);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

fn functions(site: &Value) -> Vec<&str> {
    site["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect()
}

/// Serves, attaches for TRACE_S seconds, checks. `sampled`: the heap was
/// sampled from the start (at leaktrace's default rate).
fn service(version: &str, stripped_pie: bool, sampled: bool) {
    let flavour = match (stripped_pie, sampled) {
        (true, _) => " stripped PIE",
        (false, true) => " sampled from start",
        (false, false) => "",
    };
    let dir = scratch_dir(&format!("goservice{version}{stripped_pie}{sampled}"));
    let mut cmd = Command::new(go_build("service", version, stripped_pie));
    if sampled {
        cmd.env("MEMPROFILERATE", "65536");
    }
    let mut svc = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut ready = String::new();
    BufReader::new(svc.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let addr = ready.trim().strip_prefix("ready ").expect("ready line");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut c = Client(BufReader::new(stream));
    let mut next = 0;
    // Serving before leaktrace comes: its cache full, its workers busy.
    let warm = Instant::now();
    let before = load(&mut c, &mut next, || {
        warm.elapsed() > Duration::from_secs(5)
    });

    let pid = svc.id();
    let json = dir.join("report.json");
    let (mut tracer, log) = spawn_until_logged(
        leaktrace()
            .args([
                "-q",
                "-d",
                &format!("{TRACE_S}s"),
                "--pid",
                &pid.to_string(),
            ])
            .arg("-o")
            .arg(&json)
            .stdout(Stdio::null()),
        &format!("tracing PID {pid}"),
    );
    let appended = load(&mut c, &mut next, || exited(&mut tracer));
    log.join().unwrap();
    let traced = tracer.wait().unwrap();
    // The service serves on, as before.
    round(&mut c, next);
    svc.kill().unwrap();
    let _ = svc.wait();
    assert!(traced.success(), "leaktrace: {traced}");

    let r = report(&json);
    let target = &r["targets"][0];
    assert_eq!(target["go"]["sampling_turned_on"], !sampled, "{target}");
    assert_eq!(target["go"]["mem_profile_rate"], 64 * 1024, "{target}");
    let sites: Vec<&Value> = r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pid)
        .collect();
    let records: Vec<&&Value> = sites
        .iter()
        .filter(|s| s["kind"] == "go_heap" && s["frames"][0]["function"] == "main.newRecord")
        .collect();
    let [leak] = records[..] else {
        panic!("go{version}{flavour}: go_heap sites at main.newRecord: {records:?}")
    };
    // Sampled from the start, what it held at attach is in use too.
    let truth = if sampled {
        assert!(
            leak["before_attach"].as_u64().unwrap_or(0) > before / 2,
            "go{version}{flavour}: {before} records before attach: {leak}"
        );
        (before + appended) * RECORD
    } else {
        appended * RECORD
    };
    let ours = leak["outstanding_bytes"].as_u64().unwrap();
    eprintln!(
        "go{version}{flavour}: main.newRecord {ours} B in use, {truth} B appended \
         ({:+.1}%), verdict {} ({}), survival {}",
        (ours as f64 / truth as f64 - 1.0) * 100.0,
        leak["verdict"],
        leak["confidence"],
        leak["survival"]
    );
    // A GC ran (the garbage handler sees to it): the early samples are judged,
    // and every one of them is still in use.
    let survival = &leak["survival"];
    let (early, alive) = (survival["early"].as_u64(), survival["alive"].as_u64());
    assert!(
        early.is_some_and(|e| e >= 20) && early == alive,
        "go{version}{flavour}: {survival}"
    );
    assert_eq!(leak["verdict"], "leak", "go{version}{flavour}: {leak}");
    assert!(
        (ours as f64 - truth as f64).abs() <= 0.2 * truth as f64,
        "go{version}{flavour}: {ours} B against {truth} B appended"
    );
    // The rest holds memory and goroutines too; none of it leaks.
    for distractor in [
        "main.newCacheEntry",
        "main.cacheHandler",
        "main.poolHandler",
        "main.newGarbage",
        "main.garbageHandler",
        "main.worker",
        "main.workHandler",
    ] {
        for s in sites.iter().filter(|s| functions(s).contains(&distractor)) {
            eprintln!(
                "go{version}{flavour}: {distractor}: {} {} {} B {} ({}) survival {}",
                s["kind"],
                s["verdict"],
                s["outstanding_bytes"],
                s["outstanding_count"],
                s["confidence"],
                s["survival"]
            );
            assert_ne!(
                s["verdict"], "leak",
                "go{version}{flavour}: {distractor}: {s}"
            );
        }
    }
    // The fixed pool of workers, from before attach.
    let workers = sites
        .iter()
        .find(|s| s["kind"] == "goroutine" && functions(s).contains(&"main.main"))
        .expect("the workers' goroutine site");
    assert_eq!(workers["outstanding_count"], 8, "{workers}");
}

fn exited(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_some()
}
