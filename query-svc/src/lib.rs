//! query-svc owns the read side of billing.
//!
//! - [`projection`]: the durable JetStream consumer that applies events to the read model, and the
//!   dead-letter stream for what it cannot apply.
//! - [`store`]: the `rm_` tables in MySQL (accounts, records, daily usage, orders).
//! - [`api`]: the REST API for the frontend (JWT), and the forwarding of recharge orders to
//!   command-svc over gRPC.
//! - [`app`]: builds the service from settings, serves it, and shuts it down gracefully.

pub mod api;
pub mod app;
pub mod projection;
pub mod store;
