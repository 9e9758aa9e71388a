//! Small builders the crate's unit tests share: node names, HLC times in milliseconds, a
//! replica with a one-second drift bound, node metadata on a subnet.

use std::time::Duration;

use uhlc::{NTP64, Timestamp};

use crate::{Capacity, NodeId, NodeMeta, Replica};

/// The drift bound of `replica`.
pub const DRIFT: Duration = Duration::from_secs(1);

pub fn node(name: &str) -> NodeId {
    name.parse().unwrap()
}

pub fn ms(value: u64) -> NTP64 {
    NTP64::from(Duration::from_millis(value))
}

pub fn replica(name: &str) -> Replica {
    Replica::new(node(name), DRIFT)
}

/// Metadata of a 1-core, 1 GiB node on `subnet`, heartbeat zero.
pub fn meta(subnet: &str) -> NodeMeta {
    NodeMeta {
        address: "127.0.0.1:7000".parse().unwrap(),
        capacity: Capacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
        subnet: Some(subnet.parse().unwrap()),
        heartbeat: Timestamp::new(NTP64(0), node("x").hlc_id()),
        labels: Default::default(),
        incarnation: None,
        drain: None,
    }
}
