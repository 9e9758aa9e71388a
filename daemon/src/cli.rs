//! The command line: clap definitions with teaching help texts, and the operator commands
//! (API client calls, certificates, config checks). This is the binary's edge, so errors are
//! `anyhow` with context here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use shoal_crdt::{NodeId, ServiceName};

use crate::api::{Client, NodeView, Request, ServiceView, StatusView};
use crate::config::{self, Config};
use crate::reconcile::{LogChunk, PsView};
use crate::{output, pki, spec_file};

/// Default path of the daemon's API socket.
pub const DEFAULT_SOCKET: &str = "/var/lib/shoal/shoal.sock";

/// How long the CLI waits for the daemon to answer one request.
const CALL_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A leaderless container orchestrator: every node keeps the whole cluster state as CRDTs and syncs it with its peers over mutually authenticated HTTP/3.",
    after_help = "Examples:
  shoal demo                                 run a 3-node cluster on loopback and watch it converge
  shoal ca init --dir /etc/shoal/ca          create the cluster CA
  shoal cert issue --node node-a --ca-dir /etc/shoal/ca --out-dir /etc/shoal --address 192.0.2.10
  shoal daemon --check-config /etc/shoal/shoal.toml
  shoal daemon --config /etc/shoal/shoal.toml
  shoal service apply -f web.toml            add or replace the services in web.toml
  shoal service ls --json                    list services as JSON for scripts
  shoal status                               this node's view and how fresh it is"
)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = "SHOAL_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent, or check its configuration.
    #[command(after_help = "Examples:
  shoal daemon --config /etc/shoal/shoal.toml
  shoal daemon --check-config /etc/shoal/shoal.toml     exit 0 and print OK, or exit 1 with the error
  shoal daemon --print-example-config > shoal.toml
  shoal daemon --print-config-keys                      every key, dotted, one per line")]
    Daemon(DaemonArgs),
    /// Add, replace, list and remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// List cluster members: id, address, liveness, heartbeat age, subnet.
    #[command(after_help = "Example:\n  shoal nodes --json | jq '.[] | select(.live | not) | .id'")]
    Nodes,
    /// This node's summary: what it has seen, state digest, peers and last successful sync,
    /// tombstones, and whether it is converged as far as it knows.
    Status,
    /// List containers cluster-wide: node, service, id, state, IP, since when. States of other
    /// nodes' containers are what the replicated state records; errors of this node's share
    /// (bad image, no room) are listed below the table.
    #[command(
        after_help = "Examples:\n  shoal ps\n  shoal ps --json | jq '.containers[] | select(.state != \"running\")'"
    )]
    Ps,
    /// Print the output of a container, or of every container of a service, that runs on
    /// this node (stdout, then stderr). Containers on other nodes: run it there.
    #[command(
        after_help = "Examples:\n  shoal logs web              output of web's containers on this node\n  shoal logs web-1a2b3c4d -f  follow one container"
    )]
    Logs(LogsArgs),
    /// Manage the cluster certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue node certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Start a throwaway 3-node cluster on 127.0.0.1, apply a service on node 1, show it on
    /// nodes 2 and 3, then stop.
    #[command(after_help = "Examples:
  shoal demo            run it and clean up
  shoal demo --keep     leave the cluster running until Ctrl-C; the socket paths are printed")]
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DaemonArgs {
    /// Run the daemon with this config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate a config file and exit (0: valid, 1: invalid).
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
    /// Print every config key, dotted, sorted, one per line.
    #[arg(long)]
    pub print_config_keys: bool,
    /// Print a commented example config.
    #[arg(long)]
    pub print_example_config: bool,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Add or replace the services in a spec file (validated here first).
    #[command(after_help = "A spec file holds one service:
  name = \"web\"
  image = \"/var/lib/images/web.tar\"
  command = [\"/bin/httpd\", \"-f\", \"-p\", \"8080\"]
  replicas = 3
  [resources]
  cpu_millis = 250
or several as [[service]] tables.

Example:
  shoal service apply -f web.toml")]
    Apply {
        /// The spec file.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List services with the version (HLC) of the write that won.
    Ls,
    /// Remove a service.
    Rm {
        /// The service name.
        name: ServiceName,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the cluster CA (ca.pem, ca.key with mode 0600) in DIR.
    #[command(after_help = "Example:\n  shoal ca init --dir /etc/shoal/ca")]
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue NODE.pem and NODE.key (0600) signed by the CA; the node id goes in the
    /// certificate, the addresses as IP/DNS names.
    #[command(
        after_help = "Example:\n  shoal cert issue --node node-a --ca-dir /etc/shoal/ca --out-dir /etc/shoal --address 192.0.2.10 --address node-a.example"
    )]
    Issue {
        #[arg(long, value_name = "NAME")]
        node: NodeId,
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// An IP address or DNS name of the node (repeatable).
        #[arg(long = "address", value_name = "IP|DNS")]
        addresses: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A service name or a container id.
    pub target: String,
    /// Keep printing new output until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// How often `logs -f` asks for new output.
const FOLLOW_INTERVAL_MS: u64 = 500;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the cluster running until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// First UDP port; the three nodes use it and the next two (0 picks free ports).
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
}

fn client(socket: &Path) -> Result<Client> {
    Ok(Client::connect(
        socket,
        Duration::from_millis(CALL_TIMEOUT_MS),
    )?)
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
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

/// `shoal logs TARGET [-f]`.
pub fn logs(cli: &Cli, args: &LogsArgs) -> Result<()> {
    use std::io::Write;
    let mut client = client(&cli.socket)?;
    let mut offsets: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    loop {
        let chunks: Vec<LogChunk> = client
            .call(Request::Logs {
                target: args.target.clone(),
                offsets: offsets.clone(),
            })
            .with_context(|| format!("logs of {}", args.target))?;
        let several = chunks.len() > 1;
        let mut stdout = std::io::stdout().lock();
        let mut stderr = std::io::stderr().lock();
        for chunk in &chunks {
            for (text, sink) in [
                (&chunk.stdout, &mut stdout as &mut dyn Write),
                (&chunk.stderr, &mut stderr as &mut dyn Write),
            ] {
                for line in text.split_inclusive('\n') {
                    if several {
                        write!(sink, "{} | ", chunk.container)?;
                    }
                    write!(sink, "{line}")?;
                }
            }
            offsets.insert(
                chunk.container.clone(),
                (chunk.stdout_offset, chunk.stderr_offset),
            );
        }
        stdout.flush()?;
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(FOLLOW_INTERVAL_MS));
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
        println!(
            "OK: {} is a valid config for node {}",
            path.display(),
            config.node_name
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemon_modes_are_exclusive() {
        assert!(Cli::try_parse_from(["shoal", "daemon"]).is_err());
        assert!(
            Cli::try_parse_from(["shoal", "daemon", "--config", "a", "--check-config", "b"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["shoal", "daemon", "--check-config", "a.toml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Daemon(DaemonArgs {
                check_config: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn socket_defaults_and_service_names_are_validated() {
        let cli = Cli::try_parse_from(["shoal", "service", "ls"]).unwrap();
        if std::env::var_os("SHOAL_SOCKET").is_none() {
            assert_eq!(cli.socket, PathBuf::from(DEFAULT_SOCKET));
        }
        assert!(Cli::try_parse_from(["shoal", "service", "rm", "Not A Name"]).is_err());
        let cli = Cli::try_parse_from(["shoal", "--json", "--socket", "/tmp/s", "status"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
    }
}
