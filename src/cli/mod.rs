//! The `herald` command line: `serve`, and small clients (`publish`, `tail`, `forward`,
//! `webhook`, `token`) for trying it out and for scripts. `anyhow` lives here, at the binary's
//! edge.
//!
//! - `args`: the clap definitions (every flag, its env var, its help);
//! - `client`: one-shot commands against a running server;
//! - `follow`: commands that follow channels over SSE (`tail`, `forward`);
//! - `sse`: the small `text/event-stream` parser they use.

mod args;
mod client;
mod follow;
mod sse;
mod webhook;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LogFormat};
use args::{BenchCommand, Cli, Command, ServeArgs};
use client::{publish, token};
use follow::{forward, tail};
pub use sse::{SseEvent, SseReader};
use webhook::webhook;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sets up logging once its config (which may ask for JSON) is read.
    if !matches!(cli.command, Command::Serve(_)) {
        init_tracing(LogFormat::Text);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Publish(args) => publish(args).await,
            Command::Tail(args) => tail(args).await,
            Command::Forward(args) => forward(args).await,
            Command::Webhook(command) => webhook(command).await,
            Command::Token(args) => token(args),
            Command::Init(args) => init(args),
            Command::Completions { shell } => {
                let mut cli = <Cli as clap::CommandFactory>::command();
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut cli, "herald", &mut out);
                print_all(&out)
            }
            Command::Man => {
                let cli = <Cli as clap::CommandFactory>::command();
                let mut out = Vec::new();
                clap_mangen::Man::new(cli).render(&mut out)?;
                print_all(&out)
            }
            Command::Bench(command) => match command {
                BenchCommand::Idle(args) => crate::bench::idle::run(args).await,
                BenchCommand::Fanout(args) => crate::bench::fanout::run(args, false).await,
                BenchCommand::Channels(args) => crate::bench::fanout::run(args, true).await,
                BenchCommand::Flood(args) => crate::bench::flood::run(args).await,
                BenchCommand::Publish(args) => crate::bench::publish::run(args).await,
                BenchCommand::Webhooks(args) => crate::bench::webhooks::run(args).await,
                BenchCommand::Presence(args) => crate::bench::presence::run(args).await,
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: many errors quote their source in their own
/// message, and printing the whole chain would repeat it.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let loaded = Config::load(args.config.as_deref());
    init_tracing(
        loaded
            .as_ref()
            .map_or(LogFormat::Text, |c| c.server.log_format),
    );
    let mut config = loaded?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(data) = args.data {
        config.server.data = data;
    }
    if let Some(redis) = args.redis {
        config.redis.url = redis;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    crate::server::serve(config, shutdown).await?;
    Ok(())
}

/// Writes generated text to stdout; a reader that stops early (`| head`) is not an error.
fn print_all(out: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(out) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `herald init`: the reference config (every key at its default), never over a file
/// unless asked.
fn init(args: args::InitArgs) -> anyhow::Result<()> {
    use std::io::Write;
    if args.path.as_os_str() == "-" {
        return print_all(crate::config::REFERENCE.as_bytes());
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if args.force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let path = args.path.display();
    let mut file = open.open(&args.path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{path} exists; pass --force to replace it")
        } else {
            anyhow::anyhow!("cannot write {path}: {e}")
        }
    })?;
    file.write_all(crate::config::REFERENCE.as_bytes())?;
    eprintln!("wrote {path}: every setting at its default; `herald serve` reads ./herald.toml");
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
