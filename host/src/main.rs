//! The `wasmill` binary: command-line parsing and wiring, nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod cli;

/// mimalloc instead of the system allocator: messages allocate small buffers at a high rate
/// (a broker reply parsed into values, a message's uuid, metadata and payload), and glibc's
/// malloc/free were the top entries of the consume path's profile. Called as `cli::allocator`
/// explains (plain blocks where they are aligned enough).
#[global_allocator]
static GLOBAL: cli::allocator::Mimalloc = cli::allocator::Mimalloc;

/// Wasmill: message handlers as WebAssembly components.
#[derive(Parser)]
#[command(name = "wasmill", version, about)]
struct Cli {
    /// Log format (the level comes from RUST_LOG, default `info`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "WASMILL_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the host: router, plugins folder (hot reload), HTTP API.
    Run {
        /// Config file (default: ./wasmill.toml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Plugins folder (default: the config's, or ./plugins).
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// HTTP listen address (default: the config's, or 127.0.0.1:8080).
        #[arg(long)]
        http: Option<String>,
    },
    /// Says which world a component implements and what it imports; with --config, checks a
    /// whole configuration (handlers, sidecars, middleware, worlds, grants, backends' settings)
    /// without running it.
    Check {
        /// The .wasm file.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// A config file to check as `wasmill run` would before serving.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Plugins folder (with --config; default: the config's).
        #[arg(long, requires = "config")]
        plugins: Option<PathBuf>,
    },
    /// Publishes a message to a topic of a running host.
    Publish(cli::PublishArgs),
    /// Prints the messages published to a topic of a running host.
    Tail(cli::TailArgs),
    /// Builds plugin projects into .wasm components.
    Build(cli::BuildArgs),
    /// Scaffolds a plugin project.
    New(cli::NewArgs),
    /// Drives the router in-process and prints throughput, latency and memory.
    Bench(cli::BenchArgs),
    /// Sends a request to a topic of a running host and prints its reply.
    Request(cli::components::RequestArgs),
    /// Sends the messages of a poison topic back to the topics they failed on.
    Replay(cli::components::ReplayArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run {
            config,
            plugins,
            http,
        } => {
            let options = wasmill::app::RunOptions {
                config,
                plugins_dir: plugins,
                http,
            };
            wasmill::app::run(options, wasmill::router::plugin::shutdown_signal())
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Check {
            file,
            config,
            plugins,
        } => match (file, config) {
            (_, Some(config)) => cli::check_config(&config, plugins).await,
            (Some(file), None) => cli::check(&file),
            (None, None) => Err(anyhow::anyhow!("give FILE.wasm or --config FILE")),
        },
        Command::Publish(a) => cli::publish(a).await,
        Command::Tail(a) => cli::tail(a).await,
        Command::Build(a) => cli::build(a),
        Command::New(a) => cli::new(a),
        Command::Bench(a) => cli::bench(a).await,
        Command::Request(a) => cli::components::request(a).await,
        Command::Replay(a) => cli::components::replay(a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
