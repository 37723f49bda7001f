//! What every billing service agrees on.
//!
//! - [`account`]: the account state, its transitions (grant, charge, credit, debit, hold, settle,
//!   release, refund, plan), [`account::free_left`], and the one view function,
//!   [`account::view_at`], through which every reader presents an account.
//! - [`alerts`]: which changes raise a low-balance or a free-quota-exhausted alert.
//! - [`backoff`]: the one doubling, bounded, jittered pause of every loop that tries again.
//! - [`bus`]: NATS JetStream stream and subject names, stream settings, connecting, durable
//!   consumers built ([`bus::durable_consumer`]) and kept running ([`bus::keep_consuming`]), and
//!   the reset command's id and publication.
//! - [`cache`]: account snapshots in Redis, version-guarded.
//! - [`clock`]: the time source, settable in tests.
//! - [`config`]: settings from `configs/config.yaml` and `BILLING__` environment overrides, and
//!   the checks of each service's own settings ([`config::Settings::check_for`]).
//! - [`db`]: MySQL sessions as the services open them, the migrations, and MySQL's errors read
//!   once ([`db::failure`]).
//! - [`endpoints`]: the probe and metrics paths.
//! - [`ids`]: validated identifiers and texts, parsed once at the edge, bound by sqlx as text.
//! - [`limits`]: spend limits per account, API or API key and day or month, decided exactly on
//!   locked counters.
//! - [`listener`]: every listener bounded (connections, timeouts, body size).
//! - [`money`]: amounts as `i64` micros with checked arithmetic and the limits of the contract.
//! - [`order`]: how a recharge order's status is stored (its rank) and shown (expiry).
//! - `otel`: span export over OTLP (cargo feature `otel`).
//! - [`period`]: the billing month in the configured time zone.
//! - [`pricing`]: the priced amount of a request, ⌈Σ quantity × price ÷ per_units⌉ exactly,
//!   rounded up once.
//! - [`proto`]: the generated protobuf and gRPC types of `proto/billing/v1`, and
//!   [`proto::EVENT_SCHEMA_VERSION`].
//! - [`record`]: the kinds of record (one name each in the ledger, the read model and the API),
//!   the ledger row as stored, and an account's amounts at one version.
//! - [`shutdown`]: the stop signal and the one [`shutdown::Stop`] every loop watches.
//! - [`signature`]: the HMAC scheme of signed HTTP deliveries, both ways.
//! - [`sql_script`]: several statements with literal values in one round trip.
//! - [`telemetry`]: logging and metrics set up in one place.
//! - [`trace`]: the W3C trace context that follows a command to its projection.

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
pub mod limits;
pub mod listener;
pub mod money;
pub mod order;
#[cfg(feature = "otel")]
mod otel;
pub mod period;
pub mod pricing;
pub mod proto;
pub mod record;
pub mod shard;
pub mod shutdown;
pub mod signature;
pub mod sql_script;
pub mod telemetry;
pub mod trace;
