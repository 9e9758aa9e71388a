//! The operator commands: each parses nothing (clap did), calls the daemon through the API
//! client or works on local files (certificates, config checks), and prints a table or
//! `--json`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{CaCommand, CertCommand, Cli, DaemonArgs, LogsArgs, ServiceCommand, VolumeCommand};
use super::{output, spec_file};
use crate::agent::config::{self, Config};
use crate::api::{
    Client, HistoryView, LogChunk, NodeView, PsView, Request, ServiceView, StatusView, VolumeView,
};
use crate::sync::pki;

/// How long the CLI waits for the daemon to answer one request.
const CALL_TIMEOUT_MS: u64 = 30_000;
/// How often `logs -f` asks for new output (at once when the last reply said `more`).
pub(crate) const FOLLOW_INTERVAL_MS: u64 = 500;
/// Most calls `logs` without `-f` makes to print what is written so far.
const LOG_CALLS_MAX: u32 = 1_024;

pub(crate) fn client(socket: &Path) -> Result<Client> {
    Ok(Client::connect(
        socket,
        Duration::from_millis(CALL_TIMEOUT_MS),
    )?)
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `shoal service ...`.
pub fn service(cli: &Cli, command: &ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Apply { file } => {
            let services = spec_file::load(file)?;
            let views: Vec<ServiceView> =
                client(&cli.socket)?.call(Request::ServiceApply { services })?;
            if cli.json {
                return print_json(&views);
            }
            for view in views {
                println!(
                    "applied {} (version {})",
                    view.name,
                    output::hlc(&view.version)
                );
            }
        }
        ServiceCommand::Ls => {
            let views: Vec<ServiceView> = client(&cli.socket)?.call(Request::ServiceList)?;
            if cli.json {
                return print_json(&views);
            }
            print!("{}", output::services(&views));
        }
        ServiceCommand::Rm { name } => {
            let view: ServiceView =
                client(&cli.socket)?.call(Request::ServiceRemove { name: name.clone() })?;
            if cli.json {
                return print_json(&view);
            }
            println!("removed {}", view.name);
        }
        ServiceCommand::History { name } => {
            let view: HistoryView =
                client(&cli.socket)?.call(Request::ServiceHistory { name: name.clone() })?;
            if cli.json {
                return print_json(&view);
            }
            print!("{}", output::history(&view));
        }
        ServiceCommand::Rollback { name } => {
            let view: ServiceView =
                client(&cli.socket)?.call(Request::ServiceRollback { name: name.clone() })?;
            if cli.json {
                return print_json(&view);
            }
            println!(
                "rolled {} back to {} (version {})",
                view.name,
                view.spec.image,
                output::hlc(&view.version)
            );
        }
    }
    Ok(())
}

/// `shoal volume ls|rm`.
pub fn volume(cli: &Cli, command: &VolumeCommand) -> Result<()> {
    match command {
        VolumeCommand::Ls => {
            let views: Vec<VolumeView> = client(&cli.socket)?.call(Request::VolumeList)?;
            if cli.json {
                return print_json(&views);
            }
            print!("{}", output::volumes(&views));
        }
        VolumeCommand::Rm { name } => {
            let view: VolumeView =
                client(&cli.socket)?.call(Request::VolumeRemove { name: name.clone() })?;
            if cli.json {
                return print_json(&view);
            }
            println!("removed volume {} ({})", view.name, view.path);
        }
    }
    Ok(())
}

/// `shoal nodes`.
pub fn nodes(cli: &Cli) -> Result<()> {
    let views: Vec<NodeView> = client(&cli.socket)?.call(Request::Nodes)?;
    if cli.json {
        return print_json(&views);
    }
    print!("{}", output::nodes(&views));
    Ok(())
}

/// `shoal status`.
pub fn status(cli: &Cli) -> Result<()> {
    let view: StatusView = client(&cli.socket)?.call(Request::Status)?;
    if cli.json {
        return print_json(&view);
    }
    print!("{}", output::status(&view));
    Ok(())
}

/// `shoal ps`.
pub fn ps(cli: &Cli) -> Result<()> {
    let view: PsView = client(&cli.socket)?.call(Request::Ps)?;
    if cli.json {
        return print_json(&view);
    }
    print!("{}", output::ps(&view));
    Ok(())
}

/// `shoal logs TARGET [-f]`. Each call returns a bounded piece of every container's new
/// output; a reply that says `more` is followed at once by the next call (without `-f`, until
/// everything written so far is printed, at most `LOG_CALLS_MAX` calls). Containers that
/// cannot be read (their node down or unreachable) are reported on stderr: without `-f` the
/// command then fails; with `-f` it keeps following the others and fails only when none can
/// be read.
pub fn logs(cli: &Cli, args: &LogsArgs) -> Result<()> {
    use std::io::Write;
    let mut client = client(&cli.socket)?;
    let mut offsets: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    // container -> the error last reported for it, so following repeats none.
    let mut reported: std::collections::BTreeMap<String, String> = Default::default();
    let mut calls = 0;
    loop {
        let chunks: Vec<LogChunk> = client
            .call(Request::Logs {
                target: args.target.clone(),
                offsets: offsets.clone(),
            })
            .with_context(|| format!("logs of {}", args.target))?;
        calls += 1;
        let several = chunks.len() > 1;
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        for chunk in chunks.iter().filter(|chunk| chunk.error.is_none()) {
            for (text, sink) in [
                (&chunk.stdout, &mut stdout as &mut dyn Write),
                (&chunk.stderr, &mut stderr as &mut dyn Write),
            ] {
                for line in text.split_inclusive('\n') {
                    if several {
                        write!(sink, "{} {} | ", chunk.node, chunk.container)?;
                    }
                    write!(sink, "{line}")?;
                }
            }
            offsets.insert(
                chunk.container.clone(),
                (chunk.stdout_offset, chunk.stderr_offset),
            );
            reported.remove(&chunk.container);
        }
        stdout.flush()?;
        let failed = chunks.iter().filter(|chunk| chunk.error.is_some()).count();
        // A node's error is the same for each of its containers: said once.
        let mut errors: Vec<&str> = Vec::new();
        for error in chunks.iter().filter_map(|chunk| chunk.error.as_deref()) {
            if !errors.contains(&error) {
                errors.push(error);
            }
        }
        let more = chunks
            .iter()
            .any(|chunk| chunk.more && chunk.error.is_none());
        if !args.follow {
            if more && calls < LOG_CALLS_MAX {
                continue;
            }
            return match (failed, errors.as_slice()) {
                (0, _) => Ok(()),
                (1, [one]) if chunks.len() == 1 => {
                    Err(anyhow::anyhow!("logs of {}: {one}", args.target))
                }
                _ => Err(anyhow::anyhow!(
                    "logs of {}: {failed} of {} containers could not be read:\n  {}",
                    args.target,
                    chunks.len(),
                    errors.join("\n  ")
                )),
            };
        }
        if failed > 0 && failed == chunks.len() {
            anyhow::bail!(
                "logs of {}: no container can be read: {}",
                args.target,
                errors.join("; ")
            );
        }
        for chunk in &chunks {
            if let Some(error) = &chunk.error
                && reported.get(&chunk.container) != Some(error)
            {
                writeln!(stderr, "warning: {error}")?;
                reported.insert(chunk.container.clone(), error.clone());
            }
        }
        drop((stdout, stderr));
        if !more {
            std::thread::sleep(Duration::from_millis(FOLLOW_INTERVAL_MS));
        }
    }
}

/// `shoal ca ...`.
pub fn ca(cli: &Cli, command: &CaCommand) -> Result<()> {
    let CaCommand::Init { dir, force } = command;
    let paths = pki::init_ca(dir, *force)?;
    if cli.json {
        return print_json(&serde_json::json!({
            "cert": paths.cert, "key": paths.key,
        }));
    }
    println!("CA certificate: {}", paths.cert.display());
    println!("CA key (0600):  {}", paths.key.display());
    Ok(())
}

/// `shoal cert ...`.
pub fn cert(cli: &Cli, command: &CertCommand) -> Result<()> {
    let CertCommand::Issue {
        node,
        ca_dir,
        out_dir,
        addresses,
        days,
        force,
    } = command;
    let paths = pki::issue_node_cert(ca_dir, node, addresses, *days, out_dir, *force)?;
    if cli.json {
        return print_json(&serde_json::json!({
            "cert": paths.cert, "key": paths.key, "ca_cert": paths.ca_cert,
        }));
    }
    println!("node certificate: {}", paths.cert.display());
    println!("node key (0600):  {}", paths.key.display());
    println!("CA certificate:   {}", paths.ca_cert.display());
    Ok(())
}

/// The config-only modes of `shoal daemon`; returns false when the daemon should run.
pub fn daemon_config_modes(args: &DaemonArgs) -> Result<bool> {
    if args.print_config_keys {
        for key in config::config_keys() {
            println!("{key}");
        }
        return Ok(true);
    }
    if args.print_example_config {
        print!("{}", config::example_config_text());
        return Ok(true);
    }
    if let Some(path) = &args.check_config {
        let config = Config::load(path)?;
        let unopenable = config.unopenable_tls_files();
        if unopenable.is_empty() {
            // The daemon's own start-up check: chain, validity, key and node name.
            config
                .load_tls()
                .with_context(|| format!("config file {}", path.display()))?;
            println!(
                "OK: {} is a valid config for node {}, and its tls files are valid for it now",
                path.display(),
                config.node_name
            );
        } else {
            println!(
                "OK: {} is a valid config for node {}; its tls files were not checked",
                path.display(),
                config.node_name
            );
            for (file, error) in unopenable {
                eprintln!(
                    "warning: cannot open {}: {error}; run --check-config as the daemon's user \
                     (with $CREDENTIALS_DIRECTORY set for systemd credentials) to check it",
                    file.display()
                );
            }
        }
        return Ok(true);
    }
    Ok(false)
}

/// Loads the daemon's config (for `--config`).
pub fn load_daemon_config(args: &DaemonArgs) -> Result<Config> {
    let path = args
        .config
        .as_ref()
        .context("shoal daemon needs --config FILE")?;
    Ok(Config::load(path)?)
}
