//! Settings of all three services, layered: built-in defaults, then `configs/config.yaml` (or the
//! file given with `-conf`/`--config`), then environment variables `BILLING__<KEY>__<PATH>`, e.g.
//! `BILLING__AUTH__JWT_SECRET` or `BILLING__DATABASE__URL`. Lists of plain values are written
//! comma-separated (`BILLING__AUTH__JWT_PREVIOUS_SECRETS=old1,old2`).

use std::{collections::HashMap, fmt, path::Path};

use serde::Deserialize;

use crate::{money::Micros, period::BillingZone};

mod secrets;
pub use secrets::{MIN_SECRET_BYTES, Service};

/// The default configuration file, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "configs/config.yaml";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A development machine: development secrets (`dev-…`, `…change-me…`) and short ones are
    /// accepted, with a warning at start. Never in production.
    pub dev_mode: bool,
    pub command: CommandSettings,
    pub query: QuerySettings,
    pub scheduler: SchedulerSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub nats: NatsSettings,
    pub outbox: OutboxSettings,
    pub reset: ResetSettings,
    pub billing: BillingSettings,
    pub auth: AuthSettings,
    pub payment: PaymentSettings,
    pub alerts: AlertSettings,
    pub reservations: ReservationSettings,
    pub listeners: ListenerSettings,
    pub telemetry: TelemetrySettings,
}

/// The bounds of every HTTP and gRPC listener of the three services ("Running safely").
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Connections open at once per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection's first bytes, and an HTTP request's whole head, must come within this;
    /// it also ends an HTTP keep-alive connection that sends no next request.
    pub header_read_timeout_ms: u64,
    /// A connection that moves no byte either way for this long is closed (gRPC connections
    /// are pinged well within it).
    pub idle_timeout_ms: u64,
    /// A request not answered within this: HTTP `408 REQUEST_TIMEOUT`, gRPC `CANCELLED` (the
    /// outcome is unknown: retry with the same key).
    pub request_timeout_ms: u64,
    /// A REST or webhook body larger than this: `413 PAYLOAD_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// A larger gRPC request message is refused (`OUT_OF_RANGE`) before it is decoded.
    pub grpc_max_message_bytes: usize,
    /// Calls in flight on one gRPC connection.
    pub grpc_max_concurrent_streams: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSettings {
    pub grpc_addr: String,
    pub http_addr: String,
    /// How long a draining server waits for open calls at shutdown.
    pub shutdown_grace_ms: u64,
    /// Concurrent charges committed together.
    pub group_commit: GroupCommitSettings,
    /// How long command-svc's Redis snapshot of an account (read by `CheckQuota`) lives without
    /// a newer commit.
    pub snapshot_ttl_secs: u64,
    /// The in-process view of accounts `CheckQuota` answers from first.
    pub account_memory: AccountMemorySettings,
}

/// command-svc's in-process view of accounts: learned from its own commits, the events of every
/// replica's commits and the reads of checks that missed (an id without an account included);
/// each entry forgotten `max_age_ms` after it was learned, which bounds how old a check's answer
/// can be. Off, `CheckQuota` reads Redis, then MySQL.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountMemorySettings {
    pub enabled: bool,
    pub max_age_ms: u64,
    /// Ids remembered at most (accounts and ids without one), a few hundred bytes each.
    pub capacity: usize,
}

/// Group commit of charges: the charges that arrive while a batch commits are gathered (up to
/// `max_batch`, waiting at most `max_wait_us` for more) and committed in one transaction with
/// multi-row statements; each caller is answered after the commit. Off, every charge is its own
/// transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCommitSettings {
    pub enabled: bool,
    pub max_batch: usize,
    pub max_wait_us: u64,
    /// Batches committing at once, each on its own connection (per shard, when sharded).
    pub workers: usize,
    /// The shards of a database split by user as Vitess names them (`-80`, `80-`), so that no
    /// batch spans two; empty: one database. See [`crate::shard`].
    pub shards: Vec<String>,
}

impl GroupCommitSettings {
    /// The shards charges are grouped by (checked when the settings are loaded).
    pub fn shards(&self) -> crate::shard::Shards {
        crate::shard::Shards::parse(&self.shards).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySettings {
    pub http_addr: String,
    /// Where query-svc reaches command-svc to forward recharge orders.
    pub command_endpoint: String,
    /// The caller token query-svc presents to command-svc (scope `orders`).
    pub command_token: Secret,
    /// The durable JetStream consumer shared by every query-svc replica.
    pub consumer_name: String,
    /// Events fetched and projected in one MySQL transaction.
    pub batch_size: usize,
    /// Deliveries of an event that cannot be projected before it goes to the dead-letter stream.
    pub max_deliver: i64,
    /// How long JetStream waits for an ack before it delivers an event again.
    pub ack_wait_secs: u64,
    /// How long an account snapshot stays in Redis without a newer event (MySQL answers after).
    pub snapshot_ttl_secs: u64,
    /// Requests waiting at once for `min_version`; past it, a request answers at once with what
    /// there is (`X-Billing-Stale` when older).
    pub max_version_waiters: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    pub http_addr: String,
    /// Six fields, seconds first: `0 0 0 1 * *` is midnight on the 1st.
    pub cron: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    /// How long a command waits for a connection before it answers UNAVAILABLE.
    pub acquire_timeout_ms: u64,
    pub migrate_on_start: bool,
    /// How often a transaction that hit a deadlock or lock timeout is tried again.
    pub max_retries: u32,
    /// How long a command waits for a row lock before its transaction is retried
    /// (`innodb_lock_wait_timeout` of the service's sessions).
    pub lock_wait_timeout_secs: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Secret,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// A Redis call taking longer counts as a failure (MySQL answers, Redis is skipped briefly).
    pub timeout_ms: u64,
    /// `url` names a Redis Cluster: one or more of its nodes, comma-separated. Each snapshot's
    /// key carries the user id as its hash tag, and calls of several keys go to each key's node.
    pub cluster: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    pub url: String,
    /// Prepended to every stream name: empty gives `BILLING_EVENTS`; tests use their own.
    pub stream_prefix: String,
    /// The first token of every subject: `billing` gives `billing.v1.events.<kind>`.
    pub subject_prefix: String,
    /// How long the events stream keeps an event (hours).
    pub events_max_age_hours: u64,
    /// How long dead letters are kept for operators (hours).
    pub dlq_max_age_hours: u64,
    /// How long the commands stream keeps a command (hours).
    pub commands_max_age_hours: u64,
    /// JetStream drops a publish whose `Nats-Msg-Id` it saw within this window (seconds).
    pub duplicate_window_secs: u64,
    /// Copies of each stream kept by a JetStream cluster (3 in production; 1 on a lone server).
    pub stream_replicas: usize,
    /// Credentials, one kind at most: `user` with `password`, a `token`, an NKey seed file, or a
    /// `.creds` file (a user JWT and its NKey seed). None: an open server.
    pub user: String,
    pub password: Secret,
    pub token: Secret,
    pub nkey_seed_file: String,
    pub credentials_file: String,
    /// TLS: the CA that signed the server's certificate (added to the system's roots), a client
    /// certificate and key for servers that verify clients, and whether plain connections are
    /// refused (implied by any of the files).
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_required: bool,
}

impl NatsSettings {
    /// At most one kind of credentials, a user with a password, and both halves of a client
    /// certificate.
    fn validate(&self) -> Result<(), ConfigError> {
        let kinds = [
            !self.user.is_empty() || !self.password.expose().is_empty(),
            !self.token.expose().is_empty(),
            !self.nkey_seed_file.is_empty(),
            !self.credentials_file.is_empty(),
        ];
        let invalid = |why: &str| {
            Err(ConfigError::Invalid {
                key: "nats",
                why: why.to_owned(),
            })
        };
        if kinds.iter().filter(|set| **set).count() > 1 {
            return invalid(
                "one kind of credentials at most: user and password, token, nkey_seed_file or credentials_file",
            );
        }
        if self.user.is_empty() != self.password.expose().is_empty() {
            return invalid("user and password go together");
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return invalid("tls_cert_file and tls_key_file go together");
        }
        if let Err(why) = crate::bus::server_addrs(&self.url) {
            return Err(ConfigError::Invalid {
                key: "nats.url",
                why: format!("must be a NATS URL or several separated by commas: {why}"),
            });
        }
        Ok(())
    }
}

/// The relay that publishes the outbox to NATS (command-svc).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Rows claimed and published per round.
    pub batch_size: u32,
    /// The relay polls this often besides waking on every commit (milliseconds).
    pub poll_interval_ms: u64,
    /// Published rows are kept this long so events can be re-published after a bus failure.
    pub retention_hours: u64,
    /// How often published rows past retention are purged (seconds).
    pub purge_interval_secs: u64,
    /// How long a publish may wait for JetStream's ack (milliseconds).
    pub publish_timeout_ms: u64,
}

/// The monthly free-quota reset as command-svc carries it out.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetSettings {
    /// The durable consumer on `BILLING_COMMANDS` shared by every command-svc replica.
    pub consumer_name: String,
    /// Accounts locked and granted per transaction (at most 2,000).
    pub batch_size: u32,
    /// Ranges of accounts walked side by side (fewer for small account counts).
    pub workers: u32,
    /// JetStream redelivers a command not acked (nor marked in progress) for this long.
    pub ack_wait_secs: u64,
    /// How long before its first instant the next period's reset is accepted (clock skew
    /// between hosts); earlier, it is ignored. Written `300s`, `5m`, `1h`.
    pub next_period_lead: DurationSetting,
}

/// A duration written with its unit: `250ms`, `30s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationSetting(pub std::time::Duration);

impl DurationSetting {
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl std::str::FromStr for DurationSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?} has no unit (ms, s, m or h)"))?;
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} does not start with a number"))?;
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h")),
        };
        value
            .checked_mul(millis_per_unit)
            .map(|ms| DurationSetting(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| format!("{text:?} is too long"))
    }
}

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingSettings {
    pub currency: String,
    pub default_monthly_free_micros: i64,
    pub time_zone: String,
    /// How long a recharge order waits for its payment before it shows as EXPIRED.
    pub order_ttl_secs: u64,
    /// The price list that prices the usage of accounts assigned none.
    pub default_price_list: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Check, charge and read accounts: the gateway.
    Quota,
    /// Create and read recharge orders, read accounts: query-svc.
    Orders,
    /// Payment notifications: the payment service.
    Payment,
    /// Everything, including adjustments: operators.
    Admin,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    pub name: String,
    pub token: Secret,
    pub scopes: Vec<Scope>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub callers: Vec<CallerSettings>,
    pub jwt_secret: Secret,
    #[serde(default)]
    pub jwt_previous_secrets: Vec<Secret>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    pub webhook_secret: Secret,
    #[serde(default)]
    pub webhook_previous_secrets: Vec<Secret>,
    /// A signature's timestamp may be this far from now, either way.
    pub signature_tolerance_secs: u64,
}

/// Reservations (`ReserveQuota`): their default lifetime and the sweeper that releases the ones
/// that expired.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationSettings {
    /// The lifetime of a reservation whose request gives none (`ttl_ms` 0).
    pub default_ttl_ms: u64,
    /// How often each command-svc replica looks for expired holds to release.
    pub sweep_interval_ms: u64,
    /// Expired holds read per page of a sweep (each sweep walks them all, page by page).
    pub sweep_batch: u32,
}

/// Alerts to developers (`balance_low`, `free_quota_exhausted`) and their webhook deliveries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// `balance_low` fires when the balance falls to or below this, unless the user set their
    /// own threshold.
    pub low_balance_threshold_micros: i64,
    /// The durable consumers of the alert events, `<name>-balance-low` and
    /// `<name>-free-quota-exhausted`, shared by command-svc's replicas.
    pub consumer_name: String,
    /// One delivery attempt may take this long.
    pub delivery_timeout_ms: u64,
    /// Attempts per alert before it is recorded as failed.
    pub max_attempts: u32,
    /// The pause after the first failed attempt; doubled after each, up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Webhooks on loopback, private, link-local or unspecified addresses are refused unless
    /// this is set (a webhook must not reach into the service's own network).
    pub allow_private_addresses: bool,
    /// Settled deliveries (delivered, failed, no webhook) are kept this long, then purged.
    pub delivery_retention_days: u32,
    /// How often each replica purges deliveries past their retention.
    pub purge_interval_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// A `tracing` filter such as `info,sqlx=warn`; `RUST_LOG` wins when set.
    pub filter: String,
    pub format: LogFormat,
    /// An OpenTelemetry collector's OTLP/gRPC address (`http://otel-collector:4317`) to export
    /// spans to; empty: none. Takes effect only in builds with the `otel` cargo feature.
    pub otlp_endpoint: String,
}

/// A configured secret: usable, but never printed by `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid setting {key}: {why}")]
    Invalid { key: &'static str, why: String },
}

impl Settings {
    /// Loads the file at `path` (which must exist) over the defaults, then the process
    /// environment's `BILLING__` variables.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        Self::load_files(&[path], None)
    }

    /// As [`Settings::load`], with `env` standing in for the process environment (tests).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        Self::load_files(&[path], env)
    }

    /// Loads the files in order, each over the ones before (a list, such as `auth.callers`, is
    /// replaced whole), then the environment: `env`, or the process's when `None`. A key that
    /// no setting has, in a file or a `BILLING__` variable, is refused, so a misspelt override
    /// cannot pass unnoticed.
    pub fn load_files(
        paths: &[impl AsRef<Path>],
        env: Option<HashMap<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut environment = config::Environment::with_prefix("BILLING")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("auth.jwt_previous_secrets")
            .with_list_parse_key("command.group_commit.shards")
            .with_list_parse_key("payment.webhook_previous_secrets");
        if let Some(env) = env {
            environment = environment.source(Some(env));
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml));
        for path in paths {
            builder = builder
                .add_source(config::File::from(path.as_ref()).format(config::FileFormat::Yaml));
        }
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The paths named by `-conf PATH` or `--config PATH` on the command line, in order (a
    /// deployment gives its configuration and then its secrets), else the default file.
    pub fn paths_from_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut paths = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-conf" || arg == "--config" {
                paths.extend(args.next());
            } else if let Some(path) = arg.strip_prefix("--config=") {
                paths.push(path.to_owned());
            }
        }
        if paths.is_empty() {
            paths.push(DEFAULT_CONFIG_PATH.to_owned());
        }
        paths
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.billing.zone()?;
        self.billing.default_monthly_free()?;
        if self.billing.currency.len() != 3
            || !self
                .billing
                .currency
                .bytes()
                .all(|b| b.is_ascii_uppercase())
        {
            return Err(ConfigError::Invalid {
                key: "billing.currency",
                why: "must be a three-letter ISO 4217 code such as CNY".into(),
            });
        }
        if crate::pricing::ListName::parse("", &self.billing.default_price_list).is_err() {
            return Err(ConfigError::Invalid {
                key: "billing.default_price_list",
                why: "must be 1..64 of [a-z0-9_-]".into(),
            });
        }
        if let Err(why) = crate::shard::Shards::parse(&self.command.group_commit.shards) {
            return Err(ConfigError::Invalid {
                key: "command.group_commit.shards",
                why,
            });
        }
        if self.reset.next_period_lead.get() > std::time::Duration::from_secs(24 * 3600) {
            return Err(ConfigError::Invalid {
                key: "reset.next_period_lead",
                why: "must be at most 24h: an earlier reset grants next month's quota early".into(),
            });
        }
        Ok(())
    }
}

impl Settings {
    /// Refuses to start `service` with one of its own settings wrong: its secrets
    /// ([`Settings::check_secrets`]) and the bounds only it reads. Loading checks what every
    /// service reads (the bus, the billing zone, the currency); each service then checks only
    /// what it uses, so the scheduler needs no caller, webhook secret or JWT key.
    pub fn check_for(&self, service: Service) -> Result<(), ConfigError> {
        if service == Service::Command {
            self.check_command()?;
        }
        self.check_secrets(service)
    }

    fn check_command(&self) -> Result<(), ConfigError> {
        if !(1_000..=3_600_000).contains(&self.reservations.default_ttl_ms) {
            return Err(ConfigError::Invalid {
                key: "reservations.default_ttl_ms",
                why: "must be 1000 ..= 3600000 (1 s to 1 h, the bounds of ttl_ms)".into(),
            });
        }
        let memory = &self.command.account_memory;
        if memory.enabled && !(100..=60_000).contains(&memory.max_age_ms) {
            return Err(ConfigError::Invalid {
                key: "command.account_memory.max_age_ms",
                why: "must be 100 ..= 60000 (how old a check's answer may be; the directory is \
                      scanned every half of it)"
                    .into(),
            });
        }
        Ok(())
    }
}

impl BillingSettings {
    pub fn zone(&self) -> Result<BillingZone, ConfigError> {
        self.time_zone
            .parse()
            .map_err(|e: crate::period::PeriodError| ConfigError::Invalid {
                key: "billing.time_zone",
                why: e.to_string(),
            })
    }

    pub fn default_monthly_free(&self) -> Result<Micros, ConfigError> {
        let amount = self.default_monthly_free_micros;
        if (0..=crate::money::MAX_AMOUNT.get()).contains(&amount) {
            Ok(Micros::new(amount))
        } else {
            Err(ConfigError::Invalid {
                key: "billing.default_monthly_free_micros",
                why: "must be 0 ..= 10^12 micros".into(),
            })
        }
    }
}

/// Every key the settings have, as dotted paths (`command.group_commit.max_batch`), in the order
/// of the built-in defaults' sections: what the documentation must name.
pub fn key_paths() -> Vec<String> {
    fn walk(prefix: &str, value: config::Value, into: &mut Vec<String>) {
        match value.kind {
            config::ValueKind::Table(table) => {
                let mut entries: Vec<_> = table.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, value) in entries {
                    let path = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, into);
                }
            }
            _ => into.push(prefix.to_owned()),
        }
    }
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Yaml))
        .build()
        .expect("the built-in defaults load");
    let mut paths = Vec::new();
    let root = defaults.cache.clone();
    walk("", root, &mut paths);
    paths
}

/// Every key has a default, so a configuration file only says what differs.
const DEFAULTS: &str = r#"
dev_mode: false
command:
  grpc_addr: 127.0.0.1:50051
  http_addr: 127.0.0.1:8081
  shutdown_grace_ms: 10000
  group_commit:
    enabled: true
    max_batch: 256
    max_wait_us: 0
    workers: 2
    shards: []
  snapshot_ttl_secs: 30
  account_memory:
    enabled: true
    max_age_ms: 2000
    capacity: 200000
query:
  http_addr: 127.0.0.1:8080
  command_endpoint: http://127.0.0.1:50051
  command_token: ""
  consumer_name: query-svc
  batch_size: 256
  max_deliver: 5
  ack_wait_secs: 30
  snapshot_ttl_secs: 604800
  max_version_waiters: 1024
scheduler:
  http_addr: 127.0.0.1:8082
  cron: "0 0 0 1 * *"
database:
  url: mysql://billing:billing@127.0.0.1:3306/billing
  max_connections: 32
  acquire_timeout_ms: 5000
  migrate_on_start: true
  max_retries: 8
  lock_wait_timeout_secs: 5
redis:
  url: redis://127.0.0.1:6379
  key_prefix: "billing:"
  timeout_ms: 500
  cluster: false
nats:
  url: nats://127.0.0.1:4222
  stream_prefix: ""
  subject_prefix: billing
  events_max_age_hours: 168
  dlq_max_age_hours: 720
  commands_max_age_hours: 168
  duplicate_window_secs: 120
  stream_replicas: 1
  user: ""
  password: ""
  token: ""
  nkey_seed_file: ""
  credentials_file: ""
  tls_ca_file: ""
  tls_cert_file: ""
  tls_key_file: ""
  tls_required: false
outbox:
  batch_size: 256
  poll_interval_ms: 250
  retention_hours: 24
  purge_interval_secs: 60
  publish_timeout_ms: 5000
reset:
  consumer_name: command-svc
  batch_size: 1000
  workers: 4
  ack_wait_secs: 60
  next_period_lead: 5m
billing:
  currency: CNY
  default_monthly_free_micros: 10000000
  time_zone: Asia/Shanghai
  order_ttl_secs: 1800
  default_price_list: default
auth:
  callers: []
  jwt_secret: ""
  jwt_previous_secrets: []
payment:
  webhook_secret: ""
  webhook_previous_secrets: []
  signature_tolerance_secs: 300
alerts:
  low_balance_threshold_micros: 1000000
  consumer_name: command-svc-alerts
  delivery_timeout_ms: 5000
  max_attempts: 8
  retry_initial_ms: 1000
  retry_max_ms: 300000
  allow_private_addresses: false
  delivery_retention_days: 30
  purge_interval_secs: 3600
reservations:
  default_ttl_ms: 300000
  sweep_interval_ms: 1000
  sweep_batch: 100
listeners:
  max_connections: 1024
  header_read_timeout_ms: 10000
  idle_timeout_ms: 120000
  request_timeout_ms: 15000
  max_body_bytes: 8192
  grpc_max_message_bytes: 1048576
  grpc_max_concurrent_streams: 256
telemetry:
  filter: info
  format: pretty
  otlp_endpoint: ""
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` over the repository's development configuration, whose secrets every service
    /// accepts (`dev_mode`).
    fn load_over_repository_config(text: &str, env: HashMap<String, String>) -> Settings {
        let repository =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
        Settings::load_files(&[repository, write_config(text)], Some(env)).unwrap()
    }

    fn write_config(text: &str) -> std::path::PathBuf {
        static WRITTEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = WRITTEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("billing-config-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
        let path = write_config("billing:\n  time_zone: UTC\nauth:\n  jwt_secret: from-file\n");
        let env = HashMap::from([
            (
                "BILLING__AUTH__JWT_SECRET".to_owned(),
                "from-env".to_owned(),
            ),
            (
                "BILLING__AUTH__JWT_PREVIOUS_SECRETS".to_owned(),
                "old1,old2".to_owned(),
            ),
            (
                "BILLING__DATABASE__MAX_CONNECTIONS".to_owned(),
                "7".to_owned(),
            ),
        ]);
        let settings = Settings::load_with_env(&path, Some(env)).unwrap();
        assert_eq!(settings.billing.time_zone, "UTC");
        assert_eq!(settings.auth.jwt_secret.expose(), "from-env");
        assert_eq!(
            settings.auth.jwt_previous_secrets,
            vec![Secret::new("old1"), Secret::new("old2")]
        );
        assert_eq!(settings.database.max_connections, 7);
        assert_eq!(settings.command.grpc_addr, "127.0.0.1:50051");
    }

    #[test]
    fn a_bad_time_zone_is_refused_at_load() {
        let path = write_config("billing:\n  time_zone: Nowhere/Land\n");
        let error = Settings::load_with_env(&path, Some(HashMap::new())).unwrap_err();
        assert!(error.to_string().contains("billing.time_zone"), "{error}");
    }

    #[test]
    fn a_reservation_lifetime_outside_the_rpc_bounds_is_refused_by_command_svc() {
        for ms in [0, 999, 3_600_001] {
            let settings = load_over_repository_config(
                &format!("reservations:\n  default_ttl_ms: {ms}\n"),
                HashMap::new(),
            );
            let error = settings.check_for(Service::Command).unwrap_err();
            assert!(
                error.to_string().contains("reservations.default_ttl_ms"),
                "{ms}: {error}"
            );
            settings.check_for(Service::Scheduler).unwrap();
        }
        let settings =
            load_over_repository_config("reservations:\n  default_ttl_ms: 1000\n", HashMap::new());
        settings.check_for(Service::Command).unwrap();
        assert_eq!(settings.reservations.default_ttl_ms, 1000);
    }

    #[test]
    fn durations_are_written_with_their_unit() {
        let parse = |text: &str| text.parse::<DurationSetting>().map(DurationSetting::get);
        assert_eq!(parse("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(std::time::Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(std::time::Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(std::time::Duration::from_secs(3600)));
        for bad in ["5", "m", "5 m", "-5m", "5d", "", "99999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let path = write_config("reset:\n  next_period_lead: 2m\n");
        let settings = Settings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert_eq!(settings.reset.next_period_lead.get().as_secs(), 120);
        let path = write_config("reset:\n  next_period_lead: 25h\n");
        let error = Settings::load_with_env(&path, Some(HashMap::new())).unwrap_err();
        assert!(error.to_string().contains("next_period_lead"), "{error}");
    }

    #[test]
    fn an_empty_entry_in_a_rotation_list_is_refused_by_the_service_that_signs_with_it() {
        for (name, value, service) in [
            (
                "BILLING__PAYMENT__WEBHOOK_PREVIOUS_SECRETS",
                "old-secret,",
                Service::Command,
            ),
            (
                "BILLING__PAYMENT__WEBHOOK_PREVIOUS_SECRETS",
                " ",
                Service::Command,
            ),
            (
                "BILLING__AUTH__JWT_PREVIOUS_SECRETS",
                ",old",
                Service::Query,
            ),
        ] {
            let env = HashMap::from([(name.to_owned(), value.to_owned())]);
            let settings = load_over_repository_config("dev_mode: true\n", env);
            let error = settings.check_for(service).unwrap_err();
            assert!(
                error.to_string().contains("previous_secrets"),
                "{value:?}: {error}"
            );
            settings.check_for(Service::Scheduler).unwrap();
        }
        let settings = load_over_repository_config(
            "payment:\n  webhook_previous_secrets: [\"\"]\n",
            HashMap::new(),
        );
        let error = settings.check_for(Service::Command).unwrap_err();
        assert!(
            error.to_string().contains("webhook_previous_secrets"),
            "{error}"
        );
    }

    #[test]
    fn the_bus_takes_one_kind_of_credentials_and_whole_pairs() {
        for (yaml, ok) in [
            ("nats:\n  user: u\n  password: p\n", true),
            ("nats:\n  token: t\n", true),
            ("nats:\n  credentials_file: /etc/billing/nats.creds\n", true),
            ("nats:\n  user: u\n", false),
            ("nats:\n  password: p\n", false),
            ("nats:\n  token: t\n  user: u\n  password: p\n", false),
            ("nats:\n  token: t\n  nkey_seed_file: /s\n", false),
            ("nats:\n  tls_cert_file: /c\n", false),
            ("nats:\n  tls_cert_file: /c\n  tls_key_file: /k\n", true),
        ] {
            let path = write_config(yaml);
            let loaded = Settings::load_with_env(&path, Some(HashMap::new()));
            assert_eq!(loaded.is_ok(), ok, "{yaml}: {:?}", loaded.err());
        }
    }

    #[test]
    fn the_bus_takes_one_server_or_a_list_of_a_cluster() {
        for (yaml, ok) in [
            (
                "nats:\n  url: nats://a:4222,nats://b:4222, nats://c:4222\n",
                true,
            ),
            ("nats:\n  url: tls://nats.example:4222\n", true),
            ("nats:\n  url: nats://a:4222,,nats://b:4222\n", false),
            ("nats:\n  url: nats://a:notaport\n", false),
        ] {
            let path = write_config(yaml);
            let loaded = Settings::load_with_env(&path, Some(HashMap::new()));
            assert_eq!(loaded.is_ok(), ok, "{yaml}: {:?}", loaded.err());
        }
    }

    #[test]
    fn shards_cover_the_keyspace_once_and_come_from_the_environment_as_a_list() {
        let path = write_config("dev_mode: false\n");
        let env = |value: &str| {
            Some(HashMap::from([(
                "BILLING__COMMAND__GROUP_COMMIT__SHARDS".to_owned(),
                value.to_owned(),
            )]))
        };
        let loaded = Settings::load_with_env(&path, env("-80,80-")).unwrap();
        assert_eq!(loaded.command.group_commit.shards, ["-80", "80-"]);
        assert_eq!(loaded.command.group_commit.shards().count(), 2);
        let defaults = Settings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert_eq!(defaults.command.group_commit.shards().count(), 1);
        for gap in ["-80,90-", "-80,80-c0", "80-,-90"] {
            match Settings::load_with_env(&path, env(gap)) {
                Err(ConfigError::Invalid { key, .. }) => {
                    assert_eq!(key, "command.group_commit.shards")
                }
                other => panic!("{gap}: {other:?}"),
            }
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(..)");
    }

    #[test]
    fn the_config_path_comes_from_the_command_line() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Settings::paths_from_args(args(&["bin", "-conf", "a.yaml"])),
            ["a.yaml"]
        );
        assert_eq!(
            Settings::paths_from_args(args(&["bin", "--config=b.yaml", "-conf", "c.yaml"])),
            ["b.yaml", "c.yaml"]
        );
        assert_eq!(
            Settings::paths_from_args(args(&["bin"])),
            [DEFAULT_CONFIG_PATH]
        );
    }

    #[test]
    fn a_later_file_overrides_an_earlier_one_and_replaces_its_lists() {
        let dir =
            std::env::temp_dir().join(format!("billing-config-layers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("config.yaml");
        let secrets = dir.join("secrets.yaml");
        std::fs::write(
            &base,
            "auth:\n  callers:\n    - {name: a, token: x, scopes: [quota]}\n    - {name: b, token: y, scopes: [admin]}\n",
        )
        .unwrap();
        std::fs::write(
            &secrets,
            "auth:\n  jwt_secret: s3\n  callers:\n    - {name: gateway, token: real, scopes: [quota]}\n",
        )
        .unwrap();
        let settings = Settings::load_files(&[&base, &secrets], Some(HashMap::new())).unwrap();
        assert_eq!(settings.auth.jwt_secret.expose(), "s3");
        let callers: Vec<_> = settings
            .auth
            .callers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(callers, ["gateway"]);
        assert_eq!(settings.auth.callers[0].token.expose(), "real");
    }

    #[test]
    fn an_unknown_key_is_refused_in_a_file_and_in_the_environment() {
        let path = write_config("database:\n  max_conections: 3\n");
        let error = Settings::load_with_env(&path, Some(HashMap::new())).unwrap_err();
        assert!(error.to_string().contains("max_conections"), "{error}");
        let path = write_config("billing:\n  time_zone: UTC\n");
        let env = HashMap::from([("BILLING__REDIS__TIMEOUT".to_owned(), "5".to_owned())]);
        let error = Settings::load_with_env(&path, Some(env)).unwrap_err();
        assert!(error.to_string().contains("timeout"), "{error}");
    }

    #[test]
    fn the_repository_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/config.yaml");
        let settings = Settings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert!(
            settings
                .auth
                .callers
                .iter()
                .any(|c| c.name == "gateway" && c.scopes == vec![Scope::Quota])
        );
    }
}
