//! What every billing service agrees on.
//!
//! - [`money`]: amounts as `i64` micros with checked arithmetic and the limits of the contract.
//! - [`period`]: the billing month in the configured time zone.
//! - [`ids`]: validated identifiers and texts, parsed once at the edge.
//! - [`account`]: the account state, its transitions (grant, charge, credit, debit) and the one
//!   view function, [`account::view_at`], through which every reader presents an account.
//! - [`clock`]: the time source, settable in tests.
//! - [`config`]: settings from `configs/config.yaml` and `BILLING__` environment overrides.
//! - [`telemetry`]: logging set up in one place; [`shutdown`]: the stop signal.
//! - [`proto`]: the generated protobuf and gRPC types of `proto/billing/v1`.

pub mod account;
pub mod clock;
pub mod config;
pub mod ids;
pub mod money;
pub mod period;
pub mod proto;
pub mod shutdown;
pub mod telemetry;
