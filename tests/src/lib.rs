//! End-to-end tests of SWOOSH across crates live in `tests/tests/`; they are
//! added as the served node (issue 4) and replication (issue 5) land.
