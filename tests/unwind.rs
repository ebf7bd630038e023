//! Stacks on production builds: real probes on programs built the way they ship
//! (gcc and g++ -O2 without frame pointers, Rust's default release profile,
//! Debian's redis-server), asserting each leak's whole call chain. Run as root.
//! The targets are in tests/targets/prod/; each leaks three calls deep, never
//! in tail position, next to distractors of the same shape that give back what
//! they make.
mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use common::{
    Killed, free_port, leaktrace,
    prod::{
        assert_chain, cargo_release, cc_target, chain_site, chain_sites, function, functions,
        prod_sources, sites, sites_through, stack, stacks, trace_command,
    },
    report, root_or_skip, scratch_dir,
};
use serde_json::Value;

/// tests/targets/prod/leaks.c: what each round leaks, by kind and chain
/// (innermost first); fopen leaks a FILE and its descriptor.
const C_LEAKS: &[(&str, &[&str])] = &[
    (
        "heap",
        &["build_record", "handle_request", "serve_requests", "main"],
    ),
    ("heap", &["open_log", "rotate_log", "run_logger", "main"]),
    ("fd", &["open_log", "rotate_log", "run_logger", "main"]),
    (
        "fd",
        &["open_config_file", "read_config", "load_configs", "main"],
    ),
    (
        "fd",
        &["open_spool_entry", "scan_spool_dir", "scan_spool", "main"],
    ),
];

/// The same shapes, given back in the same round.
const C_DISTRACTORS: &[(&str, &[&str])] = &[
    (
        "heap",
        &["build_reply", "handle_ping", "serve_pings", "main"],
    ),
    (
        "heap",
        &["open_probe_log", "check_log", "probe_logger", "main"],
    ),
    (
        "fd",
        &["open_probe_log", "check_log", "probe_logger", "main"],
    ),
    (
        "fd",
        &[
            "open_temp_file",
            "read_temp_config",
            "check_configs",
            "main",
        ],
    ),
    (
        "fd",
        &["open_sweep_entry", "sweep_spool_dir", "sweep_spool", "main"],
    ),
];

/// One site per call site, each with its whole chain; above the leaf only the
/// C library's own frames (malloc's caller in fopen, the open64 wrapper…); the
/// leaks hold one allocation or descriptor per round, the distractors none.
fn assert_c_target(r: &Value, pid: u64, rounds: u64) -> Vec<&Value> {
    let exe = r["targets"][0]["exe"].as_str().unwrap();
    let mut leaks = Vec::new();
    for (kind, chain) in C_LEAKS {
        let s = chain_site(r, pid, kind, chain);
        let leaf = s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .position(|f| function(f) == Some(chain[0]))
            .unwrap();
        assert!(
            s["frames"].as_array().unwrap()[..leaf]
                .iter()
                .all(|f| f["module"].as_str().is_some_and(|m| m != exe)),
            "only libc above {}: {}",
            chain[0],
            stack(s)
        );
        assert_eq!(s["outstanding_count"], rounds, "{}", stack(s));
        leaks.push(s);
    }
    for (kind, chain) in C_DISTRACTORS {
        let s = chain_site(r, pid, kind, chain);
        assert_eq!(s["outstanding_count"], 0, "{}", stack(s));
        assert_eq!(s["total_count"], rounds, "{}", stack(s));
    }
    leaks
}

#[test]
fn c_o2_leaks_have_their_whole_call_chain_and_leak_verdicts() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_target("leaks.c", "-O2");
    let dir = scratch_dir("unwind-c-O2");
    // 12 s of steady leaking: long enough for a leak verdict (docs/verdicts.md).
    let (r, pid) = trace_command(&dir, &exe, &["120", "100"]);
    for s in assert_c_target(&r, pid, 120) {
        assert_eq!(s["verdict"], "leak", "{}", stack(s));
    }
}

#[test]
fn c_o1_descriptors_through_glibc_wrappers_have_one_site_per_call_and_no_unnamed_frame() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_target("leaks.c", "-O1");
    let dir = scratch_dir("unwind-c-O1");
    let (r, pid) = trace_command(&dir, &exe, &["40", "50"]);
    assert_c_target(&r, pid, 40);
    for s in r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pid)
    {
        assert!(
            s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["function"].is_string()),
            "a frame without a function: {}",
            stack(s)
        );
    }
}

#[test]
fn cpp_o2_leaks_are_each_under_their_own_function_not_operator_new() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_target("leaks.cpp", "-O2");
    let dir = scratch_dir("unwind-cpp-O2");
    const ROUNDS: u64 = 40;
    let (r, pid) = trace_command(&dir, &exe, &[&ROUNDS.to_string(), "50"]);
    // new Session, kept in a std::map.
    let session = [
        "create_session",
        "register_client",
        "accept_clients",
        "main",
    ];
    let s = chain_site(&r, pid, "heap", &session);
    assert_eq!(s["outstanding_count"], ROUNDS, "{}", stack(s));
    // A string a round (its characters, made in libstdc++) and the vector's
    // buffer, grown through std::vector's out-of-line _M_realloc_insert.
    let lines = ["store_line", "append_line", "ingest_lines", "main"];
    let held: u64 = chain_sites(&r, pid, "heap", &lines)
        .iter()
        .map(|s| s["outstanding_count"].as_u64().unwrap())
        .sum();
    assert_eq!(held, ROUNDS + 1, "a string a round and one vector buffer");
    // new std::ifstream left open: the object, and what libstdc++ and libc make
    // for it (buffer, FILE), each once a round; its descriptor under the same chain.
    let input = ["open_input", "track_input", "open_inputs", "main"];
    for s in chain_sites(&r, pid, "heap", &input) {
        assert_eq!(s["outstanding_count"], ROUNDS, "{}", stack(s));
    }
    let s = chain_site(&r, pid, "fd", &input);
    assert_eq!(s["outstanding_count"], ROUNDS, "{}", stack(s));
    // Distractors: the same shapes, deleted.
    for (kind, chain) in [
        (
            "heap",
            &["create_ping_session", "answer_ping", "ping_clients", "main"],
        ),
        (
            "heap",
            &[
                "store_scratch_line",
                "scratch_line",
                "scratch_lines",
                "main",
            ],
        ),
        (
            "heap",
            &["open_probe_input", "check_input", "probe_inputs", "main"],
        ),
        (
            "fd",
            &["open_probe_input", "check_input", "probe_inputs", "main"],
        ),
    ] {
        for s in chain_sites(&r, pid, kind, chain) {
            assert_eq!(s["outstanding_count"], 0, "{}", stack(s));
        }
    }
}

#[test]
fn rust_release_leaks_have_their_whole_call_chain() {
    if !root_or_skip() {
        return;
    }
    let exe = cargo_release("rust-leaks").join("rust-leaks");
    let dir = scratch_dir("unwind-rust");
    const ROUNDS: u64 = 40;
    let (r, pid) = trace_command(&dir, &exe, &[&ROUNDS.to_string(), "50"]);
    for chain in [
        // A Vec<u8> a round, pushed onto a global Mutex<Vec<Vec<u8>>>.
        [
            "rust_leaks::make_row",
            "rust_leaks::grow_table",
            "rust_leaks::ingest_batches",
            "rust_leaks::main",
        ],
        // Box::leak.
        [
            "rust_leaks::make_handler",
            "rust_leaks::install_handler",
            "rust_leaks::register_handlers",
            "rust_leaks::main",
        ],
    ] {
        let s = chain_site(&r, pid, "heap", &chain);
        assert_eq!(s["outstanding_count"], ROUNDS, "{}", stack(s));
    }
    // The same shapes, dropped.
    for chain in [
        [
            "rust_leaks::make_scratch_row",
            "rust_leaks::fill_scratch",
            "rust_leaks::scratch_batches",
            "rust_leaks::main",
        ],
        [
            "rust_leaks::make_probe",
            "rust_leaks::check_handler",
            "rust_leaks::probe_handlers",
            "rust_leaks::main",
        ],
    ] {
        let s = chain_site(&r, pid, "heap", &chain);
        assert_eq!(s["outstanding_count"], 0, "{}", stack(s));
        assert_eq!(s["total_count"], ROUNDS, "{}", stack(s));
    }
}

/// A RESP command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("redis-server on {port}: {e}"),
            Err(_) => sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends `commands` in one write and checks each is answered `reply`.
fn pipeline(conn: &mut TcpStream, commands: &[Vec<u8>], reply: &[u8]) {
    conn.write_all(&commands.concat()).unwrap();
    let mut replies = vec![0; reply.len() * commands.len()];
    conn.read_exact(&mut replies).unwrap();
    assert!(
        replies.chunks(reply.len()).all(|r| r == reply),
        "redis said no"
    );
}

/// The number of keys the test sets: one dict entry and one 100-byte value each.
const KEYS: u64 = 20_000;

/// Debian's redis-server allocates through Debian's jemalloc (its plain
/// names, which interpose the C library's): the key space is attributed to
/// redis's own functions, and deleting every key gives it all back.
#[test]
fn redis_from_debian_has_few_sites_named_after_its_own_functions() {
    if !root_or_skip() {
        return;
    }
    let port = free_port();
    let dir = scratch_dir("unwind-redis");
    let redis = Killed(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (run cargo xtask setup)"),
    );
    let pid = redis.0.id() as u64;
    let mut conn = connect(port);
    conn.write_all(&resp(&[b"PING"])).unwrap();
    let mut pong = [0; 7];
    conn.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");

    // leaktrace logs "tracing PID …" once its probes are attached.
    let json = dir.join("r.json");
    let mut tracer = leaktrace()
        .env("RUST_LOG", "info")
        .args(["--pid", &pid.to_string(), "-d", "15s", "-q", "-o"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (attached, on_attach) = mpsc::channel();
    let stderr = BufReader::new(tracer.stderr.take().unwrap());
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains(&format!("tracing PID {pid}")) {
                let _ = attached.send(());
            }
            log += &line;
            log.push('\n');
        }
        log
    });
    on_attach
        .recv_timeout(Duration::from_secs(30))
        .expect("leaktrace attached to redis");

    let start = Instant::now();
    let value = [b'v'; 100];
    for batch in 0..KEYS / 1000 {
        let commands: Vec<Vec<u8>> = (batch * 1000..(batch + 1) * 1000)
            .map(|i| resp(&[b"SET", format!("key:{i}").as_bytes(), &value]))
            .collect();
        pipeline(&mut conn, &commands, b"+OK\r\n");
    }
    let filled = start.elapsed();
    eprintln!("{KEYS} keys set in {filled:?}");
    for batch in 0..KEYS / 1000 {
        let commands: Vec<Vec<u8>> = (batch * 1000..(batch + 1) * 1000)
            .map(|i| resp(&[b"DEL", format!("key:{i}").as_bytes()]))
            .collect();
        pipeline(&mut conn, &commands, b":1\r\n");
    }
    let emptied = start.elapsed();
    eprintln!("and deleted after {emptied:?}");
    // ~0.2 s untraced, ~3 s traced on a 2-core VM (each malloc and free traps).
    assert!(
        emptied < Duration::from_secs(12),
        "{KEYS} SETs and DELs took {emptied:?} traced: too slow for the 15 s trace"
    );
    let out = tracer.wait_with_output().unwrap();
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        log.join().unwrap()
    );
    assert!(out.status.success());
    let r = report(&json);

    // One site per call path: a few dozen, not one per stack of garbage.
    let heap = sites(&r, pid, "heap");
    eprintln!("{} heap sites", heap.len());
    assert!(heap.len() <= 300, "{} heap sites", heap.len());
    for (cause, n) in r["lost"].as_object().unwrap() {
        assert_eq!(n, 0, "lost: {cause}");
    }
    let probed = &r["targets"][0]["allocators"];
    assert_eq!(probed.as_array().unwrap().len(), 1, "{probed}");
    assert_eq!(probed[0]["name"], "jemalloc", "{probed}");

    // Each SET adds a dict entry: zmalloc in dictAddRaw, under the command.
    let entry = [
        "zmalloc",
        "dictAddRaw",
        "dbAdd",
        "setKey",
        "setGenericCommand",
        "setCommand",
        "call",
        "processCommand",
        "processInputBuffer",
        "readQueryFromClient",
    ]
    .map(Some);
    let entries: Vec<&Value> = heap
        .iter()
        .copied()
        .filter(|s| functions(s).starts_with(&entry))
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one site for SET's dict entries; the sites through dictAddRaw:\n{}",
        stacks(&sites_through(&r, pid, "heap", "dictAddRaw"))
    );
    assert_eq!(entries[0]["total_count"], KEYS, "{}", stack(entries[0]));
    assert_eq!(entries[0]["outstanding_count"], 0, "{}", stack(entries[0]));

    // The values: an sds each, made as the query is parsed, held by the keys
    // until deleted (100 bytes: no trim, one allocation each).
    let values: Vec<&Value> = sites_through(&r, pid, "heap", "_sdsnewlen")
        .into_iter()
        .filter(|s| functions(s).contains(&Some("createStringObject")))
        .collect();
    assert_eq!(values.len(), 1, "{}", stacks(&values));
    let top = values[0];
    let leaf = assert_chain(
        top,
        &[
            "zmalloc_usable",
            "_sdsnewlen",
            "createStringObject",
            "processMultibulkBuffer",
            "processInputBuffer",
            "readQueryFromClient",
        ],
    );
    assert_eq!(leaf, 0, "the caller of malloc first: {}", stack(top));
    assert!(
        functions(top)
            .windows(2)
            .any(|w| w == [Some("aeMain"), Some("main")]),
        "down to the event loop: {}",
        stack(top)
    );
    assert_eq!(top["total_count"], KEYS, "{}", stack(top));
    assert_eq!(top["outstanding_count"], 0, "{}", stack(top));
    drop(redis);
}

#[test]
fn a_library_loaded_later_with_dlopen_unwinds_like_the_rest() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("unwind-dlopen");
    let plugin = dir.join("libplugin.so");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-shared", "-fPIC", "-o"])
        .arg(&plugin)
        .arg(prod_sources().join("plugin.c"))
        .status()
        .expect("gcc");
    assert!(status.success(), "building the plugin");
    let host = cc_target("host.c", "-O2");
    // Loaded 1 s in: leaktrace learns of it from the memory map refreshes.
    let (r, pid) = trace_command(&dir, &host, &[plugin.to_str().unwrap(), "1000", "100"]);
    // Calls made before the next memory-map refresh (every 100 ms) find the
    // library unknown: their stacks stop at its frame, and say so.
    let chain = [
        "make_entry",
        "remember_entry",
        "plugin_handle",
        "dispatch",
        "main",
    ];
    let (whole, early): (Vec<&Value>, Vec<&Value>) = sites_through(&r, pid, "heap", chain[0])
        .into_iter()
        .partition(|s| functions(s).len() > 2);
    assert_eq!(whole.len(), 1, "{}", stacks(&whole));
    assert_chain(whole[0], &chain);
    assert_eq!(
        whole[0]["frames"][0]["module"]
            .as_str()
            .map(|m| m.ends_with("libplugin.so")),
        Some(true),
        "{}",
        stack(whole[0])
    );
    for s in &early {
        assert_eq!(
            functions(s),
            [
                Some("make_entry"),
                Some("[stack ends: return address in no known code]")
            ],
            "{}",
            stack(s)
        );
    }
    let held = |sites: &[&Value]| -> u64 {
        sites
            .iter()
            .map(|s| s["outstanding_count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(held(&whole) + held(&early), 100);
    assert!(held(&whole) >= 90, "{}", stack(whole[0]));
}

#[test]
fn a_stack_through_a_pending_return_probe_goes_on_to_the_callers() {
    if !root_or_skip() {
        return;
    }
    // malloc (the program's own, probed with a return probe) opens a file: at
    // that open, malloc's return address is leaktrace's uretprobe trampoline.
    let exe = cc_target("inner_open.c", "-O2");
    let dir = scratch_dir("unwind-trampoline");
    let (r, pid) = trace_command(&dir, &exe, &["20", "10"]);
    let fd = chain_site(
        &r,
        pid,
        "fd",
        &["malloc", "make_buffer", "fill_buffers", "main"],
    );
    assert_eq!(fd["outstanding_count"], 20, "{}", stack(fd));
    let heap = chain_site(&r, pid, "heap", &["make_buffer", "fill_buffers", "main"]);
    assert_eq!(heap["outstanding_count"], 20, "{}", stack(heap));
}

/// The frames of each stack gdb printed (`bt`) that lie in `source`, as
/// (function, line), innermost first.
fn gdb_stacks(bt: &str, source: &str) -> Vec<Vec<(String, u64)>> {
    let mut stacks: Vec<Vec<(String, u64)>> = Vec::new();
    for line in bt.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let (number, frame) = rest.split_once(' ').unwrap_or((rest, ""));
        if number == "0" {
            stacks.push(Vec::new());
        }
        // `#1  0x… in handle_request (i=3) at /src/leaks.c:52`, or without
        // the address for a frame at the start of a line.
        let frame = frame.trim_start();
        let frame = frame.split_once(" in ").map_or(frame, |(_, f)| f);
        let (Some((function, _)), Some((_, place))) =
            (frame.split_once(" ("), frame.rsplit_once(" at "))
        else {
            continue;
        };
        let Some((file, line)) = place.rsplit_once(':') else {
            continue;
        };
        if file.ends_with(source)
            && let (Some(stack), Ok(line)) = (stacks.last_mut(), line.trim().parse())
        {
            stack.push((function.to_string(), line));
        }
    }
    stacks
}

#[test]
fn stacks_agree_with_gdb_backtraces_at_the_same_calls() {
    if !root_or_skip() {
        return;
    }
    let exe = cc_target("leaks.c", "-O2");
    // gdb stops at every malloc and every openat syscall of three rounds and
    // prints the backtrace, unwound by its own DWARF unwinder.
    let gdb_dir = scratch_dir("unwind-gdb");
    let script = gdb_dir.join("bt.gdb");
    std::fs::write(
        &script,
        "set pagination off\nset backtrace past-main on\n\
         catch syscall openat\ncommands\nbt\ncontinue\nend\n\
         break malloc\ncommands\nbt\ncontinue\nend\nrun\n",
    )
    .unwrap();
    let gdb = Command::new("gdb")
        .args(["-batch", "-nx", "-x"])
        .arg(&script)
        .arg("--args")
        .arg(&exe)
        .args(["3", "10"])
        .current_dir(&gdb_dir)
        .output()
        .expect("gdb (run cargo xtask setup)");
    let bt = String::from_utf8_lossy(&gdb.stdout);
    let truth = gdb_stacks(&bt, "leaks.c");
    assert!(truth.len() > 20, "gdb stopped {} times:\n{bt}", truth.len());

    let dir = scratch_dir("unwind-gdb-leaktrace");
    let (r, pid) = trace_command(&dir, &exe, &["3", "10"]);
    let mut compared = 0;
    for kind in ["heap", "fd"] {
        for s in sites(&r, pid, kind) {
            let ours: Vec<(String, u64)> = s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["file"].as_str().is_some_and(|f| f.ends_with("leaks.c")))
                .map(|f| {
                    (
                        function(f).unwrap().to_string(),
                        f["line"].as_u64().unwrap(),
                    )
                })
                .collect();
            if ours.is_empty() {
                continue; // before main: the loader's and libc's own
            }
            assert!(
                truth.contains(&ours),
                "no gdb backtrace has {ours:?}: {}",
                stack(s)
            );
            compared += 1;
        }
    }
    // Five leaks and five distractors, heap and descriptors.
    assert!(compared >= 10, "{compared} sites compared");
}
