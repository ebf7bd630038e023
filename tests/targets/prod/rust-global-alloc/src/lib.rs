//! The leak both binaries run: ROUNDS rows of ROW_BYTES bytes pushed onto a
//! global table (kept: the leak) and as many dropped again (the distractor).
//!   BIN ROUNDS ROW_BYTES DELAY_MS
//! Prints "ready" once before its first round and "done N" at the end.
use std::{hint::black_box, sync::Mutex, thread::sleep, time::Duration};

static TABLE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

#[inline(never)]
fn make_row(round: usize, bytes: usize) -> Vec<u8> {
    let mut row = vec![0u8; bytes];
    row[0] = round as u8;
    black_box(row)
}

#[inline(never)]
fn keep_row(round: usize, bytes: usize) -> usize {
    let row = make_row(round, bytes);
    let len = row.len();
    TABLE.lock().unwrap().push(row);
    len
}

#[inline(never)]
fn scratch_row(round: usize, bytes: usize) -> usize {
    let row = make_row(round, bytes);
    black_box(row).len()
}

pub fn run() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("usage: BIN ROUNDS ROW_BYTES DELAY_MS"))
        .collect();
    let [rounds, bytes, delay_ms] = args[..] else {
        panic!("usage: BIN ROUNDS ROW_BYTES DELAY_MS");
    };
    // The table never reallocates while traced: only the rows are outstanding.
    TABLE.lock().unwrap().reserve(rounds);
    println!("ready");
    let mut sum = 0;
    for round in 0..rounds {
        sum += keep_row(round, bytes);
        sum += scratch_row(round, bytes);
        sleep(Duration::from_millis(delay_ms as u64));
    }
    println!("done {sum}");
}
