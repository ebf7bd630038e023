//! The leaktrace command: turns the command line into a session, and errors
//! into one line. The work lives in the library's modules.
use std::{io::Write, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use leaktrace::{
    cli::{AgentArgs, Cli, View},
    report::{self, Report},
    session, top,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, live) = match cli.view {
        Some(View::Top(args)) => (args, true),
        Some(View::Agent(args)) => return agent(args),
        None => (cli.trace, false),
    };
    // Log lines would tear the full-screen view: there, only RUST_LOG asks for them.
    let default = if live { "off" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp(None)
        .init();
    leaktrace::preflight::mount_tracefs();
    let opts = match args.options() {
        Ok(opts) => opts,
        Err(msg) => {
            eprintln!("leaktrace: {msg} (see --help)");
            return ExitCode::from(2);
        }
    };
    let result = if live { run_top(opts) } else { run(opts) };
    match result {
        Ok(code) => code,
        // The reader went away (`leaktrace … | head`): nothing left to say.
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("leaktrace: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `leaktrace agent`: until SIGTERM.
fn agent(args: AgentArgs) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_secs()
        .init();
    let (config, probing) = match args.config() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("leaktrace agent: {msg} (see --help)");
            return ExitCode::from(2);
        }
    };
    leaktrace::agent::join_host_cgroup_namespace();
    leaktrace::preflight::mount_tracefs();
    // Two workers: the HTTP side answers while the session works.
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(leaktrace::agent::run(config, probing)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("leaktrace agent: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: session::Options) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    check_outputs(&opts)?;
    let report = runtime.block_on(session::run(opts.clone(), None))?;
    // The files first: a reader of stdout that went away (`| head`) loses
    // only the text.
    for output in &opts.outputs {
        output.write(&report)?;
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.final_text(opts.top).as_bytes())?;
    stdout.flush()?;
    Ok(gate(&opts, &report))
}

/// --fail-on: status 3 and the sites on stderr when any qualifies.
fn gate(opts: &session::Options, report: &Report) -> ExitCode {
    let Some(on) = opts.fail_on else {
        return ExitCode::SUCCESS;
    };
    let failing = report.failing(on);
    if failing.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "leaktrace: --fail-on {}: {} site{} qualify:",
        on.name(),
        failing.len(),
        if failing.len() == 1 { "" } else { "s" }
    );
    for s in failing {
        eprintln!("  {}", report::site_line(s));
    }
    ExitCode::from(GATE_FAILED)
}

/// The exit status of a run --fail-on fails.
const GATE_FAILED: u8 = 3;

/// Every --output can be written: checked before anything is attached.
fn check_outputs(opts: &session::Options) -> anyhow::Result<()> {
    for output in &opts.outputs {
        output.check().map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// `leaktrace top`: the view on a blocking thread, the pump on the runtime.
fn run_top(mut opts: session::Options) -> anyhow::Result<ExitCode> {
    opts.quiet = true; // the view replaces the periodic tables
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("leaktrace top needs a terminal: run it in one, or trace without top");
    }
    check_outputs(&opts)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let export_dir = std::env::current_dir().context("the working directory")?;
    let report = runtime.block_on(async {
        let (reports, view_reports) = tokio::sync::watch::channel(None);
        let (view_quit, quit) = tokio::sync::watch::channel(false);
        let view =
            tokio::task::spawn_blocking(move || top::run(view_reports, view_quit, export_dir));
        let report = session::run(
            opts.clone(),
            Some(session::Live {
                reports,
                quit,
                requests: None,
            }),
        )
        .await;
        // The pump dropped its sender: the view sees it and restores the terminal.
        let view = view.await.context("the view")?;
        view.context("the terminal")?;
        report
    })?;
    for output in &opts.outputs {
        output.write(&report)?;
    }
    Ok(gate(&opts, &report))
}
