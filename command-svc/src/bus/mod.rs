//! command-svc on the message bus (NATS JetStream; names and streams in [`shared::bus`]).
//!
//! - [`relay`]: the transactional-outbox relay. Commands never talk to NATS: they write their
//!   events into the `outbox` table in their own MySQL transaction, and the relay publishes what
//!   was committed, so NATS being away only delays events, it never loses or blocks a command.

//! - [`reset`]: the consumer of `BILLING_COMMANDS` that carries out the monthly reset.
//! - [`alerts`]: the consumers of the alert events that deliver them to developers' webhooks.
//! - [`follow`]: each replica's follower of every replica's events, which keeps its memory of
//!   accounts (read by `CheckQuota`) up to date.

pub mod alerts;
pub mod follow;
pub mod relay;
pub mod reset;

pub use alerts::AlertDispatcher;
pub use follow::AccountFollower;
pub use relay::OutboxRelay;
pub use reset::ResetConsumer;
