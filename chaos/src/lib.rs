//! SWOOSH chaos (issue 6): a seeded, single-threaded simulation of a whole
//! cluster driving the same core, storage and protocol code as production.
//!
//! Nothing is implemented here yet; the fault-injecting workload it will use
//! already exists as `swoosh_core::scenario::{Driver, Fault}`.
//! Architecture invariant: one thread, one seed, same final hash every run.
