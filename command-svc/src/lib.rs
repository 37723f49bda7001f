//! command-svc owns every write of the billing service.
//!
//! - [`domain`]: the commands it accepts and the pure decisions about payments.
//! - [`commands`]: one MySQL transaction per command: lock, decide, write state + ledger + outbox.
//! - [`store`]: MySQL access, plain SQL next to the function that runs it.
//! - [`events`]: accounts, orders and events as the contract presents them.
//! - [`bus`]: the outbox relay, which publishes committed events to NATS JetStream.
//! - [`api`]: gRPC (scopes, validation, error mapping) and HTTP (payment webhook, probes).
//! - [`app`]: builds the whole service from settings, serves it, and shuts it down gracefully.

pub mod api;
pub mod app;
pub mod bus;
pub mod commands;
pub mod domain;
pub mod events;
pub mod store;
