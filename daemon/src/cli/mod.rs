//! The operator's side: the command line (clap definitions with teaching help texts, here),
//! the commands it runs (`commands`: API calls, certificates, config checks), how their
//! answers print (`output`), spec files (`spec_file`) and `shoal demo` (`demo`). This room
//! talks to a daemon only through the API client; it never links the node's state, the
//! scheduler or the executor. It is the binary's edge, so errors are `anyhow` here.

pub mod commands;
pub mod demo;
pub mod node;
pub mod output;
pub mod spec_file;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shoal_crdt::{NodeId, ServiceName};

/// Default path of the daemon's API socket.
pub const DEFAULT_SOCKET: &str = "/var/lib/shoal/shoal.sock";

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
  shoal status                               this node's view and how fresh it is
  shoal node drain node-b --wait             move node-b's replicas off it, from any node"
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
    /// List and remove this node's named volumes (`volumes = ["NAME:/target"]` in a spec).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// List cluster members: id, address, liveness, state (active, or DRAINED with what is left
    /// of the drain's deadline), heartbeat age, subnet, capacity, labels;
    /// under the table, a node seen written by two daemons with its name (DUPLICATED) and
    /// nodes whose writes this node refused.
    #[command(after_help = "Example:\n  shoal nodes --json | jq '.[] | select(.live | not) | .id'")]
    Nodes,
    /// Drain, undrain or evict a node, from any node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// This node's summary: what it has seen, state digest, peers and last successful sync,
    /// tombstones, and whether it is converged as far as it knows; its incarnation, and
    /// whether its identity is contested (another daemon runs with its name: it writes
    /// nothing) or its writes are refused for another reason.
    Status,
    /// List containers cluster-wide: node, service, id, state, IP, published ports, since
    /// when. This node's containers are read from its runtime; the others' states are what
    /// their own nodes reported in the replicated state (running, exited(code),
    /// restarting(code), failed: reason). Errors of every node's share (bad image, missing
    /// secret file, no room) and unplaced replicas with the reason are listed below.
    #[command(
        after_help = "Examples:\n  shoal ps\n  shoal ps --json | jq '.containers[] | select(.state != \"running\")'"
    )]
    Ps,
    /// Print the output of a container, or of every container of a service, on any node
    /// (stdout, then stderr). Containers on other nodes are read from their node over the
    /// mutually authenticated sync channel; with several containers each line starts with
    /// its node and container. A node that is down or does not answer within 5 s is named,
    /// with its address, on stderr, and the command exits with an error.
    #[command(
        after_help = "Examples:\n  shoal logs web              output of web's containers on every node\n  shoal logs web-1a2b3c4d -f  follow one container, wherever it runs"
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
  image = \"/var/lib/images/web.tar\"          # OCI layout dir, oci-archive or docker-archive
  command = [\"/bin/httpd\", \"-f\", \"-p\", \"80\"]
  replicas = 3
  restart = \"on-failure\"                     # never | on-failure | always
  env = { MODE = \"prod\" }                    # replicated to every node: no secrets here
  ports = [\"8080:80\", \"127.0.0.1:9000:9000\", \"5353:53/udp\"]
                                             # [host_ip:]host_port:container_port[/tcp|/udp]
  volumes = [\"/srv/web:/data:ro\", \"cache:/var/cache/web\"]
                                             # absolute host path (must exist) or a named
                                             # volume kept on the node; :ro or :rw
  tmpfs = [\"/tmp:size=64m\"]                  # target[:size=N[k|m|g]], default 64m
  env_files = [\"/run/keys/web.env\"]          # KEY=VALUE lines read on the node at start
  secrets = { tls_key = \"/run/keys/web-key\" }  # read-only at /run/secrets/tls_key
  [publish]
  mode = \"host\"   # host: nodes running a replica accept the ports (one replica per node)
                  # mesh: every node accepts them and forwards to a running replica
Where it runs (node labels come from each daemon's config: labels = { zone = \"eu-1\" }):
  mode = \"replicated\"                        # replicated (replicas of it) | global (one per
                                             # eligible node; replicas is ignored)
  constraints = [\"zone == eu-1\", \"role in (edge, core)\", \"disk != hdd\"]
                                             # ==, !=, in (...), not in (...); a node without
                                             # the label fails == and in, passes != and not in
  spread = \"zone\"                            # spread replicas evenly over a label's values
  [resources]
  cpu_millis = 250
  memory_bytes = 134217728
  [health]                                   # probed on the container's node
  http = \"http://127.0.0.1:8080/healthz\"     # GET, 2xx/3xx is healthy; host 127.0.0.1 or
                                             # localhost = the container itself
  # tcp = 8080                               # or: a connection to the container's port
  # cmd = [\"/bin/sh\", \"-c\", \"test -e /ready\"]   # or: run inside the container, exit 0
                                             # is healthy (no shell unless you call one)
                                             # exactly one of http, tcp, cmd
  interval_ms = 2000                         # default 30000, 500..=3600000
  timeout_ms = 1000                          # default 30000, 100..=300000, <= interval_ms
  retries = 3                                # failures in a row before unhealthy, 1..=100
  start_period_ms = 5000                     # failures this long after a start do not
                                             # count; default 0
  An unhealthy container is restarted per its restart policy (with its backoff); mesh
  ports forward only to healthy replicas of a service with a check; shoal ps shows HEALTH.
  [update]                                   # how a changed spec replaces running replicas
  max_parallel = 1                           # replicas in transition at once (default 1)
  order = \"start-first\"                      # start-first (default): the new one starts,
                                             # the old one stops once the new one counts;
                                             # stop-first: the old one stops first
  min_healthy_ms = 3000                      # a new replica counts after running (healthy,
                                             # with a check) this long; default 3000
  healthy_deadline_ms = 60000                # not counted by then: the update failed
  auto_rollback = true                       # a failed update writes the last good spec
                                             # back (default); false: the update pauses
  Every node paces the update from the same replicated state, without a leader; a change of
  replicas or of [update] alone replaces nothing. shoal service history NAME lists the
  versions; shoal service rollback NAME goes back by hand.
or several as [[service]] tables. Env files and secrets are read on the node that starts the
container; only their paths are replicated, never their content.

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
    /// A service's versions, newest first: when each was written (HLC), its image, and
    /// whether its update failed or it was written back by a rollback.
    #[command(after_help = "The record keeps the current version and up to 5 earlier ones.")]
    History {
        /// The service name.
        name: ServiceName,
    },
    /// Write a service's newest earlier version that did not fail back as its current
    /// spec; the replicas roll to it like any update (paced by its [update]).
    Rollback {
        /// The service name.
        name: ServiceName,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Drain a node: placement gives it no replica of any service, so its replicas are placed
    /// on other nodes and stopped on it; the deadline is how long they may keep running there
    /// while they are replaced (what `--wait` waits for at most). The drain is written by the
    /// drained node itself, in its own metadata: run on another node, this asks that node over
    /// the sync channel (it must be up); `shoal nodes` then shows it DRAINED with the deadline
    /// left, on every node. The node stays drained across restarts until `shoal node undrain`.
    #[command(after_help = "Examples:
  shoal node drain node-b                        drain for the default 300000 ms (5 minutes)
  shoal node drain node-b --deadline-ms 60000 --wait
                                                 wait until node-b runs no container; exit 1
                                                 with a message if the deadline passes first")]
    Drain(DrainArgs),
    /// End a node's drain: it takes replicas again. Like drain, written by that node itself.
    #[command(after_help = "Example:\n  shoal node undrain node-b")]
    Undrain {
        /// The node's name.
        node: NodeId,
    },
    /// Remove a node that is gone from the cluster: it leaves `shoal nodes` on every node and
    /// its replicas are placed elsewhere. Only a node that is down (no recent heartbeat) can
    /// be evicted, never this node; a live node is drained instead. A node evicted by mistake
    /// rejoins with its next heartbeat when it comes back.
    #[command(after_help = "Example:\n  shoal node evict node-c")]
    Evict {
        /// The node's name.
        node: NodeId,
    },
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node's name.
    pub node: NodeId,
    /// How long, in milliseconds, its replicas may keep running while they are replaced
    /// elsewhere: 1000 to 86400000 (a day).
    #[arg(long, value_name = "MS", default_value_t = crate::api::DRAIN_DEADLINE_MS_DEFAULT)]
    pub deadline_ms: u64,
    /// Wait, printing progress, until the node's status reports no running container (exit
    /// 0), or until the deadline passes (exit 1 with a message).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// List this node's named volumes with their directory and the containers using them.
    #[command(after_help = "Example:\n  shoal volume ls --json")]
    Ls,
    /// Delete a named volume and its data on this node; refused while a container of this
    /// node uses it.
    #[command(after_help = "Example:\n  shoal volume rm cache")]
    Rm {
        /// The volume name.
        name: String,
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
    /// Keep printing new output until interrupted (asks every 500 ms). Containers that cannot
    /// be read are warned about once; it stops with an error when none can be read.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the cluster running until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// First UDP port; the three nodes use it and the next two (0 picks free ports).
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
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
    fn the_logs_help_states_the_bounds_it_runs_with() {
        let mut command = Cli::command();
        let logs = command.find_subcommand_mut("logs").unwrap();
        let help = logs.render_long_help().to_string();
        let timeout = format!("within {} s", crate::api::REMOTE_LOG_TIMEOUT_MS / 1_000);
        let interval = format!("every {} ms", commands::FOLLOW_INTERVAL_MS);
        for fragment in [timeout.as_str(), interval.as_str(), "on any node"] {
            assert!(help.contains(fragment), "{help} lacks {fragment:?}");
        }
        assert!(!help.contains("run it there"), "{help}");
    }

    #[test]
    fn node_commands_parse_with_their_defaults() {
        let cli = Cli::try_parse_from(["shoal", "node", "drain", "n2"]).unwrap();
        match cli.command {
            Command::Node(NodeCommand::Drain(args)) => {
                assert_eq!(args.node.as_str(), "n2");
                assert_eq!(args.deadline_ms, 300_000);
                assert!(!args.wait);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "shoal",
            "node",
            "drain",
            "n2",
            "--deadline-ms",
            "60000",
            "--wait",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Drain(DrainArgs {
                deadline_ms: 60_000,
                wait: true,
                ..
            }))
        ));
        let cli = Cli::try_parse_from(["shoal", "node", "undrain", "n2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Undrain { .. })
        ));
        let cli = Cli::try_parse_from(["shoal", "node", "evict", "n3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Node(NodeCommand::Evict { .. })
        ));
        for bad in [
            vec!["shoal", "node", "drain"],
            vec!["shoal", "node", "drain", "Not A Name"],
            vec!["shoal", "node", "drain", "n2", "--deadline-ms", "soon"],
            vec!["shoal", "node", "evict"],
            vec!["shoal", "node", "reboot", "n2"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_node_help_explains_the_deadline() {
        let mut command = Cli::command();
        let node = command.find_subcommand_mut("node").unwrap();
        let drain = node
            .find_subcommand_mut("drain")
            .unwrap()
            .render_long_help()
            .to_string();
        for fragment in ["deadline", "300000", "--wait", "86400000", "undrain"] {
            assert!(drain.contains(fragment), "{drain} lacks {fragment:?}");
        }
        let evict = node
            .find_subcommand_mut("evict")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(evict.contains("down"), "{evict}");
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
