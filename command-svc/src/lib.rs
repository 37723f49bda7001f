//! command-svc owns every write of the billing service.
//!
//! - [`api`]: gRPC (scopes, validation, error mapping) and HTTP (payment webhook, probes).
//! - [`app`]: builds the whole service from settings, serves it, and shuts it down gracefully.
//! - [`bus`]: the outbox relay, which publishes committed events to NATS JetStream, the monthly
//!   reset's consumer and the alerts' webhook deliveries.
//! - [`commands`]: one MySQL transaction per command (lock, decide, write state, ledger rows and
//!   outbox events), every change recorded by one engine; charges committed in groups.
//! - [`domain`]: the commands it accepts and the pure decisions about payments.
//! - [`events`]: accounts, orders and events as the contract presents them.
//! - [`store`]: MySQL access, plain SQL next to the function that runs it.

pub mod api;
pub mod app;
pub mod bus;
pub mod commands;
pub mod domain;
pub mod events;
pub mod store;

/// Installs the process's TLS crypto provider (ring), which every HTTPS client of the workspace
/// (`reqwest` built without a provider of its own) needs before it is built. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
