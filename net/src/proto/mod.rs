//! Sans-I/O protocol state machines: WAL replication (leader and follower)
//! and the council vote (agent and collector).
//!
//! Nothing here performs I/O, spawns, sleeps or reads a clock: messages come
//! in as values, time comes in as `now_ms` arguments, and what must happen
//! (publish, send, persist, alarm) goes out as effect values. The libp2p
//! transport and the chaos simulator drive exactly this code.
//!
//! Limits (STYLE 7) are named constants in [`wire`], [`follower`] and
//! [`council`]; the configurable ones default to them.

pub mod council;
pub mod follower;
pub mod leader;
pub mod wire;

pub use council::{
    certificate_proposal, certificate_transition, AgentRefusal, Announcement, Certificate,
    CouncilAgent, CouncilCollector, CouncilMsg, OpenError, VoteOutcome, VotePolicy, VoteRejection,
};
pub use follower::{
    AppliedRecord, Divergence, FollowerConfig, FollowerEffect, FollowerStats, FollowerStatus,
    RefusedMessage, ReplFollower,
};
pub use leader::{
    LeaderConfig, LeaderEffect, LeaderError, LeaderLog, LeaderStats, ReplLeader, SnapshotView,
};
pub use wire::{Gossip, Request, Response, WalBatch};

#[cfg(test)]
mod tests;
