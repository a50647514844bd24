//! SWOOSH network surfaces: the HTTP API (axum, OpenAPI via utoipa), the
//! Rust client SDK, and the sans-I/O replication and council protocols.
//!
//! Architecture invariant: transports drive sans-I/O protocol state machines
//! (`proto` performs no I/O); HTTP handlers only translate between JSON and
//! the actors' `NodeHandle`.

pub mod api;
pub mod client;
pub mod http;
pub mod p2p;
pub mod proto;
pub mod recovering;
