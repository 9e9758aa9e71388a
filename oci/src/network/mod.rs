//! Container networking on one node: the node bridge with the subnet's gateway
//! address, a network namespace per container with a veth into that bridge, and
//! routes to the other nodes' container subnets, and shoal's own nftables table
//! (published ports, egress masquerade: `firewall`). Everything is done by
//! running iproute2's `ip` and `nft` in the caller's network namespace, so a node
//! that is itself a network namespace (the netns cluster) works exactly like a
//! real host.
//!
//! All calls block (they wait for `ip`); async callers use `spawn_blocking`.

mod command;
pub mod fake;
pub mod firewall;
pub mod firewall_rules;
mod interface;
mod names;
pub mod node;
pub mod routes;
mod seam;
mod spawn;

pub use fake::{FakeNetwork, FakeNetworkCall};
pub use firewall::{FakeFirewall, Firewall, NftFirewall};
pub use firewall_rules::{
    BACKENDS_PER_FORWARD_MAX, CLUSTER_SUBNETS_MAX, FORWARDS_MAX, FirewallRules, PortForward,
    Protocol,
};
pub use names::{HOST_INTERFACE_PREFIX, NETNS_DIR, ROUTE_PROTOCOL};
pub use node::{Attachment, CONTAINER_INTERFACE, NodeNetwork};
pub use routes::RouteReport;
pub use seam::ContainerNetwork;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use shoal_crdt::Subnet;

/// What went wrong while setting up or tearing down container networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`{command}` printed output that is not the expected json: {reason}")]
    Output { command: String, reason: String },
    #[error("interface name {name:?} is invalid: 1..=15 characters of [A-Za-z0-9_.-]")]
    InterfaceName { name: String },
    #[error(
        "netns prefix {prefix:?} is invalid: 1..=64 characters of [A-Za-z0-9_.-], not starting with '-' or '.'"
    )]
    NetnsPrefix { prefix: String },
    #[error(
        "container id {id:?} is invalid: 1..=128 characters of [A-Za-z0-9_.-], not starting with '-' or '.'"
    )]
    ContainerId { id: String },
    #[error("address {ip} is not a container address of subnet {subnet}")]
    AddressOutsideSubnet { ip: Ipv4Addr, subnet: Subnet },
    #[error("container {id} is already attached with address {existing}, refusing {requested}")]
    AlreadyAttached {
        id: String,
        existing: String,
        requested: Ipv4Addr,
    },
    #[error("interface {name} exists and is not container {id}'s veth (its alias is {alias:?})")]
    InterfaceTaken {
        name: String,
        id: String,
        alias: Option<String>,
    },
    #[error("link {name} exists and is not a bridge (kind {kind:?})")]
    NotABridge { name: String, kind: Option<String> },
    #[error("cannot {action} {path}: {source}")]
    Sysctl {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot list {path}: {source}")]
    NetnsDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peer subnets {first} and {second} overlap")]
    OverlappingPeers { first: Subnet, second: Subnet },
    #[error("node address {address} for subnet {subnet} is not IPv4")]
    NodeAddressNotIpv4 { subnet: Subnet, address: IpAddr },
    #[error("forward {forward}: port 0 cannot be published or forwarded to")]
    PortZero { forward: String },
    #[error("forward {forward} has no backends")]
    NoBackends { forward: String },
    #[error("forward {forward} has {count} backends, more than {max}")]
    TooManyBackends {
        forward: String,
        count: usize,
        max: usize,
    },
    #[error("forward {forward}: address {address} cannot be used")]
    ForwardAddress { forward: String, address: Ipv4Addr },
    #[error("forwards {first} and {second} claim the same port")]
    ForwardConflict { first: String, second: String },
    #[error("{count} forwards, more than {max}")]
    TooManyForwards { count: usize, max: usize },
    #[error("{count} cluster subnets, more than {max}")]
    TooManyClusterSubnets { count: usize, max: usize },
    #[error(
        "nftables table name {name:?} is invalid: 1..=64 characters of [A-Za-z0-9_-], starting with a letter"
    )]
    TableName { name: String },
    #[error("cannot encode the nftables batch: {reason}")]
    FirewallEncode { reason: String },
    #[error("cannot write the nftables batch to {path}: {source}")]
    FirewallFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Only from `FakeNetwork::fail_next` and `FakeFirewall::fail_next`.
    #[error("injected failure: {message}")]
    Injected { message: String },
}
