//! Leaks three calls deep in a default release build (no frame pointers), each
//! next to a distractor that gives back what it makes. Every caller uses what
//! its callee returns, so no call on a chain is a tail call.
//!   rust-leaks ROUNDS DELAY_MS    ROUNDS rounds, DELAY_MS apart, then exit.
//! Each round leaks:
//!   rows      main → ingest_batches → grow_table → make_row → malloc
//!             (a Vec<u8> pushed onto the global TABLE)
//!   handlers  main → register_handlers → install_handler → make_handler → malloc
//!             (Box::leak)
//! and makes and drops the same again through scratch_batches (pushed onto
//! SCRATCH, which is then cleared) and probe_handlers.
use std::{
    hint::black_box,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::sleep,
    time::Duration,
};

static TABLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
static SCRATCH: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
static HANDLERS: AtomicUsize = AtomicUsize::new(0);

struct Handler {
    id: usize,
    name: [u8; 120],
}

#[inline(never)]
fn make_row(round: usize) -> Vec<u8> {
    let mut row = Vec::with_capacity(1000 + round % 10);
    row.extend_from_slice(&round.to_le_bytes());
    black_box(row)
}

#[inline(never)]
fn grow_table(round: usize) -> usize {
    let row = make_row(round);
    let len = row.len();
    TABLE.lock().unwrap().push(row);
    len
}

#[inline(never)]
fn ingest_batches(round: usize) -> usize {
    grow_table(round) + 1
}

#[inline(never)]
fn make_handler(round: usize) -> &'static Handler {
    let h = Box::leak(Box::new(Handler {
        id: round,
        name: [round as u8; 120],
    }));
    black_box(&*h)
}

#[inline(never)]
fn install_handler(round: usize) -> usize {
    let h = make_handler(round);
    HANDLERS.fetch_add(1, Ordering::Relaxed);
    h.id + h.name[0] as usize
}

#[inline(never)]
fn register_handlers(round: usize) -> usize {
    install_handler(round) + 2
}

#[inline(never)]
fn make_scratch_row(round: usize) -> Vec<u8> {
    let mut row = Vec::with_capacity(2000 + round % 10);
    row.extend_from_slice(&round.to_be_bytes());
    black_box(row)
}

#[inline(never)]
fn fill_scratch(round: usize) -> usize {
    let row = make_scratch_row(round);
    let len = row.len();
    let mut scratch = SCRATCH.lock().unwrap();
    scratch.push(row);
    scratch.clear();
    len
}

#[inline(never)]
fn scratch_batches(round: usize) -> usize {
    fill_scratch(round) + 3
}

#[inline(never)]
fn make_probe(round: usize) -> Box<Handler> {
    black_box(Box::new(Handler {
        id: round,
        name: [0; 120],
    }))
}

#[inline(never)]
fn check_handler(round: usize) -> usize {
    let h = make_probe(round);
    h.id + h.name[1] as usize
}

#[inline(never)]
fn probe_handlers(round: usize) -> usize {
    check_handler(round) + 4
}

#[inline(never)]
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: rust-leaks ROUNDS DELAY_MS"))
        .collect();
    let [rounds, delay_ms] = args[..] else {
        panic!("usage: rust-leaks ROUNDS DELAY_MS");
    };
    let mut sum = 0;
    for round in 0..rounds {
        sum += ingest_batches(round);
        sum += register_handlers(round);
        sum += scratch_batches(round);
        sum += probe_handlers(round);
        sleep(Duration::from_millis(delay_ms as u64));
    }
    println!("done {sum} {}", TABLE.lock().unwrap().len());
}
