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
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
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
