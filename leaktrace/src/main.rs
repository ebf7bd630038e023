//! The leaktrace command: turns the command line into a session, and errors
//! into one line. The work lives in the library's modules.
use std::{io::Write, process::ExitCode};

use clap::Parser;
use leaktrace::{cli::Cli, session};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let opts = match Cli::parse().options() {
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
    for output in &opts.outputs {
        output.write(&report)?;
    }
    Ok(())
}
