//! command-svc against a real MariaDB: one service and one database per test.

mod helpers;

mod charges;
mod conservation;
mod payments;
mod periods;
mod schema;
mod scopes;
mod validation;
mod webhook;
