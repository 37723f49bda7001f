//! command-svc against a real MariaDB: one service and one database per test.

mod helpers;
mod mariadb;

mod charges;
mod conservation;
mod outage;
mod payments;
mod periods;
mod schema;
mod scopes;
mod validation;
mod webhook;
