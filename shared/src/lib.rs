//! What every billing service agrees on.
//!
//! - [`money`]: amounts as `i64` micros with checked arithmetic and the limits of the contract.
//! - [`period`]: the billing month in the configured time zone.
//! - [`ids`]: validated identifiers and texts, parsed once at the edge.
//! - [`account`]: the account state, its transitions (grant, charge, credit, debit) and the one
//!   view function, [`account::view_at`], through which every reader presents an account.
//! - [`alerts`]: which changes raise a low-balance or a free-quota-exhausted alert;
//!   [`signature`]: the HMAC scheme of signed HTTP deliveries, both ways.
//! - [`bus`]: NATS JetStream stream and subject names, stream settings, connecting.
//! - [`cache`]: account snapshots in Redis, version-guarded.
//! - [`order`]: how a recharge order's status is shown; [`record`]: the kinds of record, one
//!   name each in the ledger, the read model and the API.
//! - [`clock`]: the time source, settable in tests.
//! - [`db`]: MySQL sessions as both services open them, and the migrations; [`sql_script`]:
//!   several statements with literal values in one round trip.
//! - [`config`]: settings from `configs/config.yaml` and `BILLING__` environment overrides, and
//!   the rules their secrets must meet; [`listener`]: every listener bounded (connections,
//!   timeouts, body size).
//! - [`telemetry`]: logging set up in one place; [`shutdown`]: the stop signal and the one
//!   [`shutdown::Stop`] every loop watches; [`backoff`]: the one jittered backoff; [`endpoints`]:
//!   the probe and metrics paths; [`trace`]: the W3C trace context that follows a command to
//!   its projection.
//! - [`proto`]: the generated protobuf and gRPC types of `proto/billing/v1`.

pub mod account;
pub mod alerts;
pub mod backoff;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod config;
pub mod db;
pub mod endpoints;
pub mod ids;
pub mod listener;
pub mod money;
pub mod order;
#[cfg(feature = "otel")]
mod otel;
pub mod period;
pub mod proto;
pub mod record;
pub mod shutdown;
pub mod signature;
pub mod sql_script;
pub mod telemetry;
pub mod trace;
