//! docs/sql/billing_service.sql and migrations/ describe the same schema.

use std::path::Path;

use command_svc::store::Store;
use sqlx::{MySqlPool, Row};

use crate::helpers::*;

/// Tables, columns, indexes and CHECK constraints of one database, in a comparable form.
async fn describe(pool: &MySqlPool) -> Vec<String> {
    let mut lines = Vec::new();
    let columns = sqlx::query(
        "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_TYPE, IS_NULLABLE, \
         COALESCE(COLUMN_DEFAULT, ''), COALESCE(CHARACTER_SET_NAME, ''), \
         COALESCE(COLLATION_NAME, ''), EXTRA \
         FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> '_sqlx_migrations' \
         ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for row in columns {
        let fields: Vec<String> = (0..9)
            .map(|i| {
                row.try_get::<String, _>(i)
                    .unwrap_or_else(|_| row.get::<u64, _>(i).to_string())
            })
            .collect();
        lines.push(format!("column {}", fields.join(" | ")));
    }
    let indexes = sqlx::query(
        "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE \
         FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> '_sqlx_migrations' \
         ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for row in indexes {
        let (table, index, column): (String, String, String) = (row.get(0), row.get(1), row.get(3));
        let (seq, non_unique): (u64, i64) = (row.get::<u32, _>(2).into(), row.get(4));
        lines.push(format!(
            "index {table}.{index} #{seq} {column} non_unique={non_unique}"
        ));
    }
    let checks = sqlx::query(
        "SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = DATABASE() ORDER BY TABLE_NAME, CONSTRAINT_NAME",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for row in checks {
        let (table, name, clause): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        lines.push(format!("check {table}.{name} {clause}"));
    }
    lines
}

/// The script without its first two statements, which create and select the `billing` database.
fn script_for_test_database() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/sql/billing_service.sql");
    let script = std::fs::read_to_string(path).unwrap();
    let body: Vec<&str> = script
        .lines()
        .filter(|line| !line.starts_with("CREATE DATABASE") && !line.starts_with("USE "))
        .collect();
    assert_eq!(
        body.len() + 2,
        script.lines().count(),
        "the script creates and selects its database"
    );
    body.join("\n")
}

async fn database(db: &TestDatabase) -> MySqlPool {
    MySqlPool::connect(&db.url).await.unwrap()
}

#[tokio::test]
async fn the_sql_script_and_the_migrations_build_the_same_schema() {
    let (migrated, scripted) = (
        TestDatabase::create(&unique_tag()).await,
        TestDatabase::create(&unique_tag()).await,
    );
    let settings = test_settings(&migrated.url, &[]);
    Store::connect_lazy(&settings.database)
        .unwrap()
        .migrate(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    let scripted_pool = database(&scripted).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(script_for_test_database()))
        .execute(&scripted_pool)
        .await
        .unwrap();

    let from_migrations = describe(&database(&migrated).await).await;
    assert!(
        from_migrations
            .iter()
            .any(|line| line.starts_with("column ledger | record_id"))
    );
    assert!(
        from_migrations
            .iter()
            .any(|line| line.contains("ledger_user_request"))
    );
    assert_eq!(from_migrations, describe(&scripted_pool).await);

    // A database made with the script is accepted by the migrations at service start.
    let settings = test_settings(&scripted.url, &[]);
    Store::connect_lazy(&settings.database)
        .unwrap()
        .migrate(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(from_migrations, describe(&scripted_pool).await);

    for db in [migrated, scripted] {
        let admin = database(&TestDatabase {
            name: String::new(),
            url: admin_url(),
        })
        .await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{}`", db.name)))
            .execute(&admin)
            .await
            .unwrap();
    }
}

/// Replicas starting together on an empty database: each applies the migrations once, one
/// after the other, with a single attempt each (no retry hides a collision), and none is left
/// marked dirty.
#[tokio::test]
async fn replicas_migrating_one_database_at_once_apply_each_migration_once() {
    let db = TestDatabase::create(&unique_tag()).await;
    let settings = test_settings(&db.url, &[]);
    let migrations = (0..6).map(|_| {
        let store = Store::connect_lazy(&settings.database).unwrap();
        async move { store.migrate(std::time::Duration::ZERO).await }
    });
    for outcome in futures::future::join_all(migrations).await {
        outcome.expect("every replica finds the schema migrated");
    }
    let pool = database(&db).await;
    let (applied, dirty): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), CAST(COALESCE(SUM(success = FALSE), 0) AS SIGNED) FROM _sqlx_migrations",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let files = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!((applied, dirty), (files, 0));
    pool.close().await;
    TestDatabase::drop_named(&db.name).await;
}
