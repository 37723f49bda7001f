//! query-svc with command-svc, against real MariaDB, Redis and NATS: one stack per test.

mod helpers;
mod projection;
