//! scheduler-svc issues the monthly free-quota reset; command-svc carries it out.
//!
//! - [`schedule`]: when the reset fires (cron in the billing zone) and which period it is for.
//! - [`publisher`]: the `ResetFreeQuota` command on `BILLING_COMMANDS`, deduplicated by id.
//! - [`app`]: the one-shot jobs that fire it, the start-up publication, and the probes.

pub mod app;
pub mod publisher;
pub mod schedule;
