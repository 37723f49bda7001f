//! Price lists: their versions (immutable once published) and each version's prices, and the
//! list an account is priced by.

use chrono::{DateTime, Utc};
use shared::ids::UserId;
use sqlx::MySqlExecutor;

use super::{StoreError, Tx, Writes};

/// A published version, without its prices.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct VersionRow {
    pub name: String,
    pub version: i64,
    pub effective_from: DateTime<Utc>,
    pub published_at: DateTime<Utc>,
    pub actor: String,
    pub publish_id: String,
    pub content_sha256: String,
}

/// One price of a version.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PriceRow {
    pub name: String,
    pub version: i64,
    pub api_id: String,
    pub meter: String,
    pub price_micros: i64,
    pub per_units: i64,
}

const VERSION_COLUMNS: &str =
    "name, version, effective_from, published_at, actor, publish_id, content_sha256";

/// Every published version, without prices: what each replica's price book compares with what
/// it holds.
pub async fn price_versions<'e>(
    executor: impl MySqlExecutor<'e>,
) -> Result<Vec<VersionRow>, StoreError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM price_list_versions");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(executor)
        .await?)
}

/// The prices of these versions.
pub async fn prices_of<'e>(
    executor: impl MySqlExecutor<'e>,
    versions: &[(&str, i64)],
) -> Result<Vec<PriceRow>, StoreError> {
    if versions.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = sqlx::QueryBuilder::new(
        "SELECT name, version, api_id, meter, price_micros, per_units FROM price_list_prices \
         WHERE (name, version) IN (",
    );
    let mut pairs = select.separated(", ");
    for (name, version) in versions {
        pairs.push("(");
        pairs.push_bind_unseparated(*name);
        pairs.push_unseparated(", ");
        pairs.push_bind_unseparated(*version);
        pairs.push_unseparated(")");
    }
    select.push(")");
    Ok(select.build_query_as().fetch_all(executor).await?)
}

/// The version a publication made, found by its `publish_id`.
pub async fn find_publication(
    tx: &mut Tx,
    publish_id: &str,
) -> Result<Option<VersionRow>, StoreError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM price_list_versions WHERE publish_id = ?");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(publish_id)
        .fetch_optional(&mut **tx)
        .await?)
}

/// Numbers the next version of `name` (1 for a new list), holding the list's row locked until
/// the transaction ends, so two publications of one list take distinct numbers in order.
pub async fn next_version(tx: &mut Tx, name: &str, now: DateTime<Utc>) -> Result<i64, StoreError> {
    sqlx::query(
        "INSERT INTO price_lists (name, latest_version, created_at) VALUES (?, 1, ?) \
         ON DUPLICATE KEY UPDATE latest_version = latest_version + 1",
    )
    .bind(name)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT latest_version FROM price_lists WHERE name = ?")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// Whether a list of this name was ever published.
pub async fn list_exists<'e>(
    executor: impl MySqlExecutor<'e>,
    name: &str,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM price_lists WHERE name = ?")
        .bind(name)
        .fetch_optional(executor)
        .await?;
    Ok(found.is_some())
}

/// Prices the account's usage with the list `name` (`None`: the default list).
pub async fn set_price_list(
    tx: &mut Tx,
    user_id: &UserId,
    name: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE accounts SET price_list = ? WHERE user_id = ?")
        .bind(name)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Prices written per statement, so no statement of a large list nears `max_allowed_packet`.
const PRICES_PER_STATEMENT: usize = 2_000;

impl Writes {
    /// A new version and its prices.
    pub fn price_version(&mut self, version: &VersionRow, prices: &[PriceRow]) -> &mut Self {
        self.script.insert(
            "INSERT INTO price_list_versions (name, version, effective_from, published_at, actor, \
             publish_id, content_sha256) ",
            std::slice::from_ref(version),
            "",
            |row, v| {
                row.text(&v.name)
                    .int(v.version)
                    .instant(v.effective_from)
                    .instant(v.published_at)
                    .text(&v.actor)
                    .text(&v.publish_id)
                    .text(&v.content_sha256);
            },
        );
        for chunk in prices.chunks(PRICES_PER_STATEMENT) {
            self.script.insert(
                "INSERT INTO price_list_prices (name, version, api_id, meter, price_micros, \
                 per_units) ",
                chunk,
                "",
                |row, price| {
                    row.text(&price.name)
                        .int(price.version)
                        .text(&price.api_id)
                        .text(&price.meter)
                        .int(price.price_micros)
                        .int(price.per_units);
                },
            );
        }
        self
    }
}
