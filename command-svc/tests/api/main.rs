//! command-svc against a real MariaDB and NATS: one service, one database and one set of streams
//! per test.

mod helpers;

mod alerts;
mod charges;
mod conservation;
mod hostile;
mod hot_path;
mod keys;
mod limits;
mod memory;
mod observability;
mod outage;
mod payments;
mod periods;
mod plans;
mod prices;
mod refunds;
mod relay;
mod replays;
mod reservations;
mod reset;
mod safety;
mod schema;
mod scopes;
mod validation;
mod webhook;
