//! A test that panics leaves nothing on the shared servers: its guard removes its database,
//! streams and Redis keys when the panic unwinds it.

use shared::bus::BusNames;
use sqlx::{Connection, MySqlConnection};
use testkit::{Leftovers, TestDatabase, admin_url, nats_url, redis_url, unique_tag};

async fn database_exists(name: &str) -> bool {
    let mut conn = MySqlConnection::connect(&admin_url()).await.unwrap();
    let found: Option<String> = sqlx::query_scalar(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(name)
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    found.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_that_panics_has_its_database_streams_and_keys_removed() {
    let tag = unique_tag();
    let db = TestDatabase::create(&tag).await;
    let names = BusNames::new(&format!("T{tag}_"), &format!("t{tag}"));
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: names.events_stream(),
        subjects: vec![names.events_filter()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("test:{tag}:snapshot");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(database_exists(&db.name).await);

    let guard = Leftovers::new()
        .database(&db.name)
        .streams(&nats_url(), &names)
        .redis_keys(&format!("test:{tag}:*"));
    let failing = tokio::spawn(async move {
        let _guard = guard;
        panic!("the test failed before its cleanup");
    });
    assert!(failing.await.unwrap_err().is_panic());

    assert!(!database_exists(&db.name).await, "the database is left");
    assert!(
        js.get_stream(names.events_stream()).await.is_err(),
        "the stream is left"
    );
    let left: i64 = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, 0, "the Redis key is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_that_passes_removes_them_at_its_cleanup_and_the_guard_then_does_nothing() {
    let db = TestDatabase::create(&unique_tag()).await;
    let guard = Leftovers::new().database(&db.name);
    guard.remove().await;
    assert!(!database_exists(&db.name).await);
}
