//! scheduler-svc issues the monthly free-quota reset; command-svc carries it out.
//!
//! - [`app`]: the one-shot jobs that fire it, the start-up publication, and the probes.
//! - [`publisher`]: the `ResetFreeQuota` command on `BILLING_COMMANDS`, deduplicated by id,
//!   published until JetStream acks it.
//! - [`schedule`]: when the reset fires (cron in the billing zone) and which period it is for.

pub mod app;
pub mod publisher;
pub mod schedule;
