//! Price lists: usage priced exactly by the version in effect, on every replica; unpriced usage
//! refused; replays answer the original price; reservations keep theirs.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use shared::{clock::Clock, proto::v1 as pb};
use tonic::Code;

use crate::helpers::*;

/// The list every test starts from: a chat API per call and per million tokens, an image API
/// per image, and one free meter.
fn chat_prices(output_per_million: i64) -> Vec<pb::Price> {
    vec![
        price("chat", "call", 2_000, 1),
        price("chat", "input_tokens", 500_000, 1_000_000),
        price("chat", "output_tokens", output_per_million, 1_000_000),
        price("embed", "input_tokens", 0, 1),
        price("image", "images", 40_000, 1),
    ]
}

fn price(api_id: &str, meter: &str, price_micros: i64, per_units: i64) -> pb::Price {
    pb::Price {
        api_id: api_id.into(),
        meter: meter.into(),
        price_micros,
        per_units,
    }
}

/// What a call used: (meter, quantity) lines.
type Lines<'a> = &'a [(&'a str, i64)];

fn usage(lines: Lines) -> Vec<pb::Usage> {
    lines
        .iter()
        .map(|(meter, quantity)| pb::Usage {
            meter: (*meter).into(),
            quantity: *quantity,
        })
        .collect()
}

fn publication(
    name: &str,
    at: Option<DateTime<Utc>>,
    prices: Vec<pb::Price>,
    publish_id: &str,
) -> pb::PublishPriceListRequest {
    pb::PublishPriceListRequest {
        name: name.into(),
        effective_from_ms: at.map_or(0, |at| at.timestamp_millis()),
        prices,
        publish_id: publish_id.into(),
        actor: "pricing@example.com".into(),
    }
}

fn priced_charge(
    user: &str,
    request_id: &str,
    api_id: &str,
    lines: &[(&str, i64)],
) -> pb::DeductQuotaRequest {
    pb::DeductQuotaRequest {
        user_id: user.into(),
        request_id: request_id.into(),
        api_id: api_id.into(),
        usage: usage(lines),
        ..Default::default()
    }
}

/// Publishes `prices` as the next version of `name`, scheduled `ahead` of the test's clock, and
/// moves the clock to that instant: in effect from then on.
async fn publish_in_effect(app: &TestApp, name: &str, prices: Vec<pb::Price>, id: &str) -> i64 {
    let at = app.clock.now() + TimeDelta::seconds(3);
    let list = app
        .ops()
        .await
        .publish_price_list(publication(name, Some(at), prices, id))
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();
    assert_eq!(list.effective_from_ms, at.timestamp_millis());
    app.clock.set(at);
    list.version
}

fn metadata(status: &tonic::Status, key: &str) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn usage_is_priced_exactly_by_the_version_in_effect_and_the_answer_says_which() {
    let app = spawn_app().await;
    let user = new_user("priced");
    recharge(&app, &user, 100 * CNY).await;
    let v1 = publish_in_effect(&app, "default", chat_prices(1_500_000), "p1").await;
    assert_eq!(v1, 1);
    let mut gateway = app.gateway().await;
    // ⌈2000 + 1234 × 0.5 + 567 × 1.5⌉ = ⌈2000 + 617 + 850.5⌉ = 3468: rounded up once, not per meter.
    let cases: [(&str, Lines, i64); 5] = [
        (
            "chat",
            &[("call", 1), ("input_tokens", 1_234), ("output_tokens", 567)],
            3_468,
        ),
        ("chat", &[("input_tokens", 1), ("output_tokens", 1)], 2),
        ("chat", &[("output_tokens", 1_000_000)], 1_500_000),
        ("image", &[("images", 3)], 120_000),
        // A free meter is an explicit charge of 0, recorded.
        ("embed", &[("input_tokens", 10_000)], 0),
    ];
    for (index, (api_id, lines, expected)) in cases.iter().enumerate() {
        let request = priced_charge(&user, &format!("q{index}"), api_id, lines);
        let charged = gateway.deduct_quota(request).await.unwrap().into_inner();
        assert_eq!(charged.amount_micros, *expected, "{api_id} {lines:?}");
        assert_eq!(
            charged.free_deducted_micros + charged.balance_deducted_micros,
            *expected
        );
        assert_eq!(
            (charged.price_list.as_str(), charged.price_version),
            ("default", 1)
        );
        assert_eq!(charged.account.unwrap().price_list, "default");
        let (stored_amount, units, list, version): (
            i64,
            Option<String>,
            Option<String>,
            Option<i64>,
        ) = sqlx::query_as(
            "SELECT amount_micros, usage_units, price_list, price_version FROM ledger \
                 WHERE user_id = ? AND request_id = ?",
        )
        .bind(&user)
        .bind(format!("q{index}"))
        .fetch_one(&app.db)
        .await
        .unwrap();
        assert_eq!(stored_amount, *expected);
        assert!(units.unwrap().starts_with('{'));
        assert_eq!((list.as_deref(), version), (Some("default"), Some(1)));
    }
    // A charge of an amount is not priced, and says so.
    let plain = gateway
        .deduct_quota(deduct(&user, 7, "amount"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            plain.amount_micros,
            plain.price_list.as_str(),
            plain.price_version
        ),
        (7, "", 0)
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn unpriced_or_malformed_usage_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let user = new_user("unpriced");
    recharge(&app, &user, 100 * CNY).await;
    let mut gateway = app.gateway().await;
    // No version of the default list is in effect yet: nothing is priced, never as 0.
    let before = fingerprint(&app.db).await;
    let none = gateway
        .deduct_quota(priced_charge(&user, "n", "chat", &[("call", 1)]))
        .await
        .unwrap_err();
    assert_eq!(
        (none.code(), reason(&none)),
        (Code::FailedPrecondition, "UNPRICED".into())
    );
    assert_eq!(metadata(&none, "price_version"), "0");

    let dear = vec![price("dear", "call", 1_000_000_000_000, 1)];
    publish_in_effect(
        &app,
        "default",
        [chat_prices(1_500_000), dear].concat(),
        "p1",
    )
    .await;
    let before_refusals = fingerprint(&app.db).await;
    let unpriced_meter = gateway
        .deduct_quota(priced_charge(
            &user,
            "m",
            "chat",
            &[("call", 1), ("images", 2), ("seconds", 1)],
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&unpriced_meter), "UNPRICED");
    assert_eq!(metadata(&unpriced_meter, "meters"), "images,seconds");
    assert_eq!(metadata(&unpriced_meter, "api_id"), "chat");
    assert_eq!(metadata(&unpriced_meter, "price_list"), "default");
    let unpriced_api = gateway
        .deduct_quota(priced_charge(&user, "a", "video", &[("call", 1)]))
        .await
        .unwrap_err();
    assert_eq!(reason(&unpriced_api), "UNPRICED");
    let above = gateway
        .deduct_quota(priced_charge(&user, "x", "dear", &[("call", 2)]))
        .await
        .unwrap_err();
    assert_eq!(
        (above.code(), reason(&above)),
        (Code::FailedPrecondition, "AMOUNT_LIMIT".into())
    );

    let invalid: Vec<(&str, pb::DeductQuotaRequest)> = vec![
        (
            "both",
            pb::DeductQuotaRequest {
                amount_micros: 5,
                ..priced_charge(&user, "b", "chat", &[("call", 1)])
            },
        ),
        ("neither", priced_charge(&user, "e", "chat", &[])),
        ("no api", priced_charge(&user, "c", "", &[("call", 1)])),
        (
            "twice",
            priced_charge(&user, "d", "chat", &[("call", 1), ("call", 1)]),
        ),
        ("zero", priced_charge(&user, "z", "chat", &[("call", 0)])),
        (
            "negative",
            priced_charge(&user, "g", "chat", &[("call", -1)]),
        ),
        (
            "huge",
            priced_charge(&user, "h", "chat", &[("call", 1_000_000_000_001)]),
        ),
        (
            "bad meter",
            priced_charge(&user, "i", "chat", &[("Call", 1)]),
        ),
    ];
    for (what, request) in invalid {
        let refused = gateway.deduct_quota(request.clone()).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
        let check = pb::CheckQuotaRequest {
            user_id: request.user_id,
            amount_micros: request.amount_micros,
            api_id: request.api_id,
            usage: request.usage,
            key_id: request.key_id,
        };
        let refused = gateway.check_quota(check).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "check {what}");
    }
    let check = pb::CheckQuotaRequest {
        user_id: user.clone(),
        api_id: "chat".into(),
        usage: usage(&[("images", 1)]),
        ..Default::default()
    };
    assert_eq!(
        reason(&gateway.check_quota(check).await.unwrap_err()),
        "UNPRICED"
    );
    assert_eq!(fingerprint(&app.db).await, before_refusals);
    assert_ne!(
        before, before_refusals,
        "the publication itself is recorded"
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_check_prices_usage_as_a_charge_would() {
    let app = spawn_app().await;
    let user = new_user("checked");
    recharge(&app, &user, 3_468).await;
    publish_in_effect(&app, "default", chat_prices(1_500_000), "p1").await;
    let mut gateway = app.gateway().await;
    // The account has 10 CNY of free quota besides: use it up first.
    let free = account(&app, &user).await.free_remaining_micros;
    gateway
        .deduct_quota(deduct(&user, free, "free"))
        .await
        .unwrap();
    let check = |lines: &[(&str, i64)]| pb::CheckQuotaRequest {
        user_id: user.clone(),
        api_id: "chat".into(),
        usage: usage(lines),
        ..Default::default()
    };
    let exact = [("call", 1), ("input_tokens", 1_234), ("output_tokens", 567)];
    let one_more = [("call", 1), ("input_tokens", 1_234), ("output_tokens", 568)];
    assert!(
        gateway
            .check_quota(check(&exact))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        !gateway
            .check_quota(check(&one_more))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    app.cleanup().await;
}

#[tokio::test]
async fn replays_answer_the_original_price_and_other_usage_under_the_key_is_refused() {
    let app = spawn_app().await;
    let user = new_user("replayed");
    recharge(&app, &user, 100 * CNY).await;
    publish_in_effect(&app, "default", chat_prices(1_500_000), "p1").await;
    let mut gateway = app.gateway().await;
    let lines = [("call", 1), ("output_tokens", 1_000)];
    let first = gateway
        .deduct_quota(priced_charge(&user, "k", "chat", &lines))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.amount_micros, first.price_version), (3_500, 1));
    // Prices tripled since: a retry answers what the first call charged.
    let v2 = publish_in_effect(&app, "default", chat_prices(4_500_000), "p2").await;
    assert_eq!(v2, 2);
    let reordered = [("output_tokens", 1_000), ("call", 1)];
    let replay = gateway
        .deduct_quota(priced_charge(&user, "k", "chat", &reordered))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(
        (
            replay.record_id.as_str(),
            replay.amount_micros,
            replay.price_version
        ),
        (first.record_id.as_str(), 3_500, 1)
    );
    let before = fingerprint(&app.db).await;
    for other in [
        priced_charge(&user, "k", "chat", &[("call", 1), ("output_tokens", 1_001)]),
        priced_charge(&user, "k", "chat", &[("call", 1)]),
        priced_charge(
            &user,
            "k",
            "image",
            &[("call", 1), ("output_tokens", 1_000)],
        ),
        deduct(&user, 3_500, "k"),
    ] {
        let refused = gateway.deduct_quota(other).await.unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists);
    }
    assert_eq!(fingerprint(&app.db).await, before);
    // A new charge is priced by version 2.
    let later = gateway
        .deduct_quota(priced_charge(&user, "k2", "chat", &lines))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((later.amount_micros, later.price_version), (6_500, 2));
    app.cleanup().await;
}

#[tokio::test]
async fn a_reservation_keeps_the_version_it_was_taken_under() {
    let app = spawn_app().await;
    let user = new_user("held");
    recharge(&app, &user, 100 * CNY).await;
    publish_in_effect(&app, "default", chat_prices(1_500_000), "p1").await;
    let mut gateway = app.gateway().await;
    let reserve = |request_id: &str, lines: &[(&str, i64)]| pb::ReserveQuotaRequest {
        user_id: user.clone(),
        request_id: request_id.into(),
        api_id: "chat".into(),
        usage: usage(lines),
        ..Default::default()
    };
    let estimate = [("call", 1), ("output_tokens", 10_000)];
    let held = gateway
        .reserve_quota(reserve("r", &estimate))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.free_held_micros + held.balance_held_micros, 17_000);
    // A replay with the same usage answers the hold; other usage is refused.
    assert!(
        gateway
            .reserve_quota(reserve("r", &estimate))
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    let other = gateway
        .reserve_quota(reserve("r", &[("call", 1)]))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    publish_in_effect(&app, "default", chat_prices(4_500_000), "p2").await;
    let settle = |lines: &[(&str, i64)]| pb::SettleReservationRequest {
        user_id: user.clone(),
        request_id: "r".into(),
        usage: usage(lines),
        ..Default::default()
    };
    // Priced at version 1: ⌈2000 + 3001 × 1.5⌉ = 6502 (version 2 would ask 15505).
    let settled = gateway
        .settle_reservation(settle(&[("call", 1), ("output_tokens", 3_001)]))
        .await
        .unwrap()
        .into_inner();
    let charge = settled.charge.unwrap();
    assert_eq!(
        (
            charge.amount_micros,
            charge.price_list.as_str(),
            charge.price_version
        ),
        (6_502, "default", 1)
    );
    assert_eq!(settled.released_micros, 17_000 - 6_502);
    let replay = gateway
        .settle_reservation(settle(&[("output_tokens", 3_001), ("call", 1)]))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.charge.unwrap().amount_micros, 6_502);
    let other = gateway
        .settle_reservation(settle(&[("call", 1), ("output_tokens", 3_002)]))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);

    // A usage priced above the hold is refused whole.
    gateway
        .reserve_quota(reserve("r2", &estimate))
        .await
        .unwrap();
    let over = gateway
        .settle_reservation(pb::SettleReservationRequest {
            request_id: "r2".into(),
            ..settle(&[("call", 1), ("output_tokens", 10_001)])
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&over), "SETTLE_EXCEEDS_HOLD");
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_scheduled_version_applies_from_its_instant_on_two_replicas() {
    let first = spawn_app().await;
    let second = first.replica().await;
    let user = new_user("replicas");
    recharge(&first, &user, 100 * CNY).await;
    publish_in_effect(&first, "default", chat_prices(1_000_000), "p1").await;
    let switch = first.clock.now() + TimeDelta::seconds(10);
    let scheduled = first
        .ops()
        .await
        .publish_price_list(publication(
            "default",
            Some(switch),
            chat_prices(3_000_000),
            "p2",
        ))
        .await
        .unwrap()
        .into_inner()
        .list
        .unwrap();
    assert_eq!(
        (scheduled.version, scheduled.effective_from_ms),
        (2, switch.timestamp_millis())
    );
    // Both replicas learn version 2 within a lease of its commit, long before its instant.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let lines = [("output_tokens", 1_000)];
    let mut gateways = [first.gateway().await, second.gateway().await];
    first.clock.set(switch - TimeDelta::milliseconds(1));
    for (index, gateway) in gateways.iter_mut().enumerate() {
        let before = gateway
            .deduct_quota(priced_charge(
                &user,
                &format!("before{index}"),
                "chat",
                &lines,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (before.amount_micros, before.price_version),
            (1_000, 1),
            "replica {index}"
        );
    }
    let held = gateways[1]
        .reserve_quota(pb::ReserveQuotaRequest {
            user_id: user.clone(),
            request_id: "held".into(),
            api_id: "chat".into(),
            usage: usage(&lines),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.free_held_micros + held.balance_held_micros, 1_000);
    first.clock.set(switch);
    for (index, gateway) in gateways.iter_mut().enumerate() {
        let after = gateway
            .deduct_quota(priced_charge(
                &user,
                &format!("after{index}"),
                "chat",
                &lines,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (after.amount_micros, after.price_version),
            (3_000, 2),
            "replica {index}"
        );
    }
    // The hold taken under version 1 settles at version 1, on the other replica.
    let settled = gateways[0]
        .settle_reservation(pb::SettleReservationRequest {
            user_id: user.clone(),
            request_id: "held".into(),
            usage: usage(&lines),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .charge
        .unwrap();
    assert_eq!((settled.amount_micros, settled.price_version), (1_000, 1));
    let mut second = second;
    second.stop().await;
    first.cleanup().await;
}

#[tokio::test]
async fn a_version_published_for_now_prices_every_charge_after_the_answer_on_every_replica() {
    let db = TestDatabase::create(&unique_tag()).await;
    let settings = test_settings(&db.url, &[]);
    let first = spawn_with(settings.clone(), Clock::system(), db.name.clone()).await;
    let second = spawn_with(settings, Clock::system(), db.name.clone()).await;
    let user = new_user("now");
    recharge(&first, &user, 100 * CNY).await;
    let mut ops = first.ops().await;
    let mut gateway = second.gateway().await;
    for (version, per_million) in [(1, 1_000_000), (2, 2_000_000), (3, 5_000_000)] {
        let published = ops
            .publish_price_list(publication(
                "default",
                None,
                chat_prices(per_million),
                &format!("now{version}"),
            ))
            .await
            .unwrap()
            .into_inner()
            .list
            .unwrap();
        assert_eq!(published.version, version);
        assert!(published.effective_from_ms <= Utc::now().timestamp_millis());
        let charged = gateway
            .deduct_quota(priced_charge(
                &user,
                &format!("c{version}"),
                "chat",
                &[("output_tokens", 1_000)],
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (charged.amount_micros, charged.price_version),
            (per_million / 1_000, version)
        );
    }
    let mut second = second;
    second.stop().await;
    let mut first = first;
    first.stop().await;
    first.delete_streams().await;
    TestDatabase::drop_named(&db.name).await;
}

#[tokio::test]
async fn publications_are_checked_idempotent_and_admin_only() {
    let app = spawn_app().await;
    let mut ops = app.ops().await;
    let at = app.clock.now() + TimeDelta::hours(1);
    let first = ops
        .publish_price_list(publication(
            "pro",
            Some(at),
            chat_prices(1_000_000),
            "pro-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let list = first.list.unwrap();
    assert_eq!(
        (list.name.as_str(), list.version, list.currency.as_str()),
        ("pro", 1, "CNY")
    );
    assert_eq!(list.prices.len(), 5);
    assert_eq!(list.actor, "pricing@example.com");
    let replay = ops
        .publish_price_list(publication(
            "pro",
            Some(at),
            chat_prices(1_000_000),
            "pro-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.list.unwrap().version, 1);
    let reused = ops
        .publish_price_list(publication(
            "pro",
            Some(at),
            chat_prices(2_000_000),
            "pro-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (reused.code(), reason(&reused)),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED".into())
    );

    let now = app.clock.now();
    let too_many: Vec<pb::Price> = (0..10_001)
        .map(|i| price(&format!("api{i}"), "call", 1, 1))
        .collect();
    let bad: Vec<(&str, pb::PublishPriceListRequest)> = vec![
        ("name", publication("Pro List", None, chat_prices(1), "b1")),
        (
            "past",
            publication(
                "pro",
                Some(now - TimeDelta::seconds(6)),
                chat_prices(1),
                "b2",
            ),
        ),
        (
            "far",
            publication(
                "pro",
                Some(now + TimeDelta::days(367)),
                chat_prices(1),
                "b3",
            ),
        ),
        (
            "twice",
            publication(
                "pro",
                None,
                [chat_prices(1), vec![price("chat", "call", 1, 1)]].concat(),
                "b4",
            ),
        ),
        (
            "meter",
            publication("pro", None, vec![price("chat", "Call", 1, 1)], "b5"),
        ),
        (
            "price",
            publication("pro", None, vec![price("chat", "call", -1, 1)], "b6"),
        ),
        (
            "per units",
            publication("pro", None, vec![price("chat", "call", 1, 0)], "b7"),
        ),
        ("too many", publication("pro", None, too_many, "b8")),
        ("no id", publication("pro", None, chat_prices(1), "")),
    ];
    let before = fingerprint(&app.db).await;
    for (what, request) in bad {
        let refused = ops.publish_price_list(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
    }
    let denied = app
        .gateway()
        .await
        .publish_price_list(publication("pro", None, chat_prices(1), "g1"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(fingerprint(&app.db).await, before);
    let versions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM price_list_versions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(versions, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn an_assigned_list_prices_the_account_and_is_shown_with_its_schedule() {
    let app = spawn_app().await;
    let user = new_user("assigned");
    recharge(&app, &user, 100 * CNY).await;
    publish_in_effect(&app, "default", chat_prices(1_000_000), "d1").await;
    publish_in_effect(&app, "pro", chat_prices(500_000), "p1").await;
    let later = app.clock.now() + TimeDelta::days(30);
    app.ops()
        .await
        .publish_price_list(publication("pro", Some(later), chat_prices(400_000), "p2"))
        .await
        .unwrap();
    let mut ops = app.ops().await;
    let unknown = ops
        .assign_price_list(pb::AssignPriceListRequest {
            user_id: user.clone(),
            name: "nope".into(),
            actor: "ops".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (unknown.code(), reason(&unknown)),
        (Code::NotFound, "PRICE_LIST_NOT_FOUND".into())
    );
    let assign = |name: &str| pb::AssignPriceListRequest {
        user_id: user.clone(),
        name: name.into(),
        actor: "ops".into(),
    };
    let mut gateway = app.gateway().await;
    let lines = [("output_tokens", 1_000)];
    let check = pb::CheckQuotaRequest {
        user_id: user.clone(),
        api_id: "chat".into(),
        usage: usage(&lines),
        ..Default::default()
    };
    // A check remembers the account (and its list) before the assignment.
    assert_eq!(
        gateway
            .check_quota(check.clone())
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
            .price_list,
        "default"
    );
    let assigned = ops
        .assign_price_list(assign("pro"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(assigned.name, "pro");
    assert_eq!(assigned.account.unwrap().price_list, "pro");
    assert_eq!(
        gateway
            .check_quota(check)
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
            .price_list,
        "pro"
    );
    let charged = gateway
        .deduct_quota(priced_charge(&user, "c1", "chat", &lines))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            charged.amount_micros,
            charged.price_list.as_str(),
            charged.price_version
        ),
        (500, "pro", 1)
    );

    let shown = gateway
        .get_price_list(pb::GetPriceListRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let current = shown.current.unwrap();
    assert_eq!((current.name.as_str(), current.version), ("pro", 1));
    let scheduled: Vec<(i64, i64)> = shown
        .scheduled
        .iter()
        .map(|l| (l.version, l.effective_from_ms))
        .collect();
    assert_eq!(scheduled, [(2, later.timestamp_millis())]);
    let by_name = gateway
        .get_price_list(pb::GetPriceListRequest {
            name: "pro".into(),
            at_ms: later.timestamp_millis(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.current.unwrap().version, 2);
    assert!(by_name.scheduled.is_empty());
    let missing = gateway
        .get_price_list(pb::GetPriceListRequest {
            name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Back to the default list.
    let back = ops
        .assign_price_list(assign(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.name, "default");
    let charged = gateway
        .deduct_quota(priced_charge(&user, "c2", "chat", &lines))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (charged.amount_micros, charged.price_list.as_str()),
        (1_000, "default")
    );
    // An account assigned before its first charge is created with its list.
    let newcomer = new_user("newcomer");
    let created = ops
        .assign_price_list(pb::AssignPriceListRequest {
            user_id: newcomer.clone(),
            name: "pro".into(),
            actor: "ops".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.account.unwrap().price_list, "pro");
    assert_eq!(account(&app, &newcomer).await.price_list, "pro");
    assert_invariants(&app.db, &user).await;
    assert_invariants(&app.db, &newcomer).await;
    app.cleanup().await;
}
