//! query-svc owns the read side of billing. It reads only its own tables and Redis; the operators'
//! rebuild, reconcile and dead-letter replay are the billing-ops crate (`ops/`).
//!
//! - [`api`]: the REST API for the frontend (JWT), and the forwarding of recharge orders and alert
//!   settings to command-svc over gRPC.
//! - [`app`]: builds the service from settings, serves it, and shuts it down gracefully.
//! - [`projection`]: the durable JetStream consumer that applies events to the read model, and the
//!   dead-letter stream for what it cannot apply.
//! - [`store`]: the `rm_` tables in MySQL (accounts, records, daily usage, orders).

pub mod api;
pub mod app;
pub mod projection;
pub mod store;
