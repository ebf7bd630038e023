//! `leaktrace agent` against real peers: a real Prometheus server scraping
//! it, a receiver implementing Pyroscope's push API, a fake Kubernetes API
//! listing a pod whose container a target is really placed in (its cgroup),
//! and the least-privilege capability set of deploy/.
mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    Killed, c::target, free_port, go::go_target, leaktrace, root_or_skip, scratch_dir, wait_until,
};
use prost::Message;
use serde_json::Value;

/// A running agent, stopped (SIGTERM) when dropped.
struct Agent {
    child: Child,
    addr: String,
}

impl Agent {
    fn start(args: &[&str]) -> Agent {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = leaktrace()
            .args([
                "agent",
                "--listen",
                &addr,
                "--min-age",
                "0s",
                "--discover-every",
                "1s",
            ])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the agent");
        let agent = Agent { child, addr };
        assert!(
            wait_until(Duration::from_secs(60), || agent.get("/readyz").0 == 200),
            "the agent never got ready"
        );
        agent
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path, None)
    }

    fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// SIGTERM; the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// One GET; (0, "") when nothing answers.
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, String::new());
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `exe` copied as `dir/name`: a command name of its own for the rules.
fn copy_as(exe: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(exe, &to).unwrap();
    to
}

/// The value of the series of `metric` whose labels include `labels`, in a
/// classic text exposition; summed over matching series.
fn metric(text: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, rest) = series.split_once('{').unwrap_or((series, ""));
        if name != metric {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

fn toolchain(relative: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/toolchains")
        .join(relative);
    assert!(
        p.exists(),
        "{} is missing: run cargo xtask setup",
        p.display()
    );
    p
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server (Debian's package), scraping `target` each second.
struct Prometheus {
    _child: Killed,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(toolchain("prometheus/usr/bin/prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus");
        let p = Prometheus {
            _child: Killed(child),
            addr,
        };
        assert!(
            wait_until(Duration::from_secs(60), || http_get(
                &p.addr, "/-/ready", None
            )
            .0 == 200),
            "Prometheus never got ready"
        );
        p
    }

    /// Waits until `q` has a series above 0.
    fn wait_positive(&self, q: &str) {
        assert!(
            wait_until(Duration::from_secs(60), || self
                .query(q)
                .iter()
                .any(|(_, v)| *v > 0.0)),
            "{q} never went above 0 in Prometheus"
        );
    }

    /// An instant query's series: (labels, value).
    fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/api/v1/query?query={}", percent_encode(q)),
            None,
        );
        assert_eq!(status, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                (labels, r["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }
}

#[test]
fn prometheus_scrapes_targets_series_as_they_come_and_go() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("agent-prometheus");
    let c = copy_as(&target("demo"), &dir, "ltprom-c");
    let go = copy_as(&go_target("leaks"), &dir, "ltprom-go");
    let agent = Agent::start(&["--match-comm", "^ltprom-(c|go)$", "--no-kubernetes"]);
    let c_target = Killed(Command::new(&c).arg("120").spawn().unwrap());
    let _go_target = Killed(
        Command::new(&go)
            .arg(&dir)
            .args(["1000", "1s"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prometheus = Prometheus::start(&dir, &agent.addr);
    let c_heap = r#"leaktrace_outstanding_bytes{service_name="ltprom-c",kind="heap"}"#;
    prometheus.wait_positive(c_heap);
    let goroutines = r#"leaktrace_goroutines{service_name="ltprom-go"}"#;
    prometheus.wait_positive(goroutines);
    // The C demo keeps every request's session: a leak, or growing, soon.
    let leaking = r#"leaktrace_leaking_bytes{service_name="ltprom-c"}"#;
    prometheus.wait_positive(leaking);
    let series = prometheus.query(c_heap);
    let labels = &series[0].0;
    assert_eq!(labels["job"], "leaktrace");
    assert!(!labels["node"].is_empty(), "{labels:?}");
    assert!(!labels.contains_key("pid"), "no pid label: {labels:?}");
    let health = prometheus.query(r#"leaktrace_agent_targets{state="traced"}"#);
    assert_eq!(health.len(), 1, "{health:?}");
    assert!(health[0].1 >= 2.0, "{health:?}");

    // promtool lints the exposition as served to it (the classic text format).
    let (status, text) = agent.get("/metrics");
    assert_eq!(status, 200);
    let mut promtool = Command::new(toolchain("prometheus/usr/bin/promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let linted = promtool.wait_with_output().unwrap();
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    // The C target goes: its series go; the Go target's stay.
    drop(c_target);
    let c_any = r#"leaktrace_processes{service_name="ltprom-c"}"#;
    assert!(
        wait_until(Duration::from_secs(30), || prometheus
            .query(c_any)
            .is_empty()),
        "the exited target's series stayed: {:?}",
        prometheus.query(c_any)
    );
    assert!(!prometheus.query(goroutines).is_empty());
}

/// What a receiver got: the request's head and its decoded body, from
/// Pyroscope's push or from Parca's WriteRaw (as the same messages).
struct Pushed {
    head: String,
    parca: bool,
    request: leaktrace::agent::push::PushRequest,
}

/// Parca's `WriteRawRequest` in its HTTP gateway's JSON, as push messages.
fn from_parca_json(body: &[u8]) -> leaktrace::agent::push::PushRequest {
    use base64::Engine;
    use leaktrace::agent::push::{LabelPair, PushRequest, RawProfileSeries, RawSample};
    let v: Value = serde_json::from_slice(body).expect("WriteRawRequest JSON");
    let series = v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| RawProfileSeries {
            labels: s["labels"]["labels"]
                .as_array()
                .expect("labels.labels")
                .iter()
                .map(|l| LabelPair {
                    name: l["name"].as_str().unwrap().into(),
                    value: l["value"].as_str().unwrap().into(),
                })
                .collect(),
            samples: s["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|r| RawSample {
                    raw_profile: base64::engine::general_purpose::STANDARD
                        .decode(r["rawProfile"].as_str().expect("rawProfile"))
                        .expect("base64"),
                    id: String::new(),
                })
                .collect(),
        })
        .collect();
    PushRequest { series }
}

/// A receiver of Pyroscope's Connect push API (`/push.v1.PusherService/Push`)
/// and of Parca's WriteRaw through its gateway (`/api/profiles/writeraw`):
/// answers 503 to the first `failing` requests, 200 after, and keeps what it
/// accepted.
/// (address, what it accepted, how many it refused).
type Receiver = (String, Arc<Mutex<Vec<Pushed>>>, Arc<Mutex<usize>>);

fn receiver(failing: usize) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(0));
    let (keep, refuse) = (accepted.clone(), refused.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut stream = reader.into_inner();
            let mut refused = refuse.lock().unwrap();
            if *refused < failing {
                *refused += 1;
                let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            drop(refused);
            let parca = head.starts_with("POST /api/profiles/writeraw ");
            let request = if parca {
                from_parca_json(&body)
            } else {
                assert!(
                    head.starts_with("POST /push.v1.PusherService/Push "),
                    "{head}"
                );
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(&*body)
                    .read_to_end(&mut raw)
                    .expect("a gzipped body");
                leaktrace::agent::push::PushRequest::decode(&*raw).expect("a PushRequest")
            };
            keep.lock().unwrap().push(Pushed {
                head,
                parca,
                request,
            });
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (addr, accepted, refused)
}

fn labels_of(series: &leaktrace::agent::push::RawProfileSeries) -> BTreeMap<String, String> {
    series
        .labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

fn profile_of(raw: &[u8]) -> leaktrace::pprof::proto::Profile {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .read_to_end(&mut bytes)
        .expect("a gzipped profile");
    leaktrace::pprof::proto::Profile::decode(&*bytes).expect("a profile.proto")
}

fn strings(p: &leaktrace::pprof::proto::Profile, ids: impl Iterator<Item = i64>) -> Vec<&str> {
    ids.map(|i| p.string_table[i as usize].as_str()).collect()
}

/// The values (by sample type) of the samples whose stack goes through `function`.
fn through(p: &leaktrace::pprof::proto::Profile, function: &str) -> Vec<i64> {
    let mut sum = vec![0; p.sample_type.len()];
    for s in &p.sample {
        let hit = s.location_id.iter().any(|&l| {
            p.location[l as usize - 1].line.iter().any(|line| {
                let f = &p.function[line.function_id as usize - 1];
                p.string_table[f.name as usize] == function
            })
        });
        if hit {
            for (t, v) in sum.iter_mut().zip(&s.value) {
                *t += v;
            }
        }
    }
    sum
}

#[test]
fn profiles_are_pushed_to_pyroscope_per_target_and_family_through_an_outage() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("agent-pyroscope");
    let c = copy_as(&target("demo"), &dir, "ltpush-c");
    let go = copy_as(&go_target("leaks"), &dir, "ltpush-go");
    // Down for the first three requests: the agent retries with backoff.
    let (url, accepted, refused) = receiver(3);
    let c_target = Killed(Command::new(&c).arg("120").spawn().unwrap());
    let _go_target = Killed(
        Command::new(&go)
            .arg(&dir)
            .args(["1000", "1s"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut agent = Agent::start(&[
        "--match-comm",
        "^ltpush-(c|go)$",
        "--no-kubernetes",
        "--push-url",
        &format!("http://{url}"),
        "--push-interval",
        "2s",
        "--push-tenant",
        "team-a",
        "--parca-url",
        &format!("http://{url}"),
    ]);
    // While the receiver fails: retries counted, tracing goes on.
    assert!(
        wait_until(Duration::from_secs(30), || *refused.lock().unwrap() >= 2),
        "no push reached the receiver"
    );
    let c_heap = |m: &str| {
        metric(
            m,
            "leaktrace_outstanding_bytes",
            &[("service_name", "ltpush-c"), ("kind", "heap")],
        )
    };
    let before = c_heap(&agent.metrics()).expect("the C target's heap");
    std::thread::sleep(Duration::from_secs(2));
    let during = agent.metrics();
    assert!(
        c_heap(&during).unwrap() > before,
        "tracing stopped during the outage"
    );
    let retried = metric(
        &during,
        "leaktrace_agent_push_requests_total",
        &[("endpoint", "pyroscope"), ("result", "retried")],
    );
    assert!(retried.unwrap_or(0.0) >= 1.0, "{during}");

    let memory_pushes = |service: &str, parca: bool| -> Vec<leaktrace::pprof::proto::Profile> {
        let got = accepted.lock().unwrap();
        let mut out = Vec::new();
        for p in got.iter().filter(|p| p.parca == parca) {
            for s in &p.request.series {
                let l = labels_of(s);
                if l["service_name"] == service && l["__name__"] == "memory" {
                    out.extend(s.samples.iter().map(|r| profile_of(&r.raw_profile)));
                }
            }
        }
        out
    };
    assert!(
        wait_until(Duration::from_secs(60), || memory_pushes("ltpush-c", false)
            .len()
            >= 4),
        "fewer than 4 memory profiles of the C target arrived"
    );
    let names: std::collections::BTreeSet<String> = {
        let got = accepted.lock().unwrap();
        for p in got.iter().filter(|p| !p.parca) {
            assert_eq!(
                header(&p.head, "content-type"),
                Some("application/proto"),
                "{}",
                p.head
            );
            assert_eq!(header(&p.head, "content-encoding"), Some("gzip"));
            assert_eq!(header(&p.head, "x-scope-orgid"), Some("team-a"));
        }
        got.iter()
            .filter(|p| !p.parca)
            .flat_map(|p| p.request.series.iter())
            .map(|s| {
                let l = labels_of(s);
                assert!(l["service_name"].starts_with("ltpush-"), "{l:?}");
                assert!(!l["node"].is_empty(), "{l:?}");
                assert!(!l.contains_key("pid"), "{l:?}");
                assert_eq!(
                    l.get("__delta__").map(String::as_str),
                    (l["__name__"] == "memory").then_some("false"),
                    "{l:?}"
                );
                format!("{}/{}", l["service_name"], l["__name__"])
            })
            .collect()
    };
    for want in [
        "ltpush-c/memory",
        "ltpush-c/descriptors",
        "ltpush-go/memory",
        "ltpush-go/goroutine",
    ] {
        assert!(names.contains(want), "no {want} series in {names:?}");
    }

    // alloc_* are deltas: what the leaking site allocated since the last push,
    // not all it ever did (which, as it frees nothing, is what it holds).
    let profiles = memory_pushes("ltpush-c", false);
    let p = &profiles[profiles.len() - 1];
    let types = strings(p, p.sample_type.iter().map(|t| t.r#type));
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    let keys: std::collections::BTreeSet<&str> = strings(
        p,
        p.sample.iter().flat_map(|s| s.label.iter().map(|l| l.key)),
    )
    .into_iter()
    .collect();
    assert!(
        keys.iter()
            .all(|k| ["kind", "verdict", "reachability"].contains(k)),
        "{keys:?}"
    );
    let v = through(p, "remember_session");
    assert!(
        v[1] > 0,
        "nothing allocated at remember_session since the last push: {v:?}"
    );
    assert!(
        v[1] * 2 < v[3],
        "alloc_space {} is not a delta beside inuse_space {}",
        v[1],
        v[3]
    );
    // The real go tool pprof reads what was pushed.
    let file = dir.join("pushed.pb.gz");
    let raw = {
        let got = accepted.lock().unwrap();
        got.iter()
            .flat_map(|p| p.request.series.iter())
            .find(|s| {
                labels_of(s)["service_name"] == "ltpush-c" && labels_of(s)["__name__"] == "memory"
            })
            .map(|s| s.samples[0].raw_profile.clone())
            .unwrap()
    };
    std::fs::write(&file, raw).unwrap();
    let top = common::profiles::pprof(&["-top", "-sample_index=inuse_space"], &file);
    assert!(top.contains("remember_session"), "{top}");

    // Parca got the same targets through WriteRaw's JSON gateway: alloc_*
    // cumulative (at a site that frees nothing, what it holds), and memory
    // profiles with duration 0, as Go's heap profile.
    let parca = memory_pushes("ltpush-c", true);
    assert!(parca.len() >= 2, "{} Parca memory profiles", parca.len());
    let p = &parca[parca.len() - 1];
    assert_eq!(p.duration_nanos, 0);
    let v = through(p, "remember_session");
    assert!(
        v[1] >= v[3] && v[3] > 0,
        "alloc_space {} is not cumulative beside inuse_space {}",
        v[1],
        v[3]
    );
    {
        let got = accepted.lock().unwrap();
        let parca_heads: Vec<&Pushed> = got.iter().filter(|p| p.parca).collect();
        assert_eq!(
            header(&parca_heads[0].head, "content-type"),
            Some("application/json")
        );
        let labels = labels_of(&parca_heads[0].request.series[0]);
        assert!(
            !labels.contains_key("__delta__") && labels.contains_key("__name__"),
            "{labels:?}"
        );
    }

    // An exited target's last profile goes out, then nothing more of it.
    drop(c_target);
    let count_c = || {
        accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|p| {
                p.request
                    .series
                    .iter()
                    .any(|s| labels_of(s)["service_name"] == "ltpush-c")
            })
            .count()
    };
    std::thread::sleep(Duration::from_secs(6));
    let after_exit = count_c();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        count_c(),
        after_exit,
        "profiles of an exited target still come"
    );
    // SIGTERM: the last profiles of what is still traced go out first.
    let before_stop = accepted.lock().unwrap().len();
    assert!(agent.stop().success());
    assert!(
        accepted.lock().unwrap().len() > before_stop,
        "no last push at SIGTERM"
    );
}

/// A fake Kubernetes API server: the pods of node `node` (one), listed and
/// watched, for the bearer token `token` only.
fn fake_kubernetes(node: &str, token: &str, pod: Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (node, token) = (node.to_string(), token.to_string());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (node, token, pod) = (node.clone(), token.clone(), pod.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut stream = reader.into_inner();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let authorized = header(&head, "authorization") == Some(&format!("Bearer {token}"));
                let selected = path.starts_with("/api/v1/pods?")
                    && path.contains(&format!("fieldSelector=spec.nodeName%3D{node}"));
                if !authorized || !selected {
                    let _ = stream.write_all(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                if path.contains("watch=true") {
                    // A watch that stays open with nothing new.
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                    std::thread::sleep(Duration::from_secs(300));
                    return;
                }
                let list = serde_json::json!({
                    "kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": "100"},
                    "items": [pod],
                })
                .to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{list}",
                    list.len()
                );
            });
        }
    });
    addr
}

/// A cgroup shaped like a kubelet's (cgroupfs driver) that a process is moved
/// into; the process goes back to the root and the cgroup is removed when dropped.
struct KubeletCgroup {
    dirs: Vec<PathBuf>,
    root: PathBuf,
    pid: u32,
}

impl KubeletCgroup {
    fn place(pid: u32, pod_uid: &str, container_id: &str) -> KubeletCgroup {
        // cgroup v1 here (the pids controller); v2 has one hierarchy.
        let root = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup hierarchy");
        let pod = root.join(format!("kubepods/besteffort/pod{pod_uid}"));
        let container = pod.join(container_id);
        std::fs::create_dir_all(&container).unwrap();
        std::fs::write(container.join("cgroup.procs"), pid.to_string()).unwrap();
        KubeletCgroup {
            dirs: vec![
                container,
                pod,
                root.join("kubepods/besteffort"),
                root.join("kubepods"),
            ],
            root,
            pid,
        }
    }
}

impl Drop for KubeletCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn a_target_in_a_pods_container_carries_its_pods_labels() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("agent-kubernetes");
    let c = copy_as(&target("demo"), &dir, "ltpod-c");
    let pod_uid = "8a3a5b0e-5c3f-4f0e-9d3b-2f1c0e9a7b61";
    let container_id = "4f2a9c1e7b3d5f6a8c0e2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d2f4a";
    let pod = serde_json::json!({
        "metadata": {
            "name": "api-7d9c", "namespace": "shop", "uid": pod_uid,
            "labels": {"app": "api"},
            "annotations": {"pyroscope.io/service_name": "shop-api"},
        },
        "spec": {"nodeName": "node-a"},
        "status": {"containerStatuses": [
            {"name": "api", "containerID": format!("containerd://{container_id}")},
        ]},
    });
    let api = fake_kubernetes("node-a", "s3cret", pod);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\ncontexts:\n- name: test\n  context: {{cluster: fake, user: agent}}\nclusters:\n- name: fake\n  cluster: {{server: 'http://{api}'}}\nusers:\n- name: agent\n  user: {{token: s3cret}}\n"
        ),
    )
    .unwrap();
    let in_pod = Killed(Command::new(&c).arg("120").spawn().unwrap());
    let _cgroup = KubeletCgroup::place(in_pod.0.id(), pod_uid, container_id);
    // The same program outside the pod: no rule selects it.
    let outside = Killed(Command::new(&c).arg("120").spawn().unwrap());
    let agent = Agent::start(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node",
        "node-a",
        "--namespace",
        "shop",
    ]);
    let labels = [
        ("namespace", "shop"),
        ("pod", "api-7d9c"),
        ("container", "api"),
        ("service_name", "shop-api"),
        ("node", "node-a"),
        ("kind", "heap"),
    ];
    assert!(
        wait_until(Duration::from_secs(60), || metric(
            &agent.metrics(),
            "leaktrace_outstanding_bytes",
            &labels
        )
        .is_some_and(|v| v > 0.0)),
        "no heap series with the pod's labels:\n{}",
        agent.metrics()
    );
    let targets: Value = serde_json::from_str(&agent.get("/debug/targets").1).unwrap();
    let row = |pid: u32| {
        targets
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["pid"] == pid)
            .cloned()
            .unwrap_or_else(|| panic!("PID {pid} not in /debug/targets: {targets}"))
    };
    let traced = row(in_pod.0.id());
    assert_eq!(traced["state"], "traced", "{traced}");
    assert_eq!(traced["container_id"], container_id, "{traced}");
    let left = row(outside.0.id());
    assert_eq!(left["state"], "excluded", "{left}");
    assert_eq!(left["reason"], "no rule selects it", "{left}");
}

#[test]
fn bad_agent_settings_are_one_line_and_status_2() {
    let dir = scratch_dir("agent-usage");
    let config = dir.join("bad.yaml");
    std::fs::write(&config, "rules:\n  - include: { comm: \"(\" }\n").unwrap();
    for (args, says) in [
        (vec!["agent"], "no rule selects anything"),
        (
            vec!["agent", "--config", config.to_str().unwrap()],
            "not a valid regular expression",
        ),
        (
            vec!["agent", "--match-comm", "x", "--push-url", "ftp://x"],
            "--push-url",
        ),
        (
            vec!["agent", "--match-comm", "x", "--max-targets", "0"],
            "--max-targets",
        ),
    ] {
        let out = leaktrace().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The capabilities deploy/daemonset-least-privilege.yaml adds to the
/// leaktrace container, as setpriv names them.
fn least_privilege_capabilities() -> Vec<String> {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset-least-privilege.yaml"),
    )
    .unwrap();
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "add:").skip(1);
    let mut caps = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        match line.strip_prefix("- ") {
            Some(cap) => caps.push(cap.trim().to_lowercase()),
            None => break,
        }
    }
    assert!(
        caps.len() >= 3,
        "no capability list in the manifest: {caps:?}"
    );
    caps
}

/// `leaktrace agent ARGS` with only capabilities `caps` (bounding and
/// inheritable sets: root gets no more at exec).
fn agent_with_capabilities(caps: &[String]) -> Command {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--inh-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(env!("CARGO_BIN_EXE_leaktrace"))
        .arg("agent");
    cmd
}

#[test]
fn the_least_privilege_capabilities_trace_another_users_process_and_sys_admin_is_named() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("agent-capabilities");
    // Another user's process: what a node agent meets.
    let c = copy_as(&target("demo"), &dir, "ltcap-c");
    let mut perms = std::fs::metadata(&dir).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&dir, perms).unwrap();
    let _nobody = Killed(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&c)
            .arg("120")
            .spawn()
            .unwrap(),
    );
    let caps = least_privilege_capabilities();
    let addr = format!("127.0.0.1:{}", free_port());
    let agent = Killed(
        agent_with_capabilities(&caps)
            .args([
                "--listen",
                &addr,
                "--min-age",
                "0s",
                "--discover-every",
                "1s",
            ])
            .args(["--no-kubernetes", "--match-comm", "^ltcap-c$"])
            .env("RUST_LOG", "info")
            .spawn()
            .unwrap(),
    );
    let heap = |text: &str| {
        metric(
            text,
            "leaktrace_outstanding_bytes",
            &[("service_name", "ltcap-c"), ("kind", "heap")],
        )
    };
    assert!(
        wait_until(Duration::from_secs(60), || heap(
            &http_get(&addr, "/metrics", None).1
        )
        .is_some_and(|v| v > 0.0)),
        "with {caps:?} the agent did not trace the target: {}",
        http_get(&addr, "/debug/targets", None).1
    );
    drop(agent);

    let without: Vec<String> = caps.iter().filter(|c| *c != "sys_admin").cloned().collect();
    let out = agent_with_capabilities(&without)
        .args(["--no-kubernetes", "--match-comm", "^ltcap-c$"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("CAP_SYS_ADMIN"), "{err}");
}

/// leaktrace's resident anonymous memory, in KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn targets_that_come_and_go_leave_nothing_in_the_agent() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("agent-churn");
    let churn = copy_as(&target("demo"), &dir, "ltchurn");
    let agent = Agent::start(&[
        "--match-comm",
        "^ltchurn$",
        "--no-kubernetes",
        "--max-targets",
        "6",
    ]);
    // About 12 alive at a time for 20 s: more than the cap, each 2 s long.
    let spawn_wave = |n: usize| -> Vec<Killed> {
        (0..n)
            .map(|_| Killed(Command::new(&churn).arg("2").spawn().unwrap()))
            .collect()
    };
    let mut over_limit = 0.0f64;
    let mut traced = 0.0f64;
    let mut warm = 0;
    let mut waves = Vec::new();
    for second in 0..20 {
        waves.push(spawn_wave(6));
        if waves.len() > 3 {
            waves.remove(0); // reaped (they have exited)
        }
        std::thread::sleep(Duration::from_secs(1));
        let m = agent.metrics();
        over_limit = over_limit
            .max(metric(&m, "leaktrace_agent_targets", &[("state", "over_limit")]).unwrap_or(0.0));
        traced = traced
            .max(metric(&m, "leaktrace_agent_targets", &[("state", "traced")]).unwrap_or(0.0));
        if second == 5 {
            warm = rss_anon_kib(agent.child.id());
        }
    }
    drop(waves);
    assert!(
        (1.0..=6.0).contains(&traced),
        "traced at most --max-targets: {traced}"
    );
    assert!(over_limit >= 1.0, "the cap was never reached");
    // Once they are gone: no series, no target, and memory back near where it was.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = agent.metrics();
            metric(&m, "leaktrace_processes", &[("service_name", "ltchurn")]).is_none()
                && metric(&m, "leaktrace_agent_targets", &[("state", "traced")]) == Some(0.0)
        }),
        "exited targets stayed:\n{}",
        agent.metrics()
    );
    let end = rss_anon_kib(agent.child.id());
    assert!(
        end < warm + 16 * 1024,
        "the agent grew from {warm} KiB to {end} KiB"
    );
}
