//! The pure half of shoal's firewall: what a node publishes and masquerades
//! (`FirewallRules`), its validation, and the nftables batch that installs it,
//! built with the `nftables` crate's JSON schema types. Nothing here runs `nft`
//! or touches the host; `firewall` does that.
//!
//! The batch is one nft transaction over one table that shoal owns (family `ip`):
//! add the table (so the delete cannot fail), delete it, add it again with its
//! set, chains and rules. Applying it replaces everything shoal had installed, or
//! nothing when any part is refused, and applying the same rules twice leaves the
//! same ruleset. Other tables are never named.
//!
//! What the table holds:
//!
//! - set `cluster_subnets`: every node's container subnet (and this node's own).
//! - chain `published` (regular), jumped to from `prerouting` (nat, dstnat) for
//!   packets that arrive and from `output` (nat, dstnat) for connections the node
//!   itself opens: per forward, `ip daddr HOST_IP` (or `fib daddr type local` when
//!   the forward has no host address, which includes 127.0.0.1) and the protocol's
//!   `dport`, then `dnat` to the backend, or to `numgen random mod N map {...}`
//!   over several backends.
//! - chain `postrouting` (nat, srcnat), in order:
//!   1. `ip saddr 127.0.0.0/8 oifname BRIDGE masquerade`: the node reaching a
//!      published port through 127.0.0.1 (with `route_localnet` on the bridge,
//!      which `NftFirewall` sets), so the container answers the bridge address.
//!   2. `ct status dnat ip saddr OWN_SUBNET oifname BRIDGE masquerade`: hairpin, a
//!      container reaching a port its own node publishes; without it the backend
//!      would answer the container directly, past the node's NAT.
//!   3. per mesh forward, `ct status dnat oifname != BRIDGE ip daddr BACKENDS
//!      PROTO dport PORT masquerade`: a published connection sent on to a backend
//!      on another node comes from this node, so the reply returns through it.
//!   4. `ip saddr OWN_SUBNET ip daddr != @cluster_subnets masquerade`: egress.
//!      Traffic between containers of the cluster keeps its source address.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, NgMode, Numgen,
    Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{
    Chain, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, NAT, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use shoal_crdt::Subnet;

use super::NetworkError;
use super::names::check_interface_name;

/// The table shoal owns unless told otherwise.
pub const DEFAULT_TABLE: &str = "shoal";
/// Published ports one node holds.
pub const FORWARDS_MAX: usize = 4096;
/// Backends one published port balances over.
pub const BACKENDS_PER_FORWARD_MAX: usize = 256;
/// Container subnets of the whole cluster (one per node).
pub const CLUSTER_SUBNETS_MAX: usize = 4096;

const TABLE_NAME_BYTES_MAX: usize = 64;
const SET_CLUSTER_SUBNETS: &str = "cluster_subnets";
const CHAIN_PUBLISHED: &str = "published";
const CHAIN_PREROUTING: &str = "prerouting";
const CHAIN_OUTPUT: &str = "output";
const CHAIN_POSTROUTING: &str = "postrouting";
/// nft's `dstnat` and `srcnat` priorities.
const PRIORITY_DSTNAT: i32 = -100;
const PRIORITY_SRCNAT: i32 = 100;
const LOOPBACK_NETWORK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 0);
const LOOPBACK_PREFIX_LEN: u8 = 8;

/// A transport protocol a port is published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One published port: connections to `host_ip:host_port` go to
/// `backend:container_port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortForward {
    /// `None`: every local address of the node (`fib daddr type local`), also
    /// for connections from the node itself, 127.0.0.1 included.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub protocol: Protocol,
    pub container_port: u16,
    /// Non-empty. More than one: each new connection picks one at random.
    /// Order and repeats do not matter.
    pub backends: Vec<Ipv4Addr>,
    /// For a "mesh" forward whose backends may be on other nodes: connections
    /// sent on to another node are masqueraded, so replies come back through
    /// this node. Without it the client's address is kept.
    pub masquerade: bool,
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(ip) => write!(f, "{} {ip}:{}", self.protocol, self.host_port),
            None => write!(f, "{} *:{}", self.protocol, self.host_port),
        }
    }
}

/// Everything shoal's table holds on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FirewallRules {
    /// The node bridge (`NodeNetwork::bridge`).
    pub bridge: String,
    /// This node's container subnet: the source that egress masquerades.
    pub own_subnet: Subnet,
    /// Every node's container subnet; traffic to these keeps its source. The
    /// own subnet is added when missing; order, repeats and nesting do not matter.
    pub cluster_subnets: Vec<Subnet>,
    /// Order does not matter: no two may claim the same port.
    pub forwards: Vec<PortForward>,
}

impl FirewallRules {
    /// Refuses what the kernel would refuse or misread, and what breaks a bound,
    /// naming the forward.
    pub fn validate(&self) -> Result<(), NetworkError> {
        check_interface_name(&self.bridge)?;
        if self.cluster_subnets.len() > CLUSTER_SUBNETS_MAX {
            return Err(NetworkError::TooManyClusterSubnets {
                count: self.cluster_subnets.len(),
                max: CLUSTER_SUBNETS_MAX,
            });
        }
        if self.forwards.len() > FORWARDS_MAX {
            return Err(NetworkError::TooManyForwards {
                count: self.forwards.len(),
                max: FORWARDS_MAX,
            });
        }
        for forward in &self.forwards {
            check_forward(forward)?;
        }
        let mut sorted: Vec<&PortForward> = self.forwards.iter().collect();
        sorted.sort_by_key(|forward| forward_key(forward));
        for pair in sorted.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            let same_port =
                (first.protocol, first.host_port) == (second.protocol, second.host_port);
            // `None` sorts first, so a wildcard meets every address of its port here.
            if same_port && (first.host_ip.is_none() || first.host_ip == second.host_ip) {
                return Err(NetworkError::ForwardConflict {
                    first: first.to_string(),
                    second: second.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The nft JSON batch that replaces table `table` with these rules: what
    /// `NftFirewall::apply` hands to `nft -j -f`. The same rules give the same
    /// bytes, whatever the order of their lists.
    pub fn to_nft_json(&self, table: &str) -> Result<String, NetworkError> {
        check_table_name(table)?;
        self.validate()?;
        to_json(&build(table, self))
    }
}

/// The batch that deletes table `table` and nothing else, also when it is absent.
pub(crate) fn removal_json(table: &str) -> Result<String, NetworkError> {
    check_table_name(table)?;
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table_object(table)));
    batch.delete(NfListObject::Table(table_object(table)));
    to_json(&batch.to_nftables())
}

pub(crate) fn check_table_name(name: &str) -> Result<(), NetworkError> {
    let valid = (1..=TABLE_NAME_BYTES_MAX).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(NetworkError::TableName {
            name: name.to_owned(),
        })
    }
}

fn check_forward(forward: &PortForward) -> Result<(), NetworkError> {
    if forward.host_port == 0 || forward.container_port == 0 {
        return Err(NetworkError::PortZero {
            forward: forward.to_string(),
        });
    }
    if forward.backends.is_empty() {
        return Err(NetworkError::NoBackends {
            forward: forward.to_string(),
        });
    }
    if forward.backends.len() > BACKENDS_PER_FORWARD_MAX {
        return Err(NetworkError::TooManyBackends {
            forward: forward.to_string(),
            count: forward.backends.len(),
            max: BACKENDS_PER_FORWARD_MAX,
        });
    }
    if let Some(address) = forward.host_ip
        && (address.is_unspecified() || address.is_broadcast() || address.is_multicast())
    {
        return Err(NetworkError::ForwardAddress {
            forward: forward.to_string(),
            address,
        });
    }
    let unroutable = |address: &Ipv4Addr| {
        address.is_unspecified()
            || address.is_broadcast()
            || address.is_multicast()
            || address.is_loopback()
    };
    if let Some(&address) = forward.backends.iter().find(|address| unroutable(address)) {
        return Err(NetworkError::ForwardAddress {
            forward: forward.to_string(),
            address,
        });
    }
    Ok(())
}

fn forward_key(forward: &PortForward) -> (Protocol, u16, Option<Ipv4Addr>) {
    (forward.protocol, forward.host_port, forward.host_ip)
}

fn to_json(nftables: &Nftables<'_>) -> Result<String, NetworkError> {
    serde_json::to_string(nftables).map_err(|error| NetworkError::FirewallEncode {
        reason: error.to_string(),
    })
}

/// The replacing batch for validated rules.
fn build(table: &str, rules: &FirewallRules) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table_object(table)));
    batch.delete(NfListObject::Table(table_object(table)));
    batch.add(NfListObject::Table(table_object(table)));

    let subnets = cluster_subnets(rules);
    batch.add(NfListObject::Set(Box::new(Set {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_owned()),
        name: SET_CLUSTER_SUBNETS.into(),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        policy: None,
        flags: Some(HashSet::from([SetFlag::Interval])),
        elem: Some(subnets.iter().map(|subnet| prefix(*subnet)).collect()),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    })));

    batch.add(NfListObject::Chain(chain(table, CHAIN_PUBLISHED, None)));
    for (name, hook, priority) in [
        (CHAIN_PREROUTING, NfHook::Prerouting, PRIORITY_DSTNAT),
        (CHAIN_OUTPUT, NfHook::Output, PRIORITY_DSTNAT),
        (CHAIN_POSTROUTING, NfHook::Postrouting, PRIORITY_SRCNAT),
    ] {
        batch.add(NfListObject::Chain(chain(
            table,
            name,
            Some((hook, priority)),
        )));
    }
    for from in [CHAIN_PREROUTING, CHAIN_OUTPUT] {
        let jump = Statement::Jump(JumpTarget {
            target: CHAIN_PUBLISHED.into(),
        });
        batch.add(rule(table, from, vec![jump], None));
    }

    let mut forwards: Vec<&PortForward> = rules.forwards.iter().collect();
    forwards.sort_by_key(|forward| forward_key(forward));
    for forward in &forwards {
        batch.add(published_rule(table, forward));
    }

    let bridge: Cow<'static, str> = Cow::Owned(rules.bridge.clone());
    let loopback = Subnet {
        addr: LOOPBACK_NETWORK,
        prefix_len: LOOPBACK_PREFIX_LEN,
    };
    batch.add(rule(
        table,
        CHAIN_POSTROUTING,
        vec![
            equals(payload("ip", "saddr"), prefix(loopback)),
            equals(meta(MetaKey::Oifname), Expression::String(bridge.clone())),
            masquerade(),
        ],
        Some("the node to a published port through 127.0.0.1".into()),
    ));
    batch.add(rule(
        table,
        CHAIN_POSTROUTING,
        vec![
            ct_status_dnat(),
            equals(payload("ip", "saddr"), prefix(rules.own_subnet)),
            equals(meta(MetaKey::Oifname), Expression::String(bridge.clone())),
            masquerade(),
        ],
        Some("hairpin: a container to a port its node publishes".into()),
    ));
    for forward in forwards.iter().filter(|forward| forward.masquerade) {
        let backends = backends(forward);
        let daddr = match &backends[..] {
            [single] => address(*single),
            several => Expression::Named(NamedExpression::Set(
                several
                    .iter()
                    .map(|backend| SetItem::Element(address(*backend)))
                    .collect(),
            )),
        };
        batch.add(rule(
            table,
            CHAIN_POSTROUTING,
            vec![
                ct_status_dnat(),
                not_equals(meta(MetaKey::Oifname), Expression::String(bridge.clone())),
                equals(payload("ip", "daddr"), daddr),
                equals(
                    payload(forward.protocol.name(), "dport"),
                    Expression::Number(u32::from(forward.container_port)),
                ),
                masquerade(),
            ],
            Some(format!("mesh {forward}: on to another node").into()),
        ));
    }
    batch.add(rule(
        table,
        CHAIN_POSTROUTING,
        vec![
            equals(payload("ip", "saddr"), prefix(rules.own_subnet)),
            not_equals(
                payload("ip", "daddr"),
                Expression::String(format!("@{SET_CLUSTER_SUBNETS}").into()),
            ),
            masquerade(),
        ],
        Some("egress: containers to outside the cluster".into()),
    ));
    batch.to_nftables()
}

/// The cluster's subnets with the own one, sorted, without any that another
/// contains (an interval set refuses overlapping elements).
fn cluster_subnets(rules: &FirewallRules) -> Vec<Subnet> {
    let mut subnets = rules.cluster_subnets.clone();
    subnets.push(rules.own_subnet);
    subnets.sort_by_key(|subnet| (subnet.prefix_len, subnet.addr));
    subnets.dedup();
    let mut kept: Vec<Subnet> = Vec::with_capacity(subnets.len());
    // Shorter prefixes come first, so a subnet's containers are already kept.
    for subnet in subnets {
        if !kept.iter().any(|wider| contains(*wider, subnet)) {
            kept.push(subnet);
        }
    }
    kept.sort_by_key(|subnet| (subnet.addr, subnet.prefix_len));
    kept
}

/// Whether `wider` holds all of `narrower`; never panics on a bad prefix length.
fn contains(wider: Subnet, narrower: Subnet) -> bool {
    if wider.prefix_len > narrower.prefix_len {
        return false;
    }
    let mask = u32::MAX
        .checked_shl(32u32.saturating_sub(u32::from(wider.prefix_len)))
        .unwrap_or(0);
    u32::from(narrower.addr) & mask == u32::from(wider.addr) & mask
}

fn backends(forward: &PortForward) -> Vec<Ipv4Addr> {
    let mut backends = forward.backends.clone();
    backends.sort();
    backends.dedup();
    backends
}

fn published_rule(table: &str, forward: &PortForward) -> NfListObject<'static> {
    let destination = match forward.host_ip {
        Some(ip) => equals(payload("ip", "daddr"), address(ip)),
        None => equals(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            Expression::String("local".into()),
        ),
    };
    let backends = backends(forward);
    let target = match &backends[..] {
        [single] => address(*single),
        several => Expression::Named(NamedExpression::Map(Box::new(nftables::expr::Map {
            key: Expression::Named(NamedExpression::Numgen(Numgen {
                mode: NgMode::Random,
                // At most BACKENDS_PER_FORWARD_MAX, checked before.
                ng_mod: several.len() as u32,
                offset: None,
            })),
            data: Expression::Named(NamedExpression::Set(
                several
                    .iter()
                    .enumerate()
                    .map(|(index, backend)| {
                        SetItem::Mapping(Expression::Number(index as u32), address(*backend))
                    })
                    .collect(),
            )),
        }))),
    };
    rule(
        table,
        CHAIN_PUBLISHED,
        vec![
            destination,
            equals(
                payload(forward.protocol.name(), "dport"),
                Expression::Number(u32::from(forward.host_port)),
            ),
            Statement::DNAT(Some(NAT {
                addr: Some(target),
                family: None,
                port: Some(Expression::Number(u32::from(forward.container_port))),
                flags: None,
            })),
        ],
        Some(format!("published {forward}").into()),
    )
}

fn table_object(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_owned()),
        handle: None,
    }
}

fn chain(table: &str, name: &'static str, base: Option<(NfHook, i32)>) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_owned()),
        name: name.into(),
        newname: None,
        handle: None,
        _type: base.map(|_| NfChainType::NAT),
        hook: base.map(|(hook, _)| hook),
        prio: base.map(|(_, priority)| priority),
        dev: None,
        policy: base.map(|_| NfChainPolicy::Accept),
    }
}

fn rule(
    table: &str,
    chain: &'static str,
    statements: Vec<Statement<'static>>,
    comment: Option<Cow<'static, str>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_owned()),
        chain: chain.into(),
        expr: statements.into(),
        handle: None,
        index: None,
        comment,
    })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn address(ip: Ipv4Addr) -> Expression<'static> {
    Expression::String(ip.to_string().into())
}

fn prefix(subnet: Subnet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(address(subnet.addr)),
        len: u32::from(subnet.prefix_len),
    }))
}

fn equals(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn not_equals(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

/// `ct status dnat`: the connection's destination was translated.
fn ct_status_dnat() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "status".into(),
            family: None,
            dir: None,
        })),
        right: Expression::String("dnat".into()),
        op: Operator::IN,
    })
}

fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn subnet(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    fn forward(host_port: u16, backends: &[[u8; 4]]) -> PortForward {
        PortForward {
            host_ip: None,
            host_port,
            protocol: Protocol::Tcp,
            container_port: 80,
            backends: backends
                .iter()
                .map(|octets| Ipv4Addr::from(*octets))
                .collect(),
            masquerade: false,
        }
    }

    fn rules(forwards: Vec<PortForward>) -> FirewallRules {
        FirewallRules {
            bridge: "shoal0".to_owned(),
            own_subnet: subnet("10.88.1.0/24"),
            cluster_subnets: vec![subnet("10.88.2.0/24"), subnet("10.88.1.0/24")],
            forwards,
        }
    }

    fn batch(rules: &FirewallRules) -> Vec<Value> {
        let json: Value = serde_json::from_str(&rules.to_nft_json(DEFAULT_TABLE).unwrap()).unwrap();
        json["nftables"].as_array().unwrap().clone()
    }

    /// The `expr` lists of the rules added to `chain`, in order.
    fn chain_rules(batch: &[Value], chain: &str) -> Vec<Value> {
        batch
            .iter()
            .filter_map(|command| command["add"]["rule"].as_object())
            .filter(|rule| rule["chain"] == chain)
            .map(|rule| rule["expr"].clone())
            .collect()
    }

    #[test]
    fn the_batch_replaces_only_its_own_table_in_one_go() {
        let batch = batch(&rules(vec![]));
        let table = json!({"table": {"family": "ip", "name": "shoal"}});
        assert_eq!(batch[0], json!({ "add": table }));
        assert_eq!(batch[1], json!({ "delete": table }));
        assert_eq!(batch[2], json!({ "add": table }));
        for command in &batch[3..] {
            let (verb, object) = command.as_object().unwrap().iter().next().unwrap();
            assert_eq!(verb, "add", "{command}");
            let (_, body) = object.as_object().unwrap().iter().next().unwrap();
            assert_eq!(body["family"], "ip", "{command}");
            assert_eq!(body["table"], "shoal", "{command}");
        }
        let removal: Value = serde_json::from_str(&removal_json("shoal").unwrap()).unwrap();
        assert_eq!(
            removal,
            json!({"nftables": [{ "add": table }, { "delete": table }]})
        );
    }

    #[test]
    fn chains_hook_nat_at_dstnat_and_srcnat() {
        let batch = batch(&rules(vec![]));
        let chains: Vec<(String, Value, Value)> = batch
            .iter()
            .filter_map(|command| command["add"]["chain"].as_object())
            .map(|chain| {
                (
                    chain["name"].as_str().unwrap().to_owned(),
                    chain.get("hook").cloned().unwrap_or(Value::Null),
                    chain.get("prio").cloned().unwrap_or(Value::Null),
                )
            })
            .collect();
        assert_eq!(
            chains,
            vec![
                ("published".to_owned(), Value::Null, Value::Null),
                ("prerouting".to_owned(), json!("prerouting"), json!(-100)),
                ("output".to_owned(), json!("output"), json!(-100)),
                ("postrouting".to_owned(), json!("postrouting"), json!(100)),
            ]
        );
        let jump = json!([{"jump": {"target": "published"}}]);
        assert_eq!(chain_rules(&batch, "prerouting"), vec![jump.clone()]);
        assert_eq!(chain_rules(&batch, "output"), vec![jump]);
    }

    #[test]
    fn egress_masquerades_only_outside_the_cluster() {
        let mut input = rules(vec![]);
        // Nested and repeated subnets collapse; the own subnet is always there.
        input.cluster_subnets = vec![
            subnet("10.88.2.0/24"),
            subnet("10.77.0.0/16"),
            subnet("10.77.3.0/24"),
            subnet("10.88.2.0/24"),
        ];
        let batch = batch(&input);
        let set = batch
            .iter()
            .find_map(|command| command["add"]["set"].as_object())
            .unwrap();
        assert_eq!(set["name"], "cluster_subnets");
        assert_eq!(set["flags"], json!(["interval"]));
        let prefix = |addr: &str, len: u8| json!({"prefix": {"addr": addr, "len": len}});
        assert_eq!(
            set["elem"],
            json!([
                prefix("10.77.0.0", 16),
                prefix("10.88.1.0", 24),
                prefix("10.88.2.0", 24)
            ])
        );
        let postrouting = chain_rules(&batch, "postrouting");
        let egress = postrouting.last().unwrap();
        assert_eq!(
            egress,
            &json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": prefix("10.88.1.0", 24)}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": "@cluster_subnets"}},
                {"masquerade": null}
            ])
        );
        // Loopback and hairpin come first; nothing else without forwards.
        assert_eq!(postrouting.len(), 3);
        let text = postrouting[0].to_string();
        assert!(
            text.contains("127.0.0.0") && text.contains("\"shoal0\""),
            "{text}"
        );
        let hairpin = postrouting[1].to_string();
        assert!(
            hairpin.contains("\"dnat\"") && hairpin.contains("10.88.1.0"),
            "{hairpin}"
        );
    }

    #[test]
    fn a_forward_dnats_its_address_and_port_to_its_backend() {
        let mut specific = forward(8080, &[[10, 88, 1, 2]]);
        specific.host_ip = Some(Ipv4Addr::new(192, 0, 2, 1));
        specific.protocol = Protocol::Udp;
        specific.container_port = 53;
        let wildcard = forward(8080, &[[10, 88, 1, 3]]);
        let batch = batch(&rules(vec![specific, wildcard]));
        let published = chain_rules(&batch, "published");
        assert_eq!(
            published,
            vec![
                json!([
                    {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}},
                               "right": "local"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                               "right": 8080}},
                    {"dnat": {"addr": "10.88.1.3", "port": 80}}
                ]),
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                               "right": "192.0.2.1"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                               "right": 8080}},
                    {"dnat": {"addr": "10.88.1.2", "port": 53}}
                ]),
            ]
        );
        // Not mesh: no masquerade of its own.
        assert_eq!(chain_rules(&batch, "postrouting").len(), 3);
    }

    #[test]
    fn several_backends_are_balanced_with_a_random_numgen_map() {
        let balanced = forward(80, &[[10, 88, 1, 9], [10, 88, 1, 2], [10, 88, 1, 9]]);
        let batch = batch(&rules(vec![balanced]));
        let published = chain_rules(&batch, "published");
        assert_eq!(
            published[0][2],
            json!({"dnat": {
                "addr": {"map": {
                    "key": {"numgen": {"mode": "random", "mod": 2}},
                    "data": {"set": [[0, "10.88.1.2"], [1, "10.88.1.9"]]}
                }},
                "port": 80
            }})
        );
    }

    #[test]
    fn a_mesh_forward_masquerades_what_leaves_for_another_node() {
        let mut mesh = forward(9000, &[[10, 88, 2, 5], [10, 88, 1, 5]]);
        mesh.masquerade = true;
        mesh.container_port = 8000;
        let batch = batch(&rules(vec![mesh]));
        let postrouting = chain_rules(&batch, "postrouting");
        assert_eq!(postrouting.len(), 4);
        assert_eq!(
            postrouting[2],
            json!([
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "shoal0"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                           "right": {"set": ["10.88.1.5", "10.88.2.5"]}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                           "right": 8000}},
                {"masquerade": null}
            ])
        );
    }

    #[test]
    fn the_same_rules_give_the_same_bytes_in_any_order() {
        let mut mesh = forward(9000, &[[10, 88, 2, 5], [10, 88, 1, 5]]);
        mesh.masquerade = true;
        let forwards = vec![
            forward(80, &[[10, 88, 1, 2]]),
            mesh,
            forward(443, &[[10, 88, 1, 3], [10, 88, 1, 4]]),
        ];
        let first = rules(forwards.clone()).to_nft_json("shoal").unwrap();
        assert_eq!(first, rules(forwards.clone()).to_nft_json("shoal").unwrap());
        let mut reordered = rules(forwards.into_iter().rev().collect());
        reordered.cluster_subnets.reverse();
        for forward in &mut reordered.forwards {
            forward.backends.reverse();
        }
        assert_eq!(first, reordered.to_nft_json("shoal").unwrap());
        let other_table = rules(vec![]).to_nft_json("shoal_test").unwrap();
        assert!(other_table.contains("\"shoal_test\"") && !other_table.contains("\"shoal\""));
    }

    fn refused(forwards: Vec<PortForward>) -> String {
        rules(forwards)
            .to_nft_json("shoal")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_forwards_are_refused_with_their_name() {
        let mut port_zero = forward(0, &[[10, 88, 1, 2]]);
        assert_eq!(
            refused(vec![port_zero.clone()]),
            "forward tcp *:0: port 0 cannot be published or forwarded to"
        );
        port_zero.host_port = 80;
        port_zero.container_port = 0;
        assert!(refused(vec![port_zero]).starts_with("forward tcp *:80: port 0"));
        assert_eq!(
            refused(vec![forward(80, &[])]),
            "forward tcp *:80 has no backends"
        );
        let many: Vec<[u8; 4]> = (0..=BACKENDS_PER_FORWARD_MAX)
            .map(|index| [10, 88, (index / 250) as u8, (index % 250 + 2) as u8])
            .collect();
        assert_eq!(
            refused(vec![forward(80, &many)]),
            "forward tcp *:80 has 257 backends, more than 256"
        );
        let too_many: Vec<PortForward> = (1..=FORWARDS_MAX + 1)
            .map(|port| forward(port as u16, &[[10, 88, 1, 2]]))
            .collect();
        assert_eq!(refused(too_many), "4097 forwards, more than 4096");
        assert_eq!(
            refused(vec![forward(80, &[[127, 0, 0, 1]])]),
            "forward tcp *:80: address 127.0.0.1 cannot be used"
        );
        let mut unspecified = forward(80, &[[10, 88, 1, 2]]);
        unspecified.host_ip = Some(Ipv4Addr::UNSPECIFIED);
        assert!(refused(vec![unspecified]).contains("address 0.0.0.0 cannot be used"));

        let mut bad_bridge = rules(vec![]);
        bad_bridge.bridge = "a bridge".to_owned();
        assert!(matches!(
            bad_bridge.to_nft_json("shoal"),
            Err(NetworkError::InterfaceName { .. })
        ));
        for table in ["", "1shoal", "sho al", "shoal;", &"t".repeat(65)] {
            assert!(
                matches!(
                    rules(vec![]).to_nft_json(table),
                    Err(NetworkError::TableName { .. })
                ),
                "{table:?}"
            );
        }
    }

    #[test]
    fn two_forwards_may_not_claim_one_port() {
        let at = |ip: Option<[u8; 4]>, protocol: Protocol| {
            let mut forward = forward(80, &[[10, 88, 1, 2]]);
            forward.host_ip = ip.map(Ipv4Addr::from);
            forward.protocol = protocol;
            forward
        };
        let a = Some([192, 0, 2, 1]);
        let b = Some([192, 0, 2, 2]);
        let cases = [
            (
                vec![at(None, Protocol::Tcp), at(None, Protocol::Tcp)],
                false,
            ),
            (vec![at(a, Protocol::Tcp), at(None, Protocol::Tcp)], false),
            (vec![at(a, Protocol::Tcp), at(a, Protocol::Tcp)], false),
            (vec![at(a, Protocol::Tcp), at(b, Protocol::Tcp)], true),
            (vec![at(None, Protocol::Tcp), at(None, Protocol::Udp)], true),
        ];
        for (forwards, ok) in cases {
            let result = rules(forwards.clone()).validate();
            assert_eq!(result.is_ok(), ok, "{forwards:?}: {result:?}");
            if let Err(error) = result {
                assert!(matches!(error, NetworkError::ForwardConflict { .. }));
            }
        }
    }

    #[test]
    fn subnet_containment_never_panics() {
        let raw = |addr: [u8; 4], prefix_len: u8| Subnet {
            addr: Ipv4Addr::from(addr),
            prefix_len,
        };
        assert!(contains(raw([10, 0, 0, 0], 8), raw([10, 88, 1, 0], 24)));
        assert!(!contains(raw([10, 88, 1, 0], 24), raw([10, 0, 0, 0], 8)));
        assert!(contains(raw([0, 0, 0, 0], 0), raw([10, 88, 1, 0], 24)));
        assert!(!contains(raw([10, 88, 1, 0], 24), raw([10, 88, 2, 0], 24)));
        assert!(!contains(raw([10, 88, 1, 0], 40), raw([10, 88, 1, 0], 24)));
    }
}
