//! The operator: `shoal service apply` and `shoal service remove` sent to a random node,
//! as `Node::apply_services` and `Node::remove_service` write them. A command creates a
//! service, replaces its spec, scales it, or removes it; some specs name an image the fake
//! image store refuses. Names come from a small pool so commands collide across nodes.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use shoal_crdt::{RestartPolicy, ServiceName, ServiceSpec};

use super::checks::Violation;
use super::node::{BAD_IMAGE_PREFIX, Writer};
use super::world::{World, trace};
use crate::state::Clock as _;

/// Service names per run.
const SERVICE_POOL: usize = 6;
/// Replicas a spec asks for at most; beyond the room of small clusters, so some replicas
/// stay unplaced.
const REPLICAS_MAX: u32 = 8;

/// One operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Apply {
        name: ServiceName,
        spec: Box<ServiceSpec>,
        /// Only the replica count changed.
        scale: bool,
    },
    Remove {
        name: ServiceName,
    },
    /// `shoal node drain` of the receiving node (a drain elsewhere is forwarded to its
    /// owner, which writes it the same way), or its undrain when it is drained.
    Drain {
        deadline_ms: u64,
    },
}

pub(crate) fn service_name(index: usize) -> ServiceName {
    format!("svc-{index}")
        .parse()
        .expect("a valid service name")
}

/// Picks a command given the services the receiving node knows.
pub(crate) fn draw_command(
    rng: &mut ChaCha8Rng,
    known: &[(ServiceName, ServiceSpec)],
    bad_image_per_mille: u32,
) -> Command {
    let roll = rng.gen_range(0..100);
    if roll < 4 {
        return Command::Drain {
            deadline_ms: rng.gen_range(5_000..=60_000),
        };
    }
    match known.choose(rng) {
        Some((name, _)) if roll < 20 => Command::Remove { name: name.clone() },
        Some((name, spec)) if roll < 50 => {
            // Scale only: running containers are kept, only the count changes.
            let mut spec = spec.clone();
            spec.replicas = replicas(rng);
            Command::Apply {
                name: name.clone(),
                spec: Box::new(spec),
                scale: true,
            }
        }
        _ => {
            let name = service_name(rng.gen_range(0..SERVICE_POOL));
            let bad = rng.gen_ratio(bad_image_per_mille, 1000);
            Command::Apply {
                name,
                spec: Box::new(spec(rng, bad)),
                scale: false,
            }
        }
    }
}

fn replicas(rng: &mut ChaCha8Rng) -> u32 {
    if rng.gen_ratio(1, 8) {
        0
    } else if rng.gen_ratio(1, 5) {
        rng.gen_range(4..=REPLICAS_MAX)
    } else {
        rng.gen_range(1..=3)
    }
}

fn spec(rng: &mut ChaCha8Rng, bad_image: bool) -> ServiceSpec {
    let image = if bad_image {
        format!("{BAD_IMAGE_PREFIX}app-{}", rng.gen_range(0..2))
    } else {
        format!("/images/app-{}", rng.gen_range(0..3))
    };
    let mut spec = ServiceSpec::new(image);
    spec.replicas = replicas(rng);
    spec.command = vec![
        "/bin/app".to_owned(),
        format!("--port={}", rng.gen_range(8000..8004)),
    ];
    spec.resources.cpu_millis = [100, 250, 500, 1000][rng.gen_range(0..4)];
    spec.resources.memory_bytes = [64u64 << 20, 256 << 20, 512 << 20][rng.gen_range(0..3)];
    spec.restart = match rng.gen_range(0..10) {
        0..=1 => RestartPolicy::Never,
        2..=5 => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    };
    // Constraints over the labels the simulator gives its nodes (zone a|b|c by index, role
    // edge on even ones), some unsatisfiable; a few global services; some spread by zone.
    match rng.gen_range(0..10) {
        0 => spec.constraints = vec!["zone == a".to_owned()],
        1 => spec.constraints = vec!["role in (edge)".to_owned(), "zone != c".to_owned()],
        2 => spec.constraints = vec!["gpu == yes".to_owned()],
        3 => spec.mode = shoal_crdt::Mode::Global,
        4 => spec.spread = Some("zone".to_owned()),
        _ => {}
    }
    // Published ports from a pool of two, so services compete for them: host mode takes a
    // port on each node that runs a replica, mesh mode on every node.
    match rng.gen_range(0..6) {
        0..=1 => spec.ports = vec![format!("{}:80", 8080 + rng.gen_range(0..2))],
        2 => {
            spec.ports = vec![format!("{}:80", 8080 + rng.gen_range(0..2))];
            spec.publish.mode = shoal_crdt::PublishMode::Mesh;
        }
        _ => {}
    }
    // Rolling updates: how many at once, which order, how long a new replica must run.
    spec.update.max_parallel = rng.gen_range(1..=3);
    if rng.gen_ratio(1, 3) {
        spec.update.order = shoal_crdt::UpdateOrder::StopFirst;
    }
    spec.update.min_healthy_ms = [0, 3_000][rng.gen_range(0..2)];
    spec
}

impl World {
    /// One operator command, sent to a random node whose daemon runs.
    pub(crate) fn command(&mut self) -> Result<(), Violation> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|node| self.nodes[*node].is_running())
            .collect();
        let Some(&node) = running.choose(&mut self.rng) else {
            return Ok(());
        };
        let known: Vec<_> = self.nodes[node]
            .state()
            .services()
            .map(|(name, spec, _)| (name.clone(), spec.clone()))
            .collect();
        let command = draw_command(&mut self.rng, &known, self.scenario.bad_image_per_mille);
        let id = self.nodes[node].id.clone();
        match &command {
            Command::Apply { name, spec, scale } => {
                let (result, delta) = self.nodes[node]
                    .write(|replica, now| replica.put_service(now, name.clone(), (**spec).clone()));
                result.map_err(|error| format!("{id}: apply {name} refused: {error}"))?;
                if *scale {
                    self.stats.services_scaled += 1;
                } else {
                    self.stats.services_applied += 1;
                }
                if spec.image.starts_with(BAD_IMAGE_PREFIX) {
                    self.stats.bad_image_applies += 1;
                }
                trace!(
                    self,
                    "{id}: operator applies {name}: {} x{} ({} cpu_millis, {:?})",
                    spec.image,
                    spec.replicas,
                    spec.resources.cpu_millis,
                    spec.restart
                );
                if let Some(delta) = delta {
                    self.local_change(node, Writer::Operator, &delta, true)?;
                }
            }
            Command::Drain { deadline_ms } => {
                let drained = self.nodes[node]
                    .state()
                    .node(&id)
                    .and_then(|meta| meta.drain)
                    .is_some();
                let drain = (!drained).then(|| shoal_crdt::Drain {
                    since_unix_ms: self.nodes[node].clock.now_ms(),
                    deadline_ms: *deadline_ms,
                });
                let (result, delta) = self.nodes[node].write_meta(drain);
                result.map_err(|error| format!("{id}: drain refused: {error}"))?;
                if drained {
                    self.stats.nodes_undrained += 1;
                    trace!(self, "{id}: operator undrains it");
                } else {
                    self.stats.nodes_drained += 1;
                    trace!(self, "{id}: operator drains it for {deadline_ms} ms");
                }
                if let Some(delta) = delta {
                    self.local_change(node, Writer::Heartbeat, &delta, true)?;
                }
            }
            Command::Remove { name } => {
                let (result, delta) =
                    self.nodes[node].write(|replica, now| replica.remove_service(now, name));
                result.map_err(|error| format!("{id}: remove {name} refused: {error}"))?;
                self.stats.services_removed += 1;
                let delta = delta.ok_or_else(|| format!("{id}: remove {name} wrote nothing"))?;
                trace!(self, "{id}: operator removes {name}");
                self.local_change(node, Writer::Operator, &delta, true)?;
            }
        }
        self.wake(node);
        Ok(())
    }
}
