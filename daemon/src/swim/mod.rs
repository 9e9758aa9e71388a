//! Membership by SWIM: who is alive, suspected or down, as soft state apart from the
//! replicated document. `core::Swim` wraps `foca` (sans-IO: packets in, packets and timers
//! out, no clock, randomness from a seed) so the daemon's driver (`sync::swim`) and a
//! simulator run the same protocol; `identity::SwimId` is what a member is known by.
//!
//! Liveness is what SWIM says of a member it knows (`state::members::PeerStates`); the node
//! metadata in the document is written only when it changes and at a slow refresh, which
//! eviction and tombstone GC rely on. SWIM messages travel as `POST /v1/swim` on the kept
//! mTLS connections, so a member is whoever its certificate names: a packet whose sender
//! claims another node id is refused.

pub mod core;
pub mod identity;
pub mod sim;

pub use self::core::{Dissemination, Outbox, Swim, SwimConfig, SwimError, SwimTimer};
pub use self::identity::SwimId;
