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
    Demo {
        /// The public listener (the page and the streams).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The internal listener (the publish webhook).
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: std::net::SocketAddr,
    },
    /// Print a JWT that this configuration accepts (auth.mode: jwt), for development and tests.
    Token {
        /// The `sub` claim: who the token is for.
        #[arg(long)]
        sub: String,
        /// A topic or pattern the token may read (`tenant/acme/*`); repeat for more.
        #[arg(long = "topic", value_name = "PATTERN")]
        topics: Vec<String>,
        /// Lifetime of the token (`exp`), like 15m, 1h or 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Allow every topic (the configured admin claim set to true).
        #[arg(long)]
        admin: bool,
        /// Private key (PEM) for RS256, ES256 or EdDSA; without it, HS* with the secret.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Demo {
        listen,
        admin_listen,
    }) = cli.command
    {
        return run_demo(ssegate::demo::DemoOptions {
            listen,
            admin_listen,
        });
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
        Some(Command::Token {
            sub,
            topics,
            ttl,
            admin,
            key,
        }) => {
            let claims = ssegate::auth::mint::Claims {
                sub,
                topics,
                admin,
                ttl: Some(ttl),
            };
            let now = std::time::SystemTime::now();
            match ssegate::auth::mint::mint(&config.auth, &claims, key.as_deref(), now) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ssegate token: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Demo { .. }) | None => run(config, path),
    }
}

/// The runtime, with `workers` threads (`None`: one per core).
fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("ssegate: cannot start the runtime: {e}");
        ExitCode::from(1)
    })
}

fn run_demo(options: ssegate::demo::DemoOptions) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(ssegate::demo::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ssegate demo: {e}");
            ExitCode::from(1)
        }
    }
}

/// Sets up logging as configured (`RUST_LOG` overrides `log.level`) and returns what
/// applies a new `log.level` on reload.
fn init_logging(config: &Config) -> Box<dyn Fn(&str) + Send + Sync> {
    use tracing_subscriber::{
        EnvFilter, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
    };
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = |level: &str| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter_layer, handle) =
        reload::Layer::new(filter(from_env.as_deref().unwrap_or(&config.log.level)));
    let registry = tracing_subscriber::registry().with(filter_layer);
    match config.log.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    Box::new(move |level: &str| {
        if from_env.is_none() {
            let _ = handle.reload(filter(level));
        }
    })
}

fn run(config: Config, path: PathBuf) -> ExitCode {
    let log_level = init_logging(&config);
    let reload = ssegate::app::Reload {
        read: Box::new(move || config::load(&path).map_err(|e| e.to_string())),
        log_level,
    };
    // Before the runtime's threads exist: this edits the environment.
    let inherited =
        match ssegate::activation::Inherited::from_env(config.listen, config.admin_listen) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("ssegate: {e}");
                return ExitCode::from(1);
            }
        };
    let runtime = match runtime(config.workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        // Before binding: a signal that arrives right after `listening` must be caught.
        let signals = match ssegate::shutdown::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ssegate: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        match ssegate::app::start_on(config, Default::default(), inherited).await {
            Ok(running) => {
                running.warn_if_upstream_down();
                running.run_until_signal(signals, Some(reload)).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ssegate: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// jemalloc rather than the system allocator: the publishing thread frees a group's
/// allocations together, which glibc turns into fast-bin consolidation at the next large
/// allocation, and idle streams take less memory (`docs/decisions.md`). Only the binary:
/// the library leaves the choice to whoever embeds it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
