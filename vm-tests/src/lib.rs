//! Multi-node cluster harness for shoal.
//!
//! Each node is its own host: a network namespace with one veth into a shared
//! bridge namespace, its own address, state directory and `shoal daemon`
//! process. Fault controls cut links the way a real network fails (link down,
//! pairwise firewall drops, netem delay and loss), and a checker in the Jepsen
//! spirit compares what every node converged to against what was acknowledged.
//!
//! `probe` runs HTTP clients and servers inside the lab's namespaces (the
//! outside host's server, published-port checks, bench transfers).
//!
//! Everything the harness creates is owned by a guard and removed on drop, also
//! when a test panics; namespaces left over by a killed run are swept the next
//! time a lab starts.

pub mod bench;
pub mod checker;
pub mod cluster;
pub mod command;
pub mod lab;
pub mod netns;
pub mod probe;

/// Whether this process can run the lab (root: network namespaces, nftables, cgroups).
/// Under `CI=true` a missing prerequisite fails the test; elsewhere the test says why it
/// does nothing and returns.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "this test needs root (network namespaces, nftables, containers) and CI=true is set"
        );
    }
    eprintln!(
        "not root: skipping a test that needs network namespaces (run scripts/test-all.sh as root)"
    );
    false
}
