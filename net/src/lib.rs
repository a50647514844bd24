//! SWOOSH network surfaces (issues 4–5): the HTTP API (axum, OpenAPI) and the
//! libp2p transport for WAL replication and council votes.
//!
//! Nothing is implemented here yet. Architecture invariant: transports drive
//! sans-I/O protocol state machines; no protocol logic lives in a transport.
