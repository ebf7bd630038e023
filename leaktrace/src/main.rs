//! leaktrace: out-of-process leak tracing with eBPF. The work lives in the modules;
//! this file turns the command line into a session and errors into one line.
mod allocator;
mod cli;
mod elf;
mod limits;
mod model;
mod placement;
mod preflight;
mod probes;
mod procmaps;
mod report;
mod series;
mod session;
mod symbolize;
mod target;
mod verdict;

use std::{io::Write, process::ExitCode};

use anyhow::Context;
use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = cli::Cli::parse();
    let opts = match cli.options() {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("leaktrace: {msg} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("leaktrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: session::Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(session::run(opts.clone()))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.final_text(opts.top).as_bytes())?;
    if let Some(path) = &opts.json {
        write_atomically(path, &serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename: a reader never sees half a file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
