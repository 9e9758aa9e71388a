//! The simulated network: one namespace per host, all wired to a bridge that
//! lives in a namespace of its own, with controls to cut and heal links.
//!
//! Host `i` has address `10.231.0.(10 + i)/24` on `eth0`. A lab may also hold
//! one *outside* host ([`OUTSIDE_ADDRESS`]): a namespace on the same bridge that
//! is not a cluster node, standing for a client of published ports or a server
//! that containers reach through their node. The addresses exist only inside
//! this lab's namespaces; nothing here is routed to the real network.
//!
//! The kernel's neighbour (ARP) table is one for every namespace, and its default limit
//! (`gc_thresh3`, 1,024 entries) is below what a lab of 48 hosts needs (every host resolves
//! every other: 48 × 47 entries); beyond it the kernel drops packets (`SndbufErrors`,
//! "neighbor table overflow"), which no real fleet sees, each machine having its own table.
//! [`Lab::create`] raises the three thresholds to what the lab needs, never lowers them, and
//! leaves them raised (other labs may be running).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::command::{self, CommandError};
use crate::netns::{self, Netns};

/// Most hosts a lab holds; the address plan and veth names assume it.
pub const HOSTS_MAX: usize = 64;

/// The outside host's address, outside the range of [`host_address`].
pub const OUTSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 250);

/// The outside host's port on the bridge (the hosts' ports are `h<index>`).
const OUTSIDE_PORT: &str = "out";

/// The nftables table (bridge family) of [`Lab::split_at_bridge`], in the bridge's namespace.
const BRIDGE_TABLE: &str = "shoal_lab";

static LAB_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// One host of the lab: its namespace and address.
#[derive(Debug)]
pub struct Host {
    pub netns: Netns,
    pub address: Ipv4Addr,
}

/// A set of hosts on one bridge. Dropping it removes every namespace, veth and
/// the bridge (the veths go with their namespaces).
#[derive(Debug)]
pub struct Lab {
    // Hosts are declared before the bridge so they are dropped first.
    hosts: Vec<Host>,
    outside: Option<Host>,
    bridge: Netns,
    /// Every namespace of this lab starts with it.
    prefix: String,
}

impl Lab {
    /// Creates `host_count` hosts wired to one bridge.
    pub fn create(host_count: usize) -> Result<Self, CommandError> {
        assert!(
            (1..=HOSTS_MAX).contains(&host_count),
            "a lab holds 1..={HOSTS_MAX} hosts, asked for {host_count}"
        );
        netns::sweep_stale();
        make_neighbour_room(host_count)?;
        let prefix = format!(
            "{}{}-{}",
            netns::NAME_PREFIX,
            std::process::id(),
            LAB_SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = Netns::create(&format!("{prefix}-br"))?;
        let bridge_name = bridge.name().to_owned();
        command::run(
            "ip",
            &["-n", &bridge_name, "link", "add", "br0", "type", "bridge"],
        )?;
        command::run("ip", &["-n", &bridge_name, "link", "set", "br0", "up"])?;
        let mut lab = Lab {
            hosts: Vec::with_capacity(host_count),
            outside: None,
            bridge,
            prefix: prefix.clone(),
        };
        for index in 0..host_count {
            let netns = Netns::create(&format!("{prefix}-n{index}"))?;
            let address = host_address(index);
            let name = netns.name().to_owned();
            lab.hosts.push(Host { netns, address });
            lab.wire(&name, &format!("h{index}"), address)?;
            // The pairwise cuts live in this table; it exists from the start so
            // cutting and healing are plain rule edits.
            command::run_in(&name, "nft", &["add", "table", "inet", "shoal_lab"])?;
            for hook in ["input", "output"] {
                let spec = format!("{{ type filter hook {hook} priority 0 ; policy accept ; }}");
                command::run_in(
                    &name,
                    "nft",
                    &["add", "chain", "inet", "shoal_lab", hook, &spec],
                )?;
            }
        }
        Ok(lab)
    }

    /// Adds the outside host: a namespace on the bridge at [`OUTSIDE_ADDRESS`]
    /// that runs no daemon. It has no route beyond the lab's /24 (so a
    /// container's own address cannot get an answer from it unless its node
    /// rewrites the source) until [`Lab::route_outside`] adds one.
    pub fn add_outside(&mut self) -> Result<&Host, CommandError> {
        assert!(
            self.outside.is_none(),
            "the lab already has an outside host"
        );
        let netns = Netns::create(&format!("{}-out", self.prefix))?;
        let name = netns.name().to_owned();
        self.outside = Some(Host {
            netns,
            address: OUTSIDE_ADDRESS,
        });
        self.wire(&name, OUTSIDE_PORT, OUTSIDE_ADDRESS)?;
        Ok(self.outside.as_ref().expect("just set"))
    }

    /// The outside host, if [`Lab::add_outside`] made one.
    pub fn outside(&self) -> Option<&Host> {
        self.outside.as_ref()
    }

    /// Routes `destination` (a CIDR) from the outside host through `via`, a
    /// host of the lab: for measuring a direct path to a container's address.
    pub fn route_outside(&self, destination: &str, via: Ipv4Addr) -> Result<(), CommandError> {
        let outside = self
            .outside
            .as_ref()
            .expect("route_outside needs an outside host (Lab::add_outside)");
        let gateway = via.to_string();
        command::run(
            "ip",
            &[
                "-n",
                outside.netns.name(),
                "route",
                "replace",
                destination,
                "via",
                &gateway,
            ],
        )?;
        Ok(())
    }

    /// Plugs the namespace `name` into the bridge through a veth (`eth0`
    /// inside, `port` on the bridge) and gives it `address`/24.
    fn wire(&self, name: &str, port: &str, address: Ipv4Addr) -> Result<(), CommandError> {
        let bridge_name = self.bridge.name();
        command::run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                name,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                bridge_name,
            ],
        )?;
        command::run(
            "ip",
            &["-n", bridge_name, "link", "set", port, "master", "br0"],
        )?;
        command::run("ip", &["-n", bridge_name, "link", "set", port, "up"])?;
        let cidr = format!("{address}/24");
        command::run("ip", &["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
        command::run("ip", &["-n", name, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    /// Takes host `index` off the network (its bridge port goes down).
    pub fn isolate(&self, index: usize) -> Result<(), CommandError> {
        self.set_port(index, "down")
    }

    /// Puts an isolated host back on the network.
    pub fn rejoin(&self, index: usize) -> Result<(), CommandError> {
        self.set_port(index, "up")
    }

    /// Drops all traffic between hosts `a` and `b` only, in both directions,
    /// with firewall rules inside both hosts.
    pub fn cut(&self, a: usize, b: usize) -> Result<(), CommandError> {
        assert_ne!(a, b, "cannot cut a host from itself");
        self.drop_between(a, b)?;
        self.drop_between(b, a)
    }

    /// Splits the lab in two: the hosts in `side` and all the others no longer reach each
    /// other, in both directions (one rule per direction in each host, naming the other
    /// side's addresses). [`Lab::heal`] joins them again.
    pub fn split(&self, side: &[usize]) -> Result<(), CommandError> {
        let (ours, theirs) = (
            self.side_addresses(side, true),
            self.side_addresses(side, false),
        );
        for index in 0..self.hosts.len() {
            let other = if side.contains(&index) {
                &theirs
            } else {
                &ours
            };
            self.add_rule(index, "input", &["ip", "saddr", other, "drop"])?;
            self.add_rule(index, "output", &["ip", "daddr", other, "drop"])?;
        }
        Ok(())
    }

    /// Splits the lab in two as [`Lab::split`] does, but in the bridge: IPv4 packets between
    /// the hosts in `side` and all the others are dropped as they cross it (ARP still
    /// passes), so a host's own sends succeed and are lost on the way, as on a real network.
    /// [`Lab::heal_at_bridge`] ends it for every host at one instant, in one nftables
    /// transaction: what timing a heal needs, where [`Lab::heal`] edits the hosts one after
    /// the other (three processes each).
    pub fn split_at_bridge(&self, side: &[usize]) -> Result<(), CommandError> {
        let (ours, theirs) = (
            self.side_addresses(side, true),
            self.side_addresses(side, false),
        );
        // One transaction: the table, its chain and both directions' rules.
        let script = format!(
            "add table bridge {BRIDGE_TABLE} ; \
             add chain bridge {BRIDGE_TABLE} forward \
             {{ type filter hook forward priority 0 ; policy accept ; }} ; \
             add rule bridge {BRIDGE_TABLE} forward ip saddr {ours} ip daddr {theirs} drop ; \
             add rule bridge {BRIDGE_TABLE} forward ip saddr {theirs} ip daddr {ours} drop"
        );
        command::run_in(self.bridge.name(), "nft", &[&script])?;
        Ok(())
    }

    /// Ends every [`Lab::split_at_bridge`] at once: the bridge's namespace holds no other
    /// nftables rules, so its whole ruleset goes, in one transaction.
    pub fn heal_at_bridge(&self) -> Result<(), CommandError> {
        command::run_in(self.bridge.name(), "nft", &["flush", "ruleset"])?;
        Ok(())
    }

    /// The addresses of the hosts in `side` (`inside`) or of all the others, as an nftables
    /// set.
    fn side_addresses(&self, side: &[usize], inside: bool) -> String {
        let listed: Vec<String> = (0..self.hosts.len())
            .filter(|index| side.contains(index) == inside)
            .map(|index| self.hosts[index].address.to_string())
            .collect();
        format!("{{ {} }}", listed.join(", "))
    }

    /// Drops `percent` of the packets host `index` sends or receives on its
    /// link, at random (loopback traffic is spared).
    pub fn lossy(&self, index: usize, percent: u8) -> Result<(), CommandError> {
        assert!(percent <= 100);
        let threshold = percent.to_string();
        // nftables' random numbers are 0..=99, so "all" is an unconditional drop.
        let chance: &[&str] = if percent == 100 {
            &[]
        } else {
            &["numgen", "random", "mod", "100", "<", &threshold]
        };
        for (hook, interface) in [("input", "iifname"), ("output", "oifname")] {
            let mut rule = vec![interface, "!=", "lo"];
            rule.extend_from_slice(chance);
            rule.push("drop");
            self.add_rule(index, hook, &rule)?;
        }
        Ok(())
    }

    /// Removes every cut and loss rule (a split at the bridge too) and brings every host back
    /// on the network.
    pub fn heal(&self) -> Result<(), CommandError> {
        for (index, host) in self.hosts.iter().enumerate() {
            let name = host.netns.name();
            for hook in ["input", "output"] {
                command::run_in(name, "nft", &["flush", "chain", "inet", "shoal_lab", hook])?;
            }
            self.set_port(index, "up")?;
        }
        self.heal_at_bridge()
    }

    /// Bytes host `index` has sent on its link so far (`eth0` tx counter).
    pub fn sent_bytes(&self, index: usize) -> Result<u64, CommandError> {
        // `ip netns exec` mounts the namespace's own sysfs, so this reads the
        // host's eth0, not the machine's.
        let output = command::run_in(
            self.hosts[index].netns.name(),
            "cat",
            &["/sys/class/net/eth0/statistics/tx_bytes"],
        )?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    fn drop_between(&self, from: usize, to: usize) -> Result<(), CommandError> {
        let peer = self.hosts[to].address.to_string();
        self.add_rule(from, "input", &["ip", "saddr", &peer, "drop"])?;
        self.add_rule(from, "output", &["ip", "daddr", &peer, "drop"])
    }

    /// Appends `rule` to the `hook` chain of host `index`'s lab table.
    fn add_rule(&self, index: usize, hook: &str, rule: &[&str]) -> Result<(), CommandError> {
        let mut args = vec!["add", "rule", "inet", "shoal_lab", hook];
        args.extend_from_slice(rule);
        command::run_in(self.hosts[index].netns.name(), "nft", &args)?;
        Ok(())
    }

    fn set_port(&self, index: usize, state: &str) -> Result<(), CommandError> {
        assert!(index < self.hosts.len(), "no host {index}");
        let port = format!("h{index}");
        command::run(
            "ip",
            &["-n", self.bridge.name(), "link", "set", &port, state],
        )?;
        Ok(())
    }
}

/// The kernel's neighbour-table thresholds (IPv4), shared by every namespace.
const NEIGHBOUR_THRESHOLDS: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

/// Raises the neighbour-table thresholds so that `host_count` hosts, each resolving every
/// other host, the outside host and its containers' bridge, fit beside whatever else the
/// machine holds: below `gc_thresh1` nothing is collected, `gc_thresh3` is the hard limit.
/// The defaults (128, 512, 1,024) are left alone for labs that fit in them.
fn make_neighbour_room(host_count: usize) -> Result<(), CommandError> {
    let lab_entries = (host_count * (host_count + 2)) as u64;
    let wanted = [lab_entries, lab_entries + 256, lab_entries + 512];
    for (path, wanted) in NEIGHBOUR_THRESHOLDS.iter().zip(wanted) {
        let file_error = |source| CommandError::File {
            path: (*path).to_owned(),
            source,
        };
        let current: u64 = std::fs::read_to_string(path)
            .map_err(file_error)?
            .trim()
            .parse()
            .map_err(|error| {
                file_error(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
            })?;
        if current < wanted {
            std::fs::write(path, wanted.to_string()).map_err(file_error)?;
        }
    }
    Ok(())
}

/// The address of host `index` inside every lab.
pub fn host_address(index: usize) -> Ipv4Addr {
    assert!(index < HOSTS_MAX);
    Ipv4Addr::new(10, 231, 0, 10 + index as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(lab: &Lab, from: usize, to: usize) -> bool {
        let target = lab.host(to).address.to_string();
        command::run_in(
            lab.host(from).netns.name(),
            "ping",
            &["-c", "1", "-W", "1", &target],
        )
        .is_ok()
    }

    /// Needs root and iproute2/nftables; the test script provides both and
    /// runs this as root, so a failure here is a real failure.
    #[test]
    fn hosts_reach_each_other_and_cuts_are_pairwise() {
        if !crate::require_root() {
            return;
        }
        let lab = Lab::create(3).expect("lab");
        assert!(ping(&lab, 0, 1) && ping(&lab, 1, 2) && ping(&lab, 0, 2));

        lab.cut(0, 2).expect("cut");
        assert!(!ping(&lab, 0, 2), "0 still reaches 2 through a cut");
        assert!(!ping(&lab, 2, 0), "2 still reaches 0 through a cut");
        assert!(ping(&lab, 0, 1) && ping(&lab, 1, 2), "cut spilled over");

        lab.isolate(1).expect("isolate");
        assert!(!ping(&lab, 0, 1) && !ping(&lab, 2, 1));

        lab.heal().expect("heal");
        assert!(ping(&lab, 0, 2) && ping(&lab, 1, 0));

        lab.lossy(0, 100).expect("lossy");
        assert!(
            !ping(&lab, 0, 1),
            "a host losing every packet still answers"
        );
        lab.heal().expect("heal");
        assert!(ping(&lab, 0, 1));
        // Partial loss is random, so only its rule is checked: nft accepts it.
        lab.lossy(0, 30).expect("partial loss rule");
        lab.heal().expect("heal");
    }

    #[test]
    fn a_split_at_the_bridge_cuts_only_between_sides_and_heals_at_once() {
        if !crate::require_root() {
            return;
        }
        let lab = Lab::create(3).expect("lab");
        lab.split_at_bridge(&[0]).expect("split");
        assert!(
            !ping(&lab, 0, 1) && !ping(&lab, 2, 0),
            "the split let through"
        );
        assert!(ping(&lab, 1, 2), "the split cut within a side");
        lab.heal_at_bridge().expect("heal");
        assert!(ping(&lab, 0, 1) && ping(&lab, 2, 0));
        // A second split works on the healed bridge, and the full heal ends it too.
        lab.split_at_bridge(&[0, 1]).expect("split again");
        assert!(!ping(&lab, 1, 2));
        lab.heal().expect("heal");
        assert!(ping(&lab, 1, 2));
    }

    #[test]
    fn dropping_the_lab_removes_its_namespaces() {
        if !crate::require_root() {
            return;
        }
        let names: Vec<String> = {
            let mut lab = Lab::create(2).expect("lab");
            lab.add_outside().expect("outside host");
            let mut names: Vec<String> = lab
                .hosts()
                .iter()
                .map(|h| h.netns.name().to_owned())
                .collect();
            names.push(lab.bridge.name().to_owned());
            names.push(lab.outside().expect("outside").netns.name().to_owned());
            names
        };
        let listed = command::run("ip", &["netns", "list"]).expect("list");
        let listed = String::from_utf8_lossy(&listed.stdout);
        for name in names {
            assert!(!listed.contains(&name), "{name} survived the lab");
        }
    }
}
