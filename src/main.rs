//! The `ssegate` command: parse arguments, load the configuration, run.

use clap::{Parser, Subcommand};
use ssegate::config::{self, Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

/// A reverse-proxy sidecar that adds Server-Sent Events fan-out to an existing web app.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The YAML configuration file.
    #[arg(short, long, global = true, env = "SSEGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration file: print every error, exit 1 if there is one.
    Check,
    /// Run on the embedded defaults with a built-in demo app, at http://127.0.0.1:8080/.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo) = cli.command {
        return run_demo();
    }
    let Some(path) = cli.config else {
        eprintln!("ssegate: no configuration file: pass --config PATH or set SSEGATE_CONFIG");
        return ExitCode::from(1);
    };
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("ssegate: {} is not valid:", path.display());
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Some(Command::Demo) | None => run(config),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("ssegate: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

fn run_demo() -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(ssegate::demo::run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssegate demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssegate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        match ssegate::app::start(config).await {
            Ok(running) => {
                running.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ssegate: {e}");
                ExitCode::from(1)
            }
        }
    })
}
