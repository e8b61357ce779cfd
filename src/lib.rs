//! Herald: a real-time event hub. An event comes in once, lands in one durable, ordered log
//! with a sequence number, and goes out to every subscriber over SSE and WebSocket; the seq
//! is the one cursor that resumes any of them with nothing lost.
//!
//! # Layout
//! - [`event`]: channel names, patterns, and the envelope, encoded once per event.
//! - [`store`]: key encodings shared by everything kept in the embedded store.
//! - [`log`]: the durable log: seq assignment, group commit, idempotency, retention. The
//!   only owner of order and durability.
//! - [`hub`]: fan-out from the log's commits to live subscriptions, and resume (history, then
//!   live, with no gap or duplicate at the hand-over).
//! - [`http`]: the router and the transports: the JSON API, SSE, WebSocket.
//! - [`auth`], [`limits`]: who may do what (API keys, scoped JWTs), and per-client bounds;
//!   [`proxy`]: or the app decides (backend hooks).
//! - [`server`]: the accept loop and lifecycle (bind, drain, shutdown).
//! - [`webhook`]: outgoing webhooks: durable per-endpoint queues fed from the log, signing,
//!   retries, the SSRF guard.
//! - [`config`], [`cli`], [`bench`]: configuration, the `herald` command line, load tools.

// Public: what the binary, the end-to-end tests, the fuzz targets and the benches use; the
// rest is the crate's own (the compiler then points out what nothing uses).
pub(crate) mod auth;
pub(crate) mod bench;
pub mod cli;
pub mod config;
pub mod event;
pub(crate) mod http;
pub(crate) mod hub;
pub(crate) mod limits;
pub mod log;
pub(crate) mod presence;
pub(crate) mod proxy;
pub(crate) mod pusher;
pub(crate) mod server;
pub(crate) mod stats;
pub(crate) mod store;
pub(crate) mod tls;
pub(crate) mod webhook;

/// What the fuzz targets drive: the parsers of untrusted client input, and nothing else of
/// the HTTP layer (kept crate-private so the compiler points out what nothing uses).
pub mod fuzzing {
    pub use crate::http::api::parse_publish;
    pub use crate::http::ws::parse_client_message;
}
