//! SWOOSH core: the pure, deterministic part of the orchestrator.
//!
//! Architecture invariant: no I/O, no clock, no randomness, no threads. Time
//! arrives as an argument (`reducer::Ctx::now_ms`, HLC values), keys arrive as
//! arguments, and every effect is returned as data for the runtime to carry
//! out. The same code runs in the leader, followers, replay and simulation.

pub mod attention;
pub mod backbeat;
pub mod cbor;
pub mod cbor_de;
mod cbor_fast;
pub mod facts;
pub mod guards;
pub mod hash;
pub mod hlc;
pub mod invariants;
pub mod proposal;
pub mod record;
pub mod reducer;
pub mod scenario;
pub mod sig;
pub mod state;
pub mod statechart;

pub use hash::Hash;
pub use hlc::Hlc;
pub use proposal::{Proposal, ProposalBuilder};
pub use reducer::{
    apply_record, step, step_recalled, Ctx, Effect, Outcome, RejectKind, Rejection, Step,
};
pub use sig::{Signature, SignerId};
pub use state::{Genesis, NodeState, ProjectState};
