//! query-svc with command-svc, against real MariaDB, Redis and NATS: one stack per test.

mod end_to_end;
mod export;
mod fresh;
mod helpers;
mod support;

mod account;
mod auth;
mod bad_input;
mod bus_auth;
mod console;
mod hostile;
mod limits;
mod observability;
mod openapi;
mod ops;
mod orders;
mod prices;
mod projection;
mod records;
mod usage;
