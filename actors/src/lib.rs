//! SWOOSH runtime actors (issue 4): the supervised `ractor` tree — the
//! sequencer (single writer), one actor per statechart region, the WAL
//! writer with group commit, the snapshotter and the attention scorer.
//!
//! Nothing is implemented here yet; the node that serves lands with issue 4.
//! Architecture invariant: actors restart from committed state only, and
//! every mailbox is bounded.
