//! The `shoal` binary: parses the command line and dispatches to the library. The only place
//! (with `cli/`) where errors become `anyhow` and then an exit status.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use shoal::agent::config::LogFormat;
use shoal::cli::{Cli, Command, commands, demo, node, output};

fn main() -> ExitCode {
    // `shoal zygote` is the helper the daemon starts to create containers from a process
    // with one thread (see `shoal_oci::zygote`). Checked before anything else runs, so
    // nothing can have started a thread; hidden from the command line's help.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(shoal_oci::zygote::SUBCOMMAND))
    {
        return shoal_oci::zygote::main();
    }
    let cli = Cli::parse();
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", output::error_text(&error));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Daemon(args) => {
            if commands::daemon_config_modes(args)? {
                return Ok(());
            }
            let config = commands::load_daemon_config(args)?;
            init_logging(config.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                // Signal handlers are installed before READY=1 is sent, so a SIGTERM right
                // after start is a graceful stop, not the default kill.
                let shutdown = shutdown_signal().context("cannot install signal handlers")?;
                shoal::agent::run(config, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        Command::Service(command) => commands::service(cli, command),
        Command::Volume(command) => commands::volume(cli, command),
        Command::Nodes => commands::nodes(cli),
        Command::Node(command) => node::run(cli, command),
        Command::Status => commands::status(cli),
        Command::Ps => commands::ps(cli),
        Command::Logs(args) => commands::logs(cli, args),
        Command::Ca(command) => commands::ca(cli, command),
        Command::Cert(command) => commands::cert(cli, command),
        Command::Demo(args) => demo::run(args),
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
