//! `billingctl`: the operators' command line. It reads the same configuration as the services
//! (`-conf PATH` as they take it, or `--config PATH` / `--conf PATH`, repeatable; default
//! `configs/config.yaml`; `BILLING__` overrides).
//!
//! ```text
//! billingctl migrate [--wait-secs 120]             apply the database migrations
//! billingctl reset-free-quota --period 2026-12     publish a reset (a re-run, with its own id)
//! billingctl reconcile [--repair]                  compare read and write models; exit 1 on differences
//! billingctl rebuild-read-model                    rebuild the read model from the ledger, swap it in
//! billingctl dlq list | dlq replay [SEQUENCE...]   the dead-letter stream
//! billingctl token --user ID [--ttl-secs 3600]     a development JWT for the REST API
//! billingctl adjust --user ID --amount -500000 --reason ... --actor ...   AdjustBalance over gRPC
//! billingctl unmatched list [--limit 100]          payments that could not be applied
//! billingctl prices publish --name N --file prices.yaml [--at RFC3339] [--publish-id ID] [--actor A]
//! billingctl prices show [--user ID | --name N] [--at RFC3339]
//! billingctl prices assign --user ID --name N [--actor A]   ("" = the default list)
//! billingctl limits show --user ID
//! billingctl limits set --user ID [--limit WINDOW:MICROS:SCOPE ...] [--set-id ID] [--actor A]
//! ```

use std::time::Duration;

use async_nats::jetstream::Context;
use billing_ops::{dlq, rebuild, reconcile};
use billing_tools::{command_client, jetstream, user_token};
use clap::{Parser, Subcommand};
use shared::cache::SnapshotCache;
use shared::{
    bus::BusNames,
    config::{Scope, Settings},
    period::Period,
    proto::v1 as pb,
};

#[derive(Parser)]
#[command(name = "billingctl", about = "Operate the billing service")]
struct Cli {
    /// The services' configuration files, each over the ones before (configuration, then
    /// secrets).
    #[arg(long = "config", visible_alias = "conf", global = true, default_value = shared::config::DEFAULT_CONFIG_PATH)]
    config: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations (the deployment's migration job; services started with
    /// `database.migrate_on_start: false` wait for it).
    Migrate {
        /// How long to wait for MySQL to answer.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Publish ResetFreeQuota for a period (the current or the next one), with a unique id so it
    /// runs even when the scheduler's command for that period already ran.
    ResetFreeQuota {
        /// The month, `YYYY-MM`: the current one, or the next one within
        /// `reset.next_period_lead` of its start.
        #[arg(long)]
        period: String,
    },
    /// Compare the read model with the write model at equal versions; exit 1 on differences.
    Reconcile {
        /// Write the write model's view over every difference found (then run it again: 0).
        #[arg(long)]
        repair: bool,
        /// How long to wait before looking again at accounts that differed (events in flight).
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
    },
    /// Rebuild the read model from the ledger into shadow tables and swap them in.
    RebuildReadModel,
    /// The dead-letter stream of events the read model could not take.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Mint a JWT for the REST API, signed with the configured secret (development and support).
    Token {
        /// The user id the token is for (its `sub`).
        #[arg(long)]
        user: String,
        /// How long the token is valid, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
    /// Credit (positive) or debit (negative) a balance through command-svc's AdjustBalance.
    Adjust {
        /// The user whose balance changes.
        #[arg(long)]
        user: String,
        /// Signed micros: 1000000 credits one unit, -1000000 debits one.
        #[arg(long, allow_hyphen_values = true)]
        amount: i64,
        /// Why, kept with the ledger row (1..512 characters).
        #[arg(long)]
        reason: String,
        /// Who decided it (1..64 characters), kept with the ledger row.
        #[arg(long)]
        actor: String,
        /// The idempotency key; a new one by default. Reuse it to retry safely.
        #[arg(long)]
        adjustment_id: Option<String>,
    },
    /// Payments that arrived but could not be applied.
    Unmatched {
        #[command(subcommand)]
        action: UnmatchedAction,
    },
    /// Price lists: publish a version, show a list, assign one to an account.
    Prices {
        #[command(subcommand)]
        action: PricesAction,
    },
    /// Spend limits: show a user's, or replace them.
    Limits {
        #[command(subcommand)]
        action: LimitsAction,
    },
}

#[derive(Subcommand)]
enum LimitsAction {
    /// A user's limits, each with what was spent in its current window.
    Show {
        #[arg(long)]
        user: String,
    },
    /// Replace a user's whole set of limits (none given: remove them all).
    Set {
        #[arg(long)]
        user: String,
        /// `WINDOW:MICROS:SCOPE`, e.g. `day:10000000:account` or `month:500000000:api:gpt-4o`
        /// (window `day` or `month`; scope `account`, `api:<id>` or `key:<id>`). Repeatable.
        #[arg(long = "limit")]
        limits: Vec<String>,
        /// The idempotency key; a new one by default. Reuse it to retry safely.
        #[arg(long)]
        set_id: Option<String>,
        #[arg(long, default_value = "billingctl")]
        actor: String,
    },
}

#[derive(Subcommand)]
enum PricesAction {
    /// Publish a new version of a list from a YAML file (`prices:` with `api_id`, `meter`,
    /// `price_micros`, `per_units` each; see configs/prices.example.yaml).
    Publish {
        /// The list's name (1..64 of [a-z0-9_-]); the default list is `billing.default_price_list`.
        #[arg(long)]
        name: String,
        #[arg(long)]
        file: String,
        /// When the version takes effect (RFC 3339); now when absent.
        #[arg(long)]
        at: Option<String>,
        /// The idempotency key; a new one by default. Reuse it to retry safely.
        #[arg(long)]
        publish_id: Option<String>,
        /// Who published it, kept with the version.
        #[arg(long, default_value = "billingctl")]
        actor: String,
    },
    /// A user's list (or a list by name): the version in effect and the scheduled ones.
    Show {
        #[arg(long, conflicts_with = "name", required_unless_present = "name")]
        user: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// The instant to show the list at (RFC 3339); now when absent.
        #[arg(long)]
        at: Option<String>,
    },
    /// Price a user's usage with the list `name` ("" for the default list) from now on.
    Assign {
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "billingctl")]
        actor: String,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Every dead letter: its stream sequence, subject, event id and why it was refused.
    List,
    /// Publish dead letters again on their original subjects (all when none is named).
    Replay {
        /// Stream sequences of the dead letters to replay, as `list` shows them.
        sequences: Vec<u64>,
    },
}

#[derive(Subcommand)]
enum UnmatchedAction {
    /// The newest unmatched payments first.
    List {
        /// How many at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(conf_as_config(std::env::args()));
    let settings = Settings::load_files(&cli.config, None)?;
    let names = BusNames::from_settings(&settings.nats);
    match cli.command {
        Command::Migrate { wait_secs } => migrate(&settings, wait_secs).await?,
        Command::ResetFreeQuota { period } => reset_free_quota(&settings, &names, &period).await?,
        Command::Reconcile { repair, settle_ms } => {
            if reconcile_models(&settings, repair, settle_ms).await? > 0 {
                std::process::exit(1);
            }
        }
        Command::RebuildReadModel => rebuild_read_model(&settings).await?,
        Command::Dlq { action } => {
            let js = jetstream(&settings, &names).await?;
            match action {
                DlqAction::List => dlq_list(&js, &names).await?,
                DlqAction::Replay { sequences } => dlq_replay(&js, &names, &sequences).await?,
            }
        }
        Command::Token { user, ttl_secs } => println!("{}", token(&settings, &user, ttl_secs)?),
        Command::Adjust {
            user,
            amount,
            reason,
            actor,
            adjustment_id,
        } => {
            let request = adjustment(user, amount, reason, actor, adjustment_id);
            adjust(&settings, request).await?;
        }
        Command::Unmatched {
            action: UnmatchedAction::List { limit },
        } => unmatched_list(&settings, limit).await?,
        Command::Prices { action } => prices(&settings, action).await?,
        Command::Limits { action } => limits(&settings, action).await?,
    }
    Ok(())
}

/// The price list file: `prices:`, a list of `{api_id, meter, price_micros, per_units}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    prices: Vec<PriceLine>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceLine {
    api_id: String,
    meter: String,
    price_micros: i64,
    per_units: i64,
}

fn read_prices(path: &str) -> anyhow::Result<Vec<pb::Price>> {
    let file: PricesFile = config::Config::builder()
        .add_source(config::File::new(path, config::FileFormat::Yaml))
        .build()?
        .try_deserialize()?;
    Ok(file
        .prices
        .into_iter()
        .map(|line| pb::Price {
            api_id: line.api_id,
            meter: line.meter,
            price_micros: line.price_micros,
            per_units: line.per_units,
        })
        .collect())
}

/// Milliseconds since the epoch of an RFC 3339 instant; 0 (now) when absent.
fn instant_ms(at: Option<&str>) -> anyhow::Result<i64> {
    at.map_or(Ok(0), |text| {
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.timestamp_millis())
    })
}

async fn prices(settings: &Settings, action: PricesAction) -> anyhow::Result<()> {
    let mut client =
        command_client(&settings.query.command_endpoint, &admin_token(settings)?).await?;
    let failed =
        |status: tonic::Status| anyhow::anyhow!("{:?}: {}", status.code(), status.message());
    match action {
        PricesAction::Publish {
            name,
            file,
            at,
            publish_id,
            actor,
        } => {
            let request = pb::PublishPriceListRequest {
                name,
                effective_from_ms: instant_ms(at.as_deref())?,
                prices: read_prices(&file)?,
                publish_id: publish_id
                    .unwrap_or_else(|| format!("billingctl:{}", uuid::Uuid::now_v7())),
                actor,
            };
            let publish_id = request.publish_id.clone();
            let reply = client.publish_price_list(request).await.map_err(failed)?;
            let reply = reply.into_inner();
            let replayed = if reply.replayed { " (replayed)" } else { "" };
            println!("published {publish_id}{replayed}");
            print_list(reply.list.as_ref());
        }
        PricesAction::Show { user, name, at } => {
            let request = pb::GetPriceListRequest {
                user_id: user.unwrap_or_default(),
                name: name.unwrap_or_default(),
                at_ms: instant_ms(at.as_deref())?,
            };
            let reply = client.get_price_list(request).await.map_err(failed)?;
            let reply = reply.into_inner();
            match &reply.current {
                Some(_) => print_list(reply.current.as_ref()),
                None => println!("no version in effect"),
            }
            for scheduled in &reply.scheduled {
                print!("scheduled: ");
                print_list(Some(scheduled));
            }
        }
        PricesAction::Assign { user, name, actor } => {
            let request = pb::AssignPriceListRequest {
                user_id: user.clone(),
                name,
                actor,
            };
            let reply = client.assign_price_list(request).await.map_err(failed)?;
            println!("{user} is priced by {}", reply.into_inner().name);
        }
    }
    Ok(())
}

/// A version, then its prices one a line (tab-separated).
fn print_list(list: Option<&pb::PriceList>) {
    let Some(list) = list else { return };
    let from = chrono::DateTime::from_timestamp_millis(list.effective_from_ms)
        .map(|at| at.to_rfc3339())
        .unwrap_or_default();
    println!(
        "{} version {} in {} from {from}, published by {}: {} price(s)",
        list.name,
        list.version,
        list.currency,
        list.actor,
        list.prices.len()
    );
    for price in &list.prices {
        println!(
            "  {}\t{}\t{} micros per {}",
            price.api_id, price.meter, price.price_micros, price.per_units
        );
    }
}

/// One `--limit WINDOW:MICROS:SCOPE` (the scope last: it may hold colons).
fn parse_limit(text: &str) -> anyhow::Result<pb::SpendLimit> {
    let mut parts = text.splitn(3, ':');
    let (Some(window), Some(micros), Some(scope)) = (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("--limit {text:?}: expected WINDOW:MICROS:SCOPE, e.g. day:10000000:account");
    };
    Ok(pb::SpendLimit {
        scope: scope.to_owned(),
        window: window.to_owned(),
        limit_micros: micros.parse().map_err(|_| {
            anyhow::anyhow!("--limit {text:?}: {micros:?} is not a whole number of micros")
        })?,
    })
}

async fn limits(settings: &Settings, action: LimitsAction) -> anyhow::Result<()> {
    let mut client =
        command_client(&settings.query.command_endpoint, &admin_token(settings)?).await?;
    let failed =
        |status: tonic::Status| anyhow::anyhow!("{:?}: {}", status.code(), status.message());
    let statuses = match action {
        LimitsAction::Show { user } => {
            let request = pb::GetSpendLimitsRequest { user_id: user };
            client
                .get_spend_limits(request)
                .await
                .map_err(failed)?
                .into_inner()
                .limits
        }
        LimitsAction::Set {
            user,
            limits,
            set_id,
            actor,
        } => {
            let request = pb::SetSpendLimitsRequest {
                user_id: user.clone(),
                limits: limits
                    .iter()
                    .map(|text| parse_limit(text))
                    .collect::<anyhow::Result<_>>()?,
                actor,
                set_id: set_id.unwrap_or_else(|| format!("billingctl:{}", uuid::Uuid::now_v7())),
            };
            let reply = client.set_spend_limits(request).await.map_err(failed)?;
            let reply = reply.into_inner();
            let replayed = if reply.replayed { " (replayed)" } else { "" };
            println!("{user}: {} limit(s) set{replayed}", reply.limits.len());
            reply.limits
        }
    };
    if statuses.is_empty() {
        println!("no limits");
    }
    for status in &statuses {
        print_limit(status);
    }
    Ok(())
}

/// A limit and its window on one line (tab-separated).
fn print_limit(status: &pb::SpendLimitStatus) {
    let limit = status.limit.clone().unwrap_or_default();
    let resets = chrono::DateTime::from_timestamp_millis(status.resets_at_ms)
        .map(|at| at.to_rfc3339())
        .unwrap_or_default();
    println!(
        "  {}\t{}\tlimit {}\tspent {}\tremaining {}\tresets {resets}",
        limit.scope, limit.window, limit.limit_micros, status.spent_micros, status.remaining_micros
    );
}

/// The services take `-conf PATH` (the seed's form): so does billingctl.
fn conf_as_config(args: impl Iterator<Item = String>) -> impl Iterator<Item = String> {
    args.map(|arg| {
        if arg == "-conf" {
            "--config".to_owned()
        } else {
            arg
        }
    })
}

/// Applies the migrations, waiting up to `wait_secs` for MySQL, and says which version it is at.
async fn migrate(settings: &Settings, wait_secs: u64) -> anyhow::Result<()> {
    let pool = shared::db::connect_lazy(&settings.database)?;
    shared::db::migrate(&pool, Duration::from_secs(wait_secs)).await?;
    let latest = shared::db::MIGRATOR.iter().map(|m| m.version).max();
    println!("migrated to version {}", latest.unwrap_or_default());
    Ok(())
}

/// Publishes ResetFreeQuota for `period` under an id of its own, once it is due.
async fn reset_free_quota(
    settings: &Settings,
    names: &BusNames,
    period: &str,
) -> anyhow::Result<()> {
    let period: Period = period.parse()?;
    // command-svc ignores a reset that is not due; say so before publishing it.
    settings
        .billing
        .zone()?
        .reset_due(
            period,
            chrono::Utc::now(),
            settings.reset.next_period_lead.get(),
        )
        .map_err(|not_due| anyhow::anyhow!("not published: {not_due}"))?;
    let command_id = format!(
        "{}:{}",
        shared::bus::reset_command_id(period),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let js = jetstream(settings, names).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let trace_id = shared::bus::publish_reset(&js, names, &command_id, period, now).await?;
    println!("published {command_id} (trace {trace_id})");
    Ok(())
}

/// Compares the read model with the write model (repairing when asked), prints every difference
/// and returns how many there were.
async fn reconcile_models(
    settings: &Settings,
    repair: bool,
    settle_ms: u64,
) -> anyhow::Result<usize> {
    let pool = shared::db::connect_lazy(&settings.database)?;
    let cache = SnapshotCache::read_model(
        &settings.redis,
        Duration::from_secs(settings.query.snapshot_ttl_secs),
    )?;
    let options = reconcile::Options {
        repair,
        settle: Duration::from_millis(settle_ms),
    };
    let differences =
        reconcile::reconcile(&pool, Some(&cache), settings.billing.zone()?, &options).await?;
    for difference in &differences {
        println!("{difference}");
    }
    let repaired = if repair && !differences.is_empty() {
        ", repaired"
    } else {
        ""
    };
    println!("{} difference(s){repaired}", differences.len());
    Ok(differences.len())
}

/// Rebuilds the read model from the ledger and says what it holds now.
async fn rebuild_read_model(settings: &Settings) -> anyhow::Result<()> {
    let pool = shared::db::connect_lazy(&settings.database)?;
    let report = rebuild::rebuild(&pool, settings.billing.zone()?, chrono::Utc::now()).await?;
    println!(
        "rebuilt: {} accounts, {} records, {} usage rows, {} orders; {} records caught up",
        report.accounts, report.records, report.usage_rows, report.orders, report.caught_up
    );
    Ok(())
}

/// Prints every dead letter, one a line, then how many.
async fn dlq_list(js: &Context, names: &BusNames) -> anyhow::Result<()> {
    let letters = dlq::list(js, names).await?;
    for l in &letters {
        println!(
            "{}\t{}\t{}\t{} bytes\t{}",
            l.sequence, l.time, l.original_subject, l.bytes, l.reason
        );
    }
    println!("{} dead letter(s)", letters.len());
    Ok(())
}

/// Publishes the dead letters `sequences` (all when empty) again and says which.
async fn dlq_replay(js: &Context, names: &BusNames, sequences: &[u64]) -> anyhow::Result<()> {
    let replayed = dlq::replay(js, names, sequences).await?;
    println!("replayed {} dead letter(s): {replayed:?}", replayed.len());
    Ok(())
}

/// A REST token for `user`, a valid user id, for `ttl_secs` seconds.
fn token(settings: &Settings, user: &str, ttl_secs: i64) -> anyhow::Result<String> {
    shared::ids::UserId::parse("user", user).map_err(|v| anyhow::anyhow!("{v}"))?;
    user_token(settings, user, chrono::Duration::seconds(ttl_secs))
}

/// The AdjustBalance request of the command line; a new idempotency key unless one is given.
fn adjustment(
    user: String,
    amount: i64,
    reason: String,
    actor: String,
    adjustment_id: Option<String>,
) -> pb::AdjustBalanceRequest {
    pb::AdjustBalanceRequest {
        user_id: user,
        adjustment_id: adjustment_id
            .unwrap_or_else(|| format!("billingctl:{}", uuid::Uuid::now_v7())),
        amount_micros: amount,
        reason,
        actor,
    }
}

/// Sends `request` to command-svc as the configured admin caller and prints the outcome.
async fn adjust(settings: &Settings, request: pb::AdjustBalanceRequest) -> anyhow::Result<()> {
    // command-svc as its clients reach it (its own listen address may be 0.0.0.0).
    let mut client =
        command_client(&settings.query.command_endpoint, &admin_token(settings)?).await?;
    let adjustment_id = request.adjustment_id.clone();
    let reply = client
        .adjust_balance(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?
        .into_inner();
    let balance = reply.account.map_or(0, |a| a.balance_micros);
    let replayed = if reply.replayed { " (replayed)" } else { "" };
    println!(
        "adjusted {adjustment_id}: record {}, balance now {balance} micros{replayed}",
        reply.record_id
    );
    Ok(())
}

/// The token of the first configured caller with the admin scope.
fn admin_token(settings: &Settings) -> anyhow::Result<String> {
    settings
        .auth
        .callers
        .iter()
        .find(|caller| caller.scopes.contains(&Scope::Admin))
        .map(|caller| caller.token.expose().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no caller with the admin scope in auth.callers"))
}

/// Prints the newest `limit` unmatched payments, one a line, then how many.
async fn unmatched_list(settings: &Settings, limit: u32) -> anyhow::Result<()> {
    let pool = shared::db::connect_lazy(&settings.database)?;
    let rows: Vec<Unmatched> = sqlx::query_as(
        "SELECT unmatched_id, created_at, order_no, user_id, provider_txn_id, success, \
         paid_amount_micros, why FROM unmatched_payments ORDER BY created_at DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    for row in &rows {
        println!("{}", row.line());
    }
    println!("{} unmatched payment(s)", rows.len());
    Ok(())
}

/// A payment that could not be applied, as `unmatched list` shows it.
#[derive(sqlx::FromRow)]
struct Unmatched {
    unmatched_id: String,
    created_at: chrono::DateTime<chrono::Utc>,
    order_no: String,
    user_id: Option<String>,
    provider_txn_id: String,
    success: bool,
    paid_amount_micros: i64,
    why: String,
}

impl Unmatched {
    /// The row as `unmatched list` prints it, tab-separated.
    fn line(&self) -> String {
        let outcome = if self.success { "paid" } else { "failed" };
        format!(
            "{}\t{}\t{}\torder {}\tuser {}\ttxn {}\t{outcome}\t{} micros",
            self.unmatched_id,
            self.created_at,
            self.why,
            self.order_no,
            self.user_id.as_deref().unwrap_or("-"),
            self.provider_txn_id,
            self.paid_amount_micros
        )
    }
}
