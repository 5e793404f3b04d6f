//! ssegate's load generator: SSE fan-out, publish throughput and job-topic memory, over
//! raw TCP (or HTTP/2 streams, `--h2`) with a strict SSE reader, against ssegate, Nchan,
//! Pushpin or the floor.
//!
//! ```text
//! cargo bench --bench loadgen -- run --streams 1000 --rate 50 --duration 10 --pid $PID
//! cargo bench --bench loadgen -- run --streams 0 --rate 0 --duration 5 --batch 100
//! cargo bench --bench loadgen -- jobs --count 100000 --pid $PID --wait 30
//! cargo bench --bench loadgen -- selftest
//! ```
//!
//! `benches/README.md` has the scenarios, the commands and the latest numbers. A plain
//! `cargo bench` (no arguments) does nothing: load tests never run by accident in CI.
// Benchmarks measure wall-clock time, which a paused tokio clock must never stand in for.
#![allow(clippy::disallowed_types, unreachable_pub)]
// The report's `json!` literal has more keys than the default macro recursion allows.
#![recursion_limit = "256"]

mod h2;
mod http;
mod jobs;
mod run;
mod sse;
mod stats;
mod target;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Load generator for ssegate (and Nchan, Pushpin, the floor).
#[derive(Parser)]
#[command(name = "loadgen")]
struct Cli {
    /// Runtime worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Also print the report as one line of JSON (prefixed `JSON `).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N streams over T topics; publish at a rate for a duration, or a burst.
    Run(run::RunArgs),
    /// Create and close job topics one stream at a time; follow the server's memory.
    Jobs(jobs::JobsArgs),
    /// Check the HTTP, SSE and histogram code on known input.
    Selftest,
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench` to the arguments of a harness-less bench.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() <= 1 {
        println!("loadgen: no scenario given; nothing to do (see benches/README.md)");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse_from(args);
    raise_nofile();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run::run(a).await,
            Command::Jobs(a) => jobs::run(a).await,
            Command::Selftest => selftest().map(|()| serde_json::json!({"selftest": "ok"})),
        }
    });
    match result {
        Ok(report) => {
            if cli.json {
                println!("JSON {report}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit of open files to the hard one: one stream is one descriptor.
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("loadgen: open-file limit {n}"),
        Err(e) => eprintln!("loadgen: cannot raise the open-file limit: {e}"),
    }
}

fn selftest() -> Result<(), String> {
    http::selftest()?;
    sse::selftest()?;
    stats::selftest()?;
    run::selftest()?;
    target::selftest()?;
    println!("selftest: ok");
    Ok(())
}
