//! Hostile input on every RPC: generated requests in which at least one field is out of the
//! contract (empty, oversized, negative, overflowing, control characters, characters outside the
//! field's alphabet), the other fields anything from valid to injection-shaped. Each is refused
//! with `INVALID_ARGUMENT`, never a panic or an internal error, and nothing changes.

use proptest::{
    prelude::*,
    strategy::{Strategy, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use shared::proto::v1 as pb;
use tonic::Code;

use crate::helpers::*;

/// Generated cases per RPC.
const CASES: usize = 600;

/// Texts that look dangerous but may well be valid somewhere.
fn any_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just("dev-42".to_owned()),
        Just("'; DROP TABLE ledger; --".to_owned()),
        Just("\" OR \"1\"=\"1".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("${jndi:ldap://example/a}".to_owned()),
        Just("%00%27%22".to_owned()),
        Just("日本語のテキスト".to_owned()),
        Just("🙂".repeat(40)),
        "[[:print:]]{0,80}",
        any::<String>(),
    ]
    .boxed()
}

/// Amounts from valid to absurd.
fn any_amount() -> BoxedStrategy<i64> {
    prop_oneof![
        1_i64..=1_000_000_000_000,
        Just(0),
        Just(-1),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(1_000_000_000_001),
        any::<i64>(),
    ]
    .boxed()
}

/// A text no field of the contract accepts: empty ones aside, every field refuses control
/// characters and more than 512 characters.
fn invalid_text() -> BoxedStrategy<String> {
    prop_oneof![
        Just("x".repeat(513)),
        Just("é".repeat(100_000)),
        "[a-z]{0,8}[\u{0}-\u{1f}\u{7f}][a-z]{0,8}",
        Just("line\nbreak".to_owned()),
        Just("\0".to_owned()),
    ]
    .boxed()
}

/// A user id out of `[A-Za-z0-9._:-]{1,64}`.
fn invalid_user() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("a".repeat(65)),
        Just("dev 42".to_owned()),
        Just("dev'42".to_owned()),
        Just("dév".to_owned()),
        "[a-z]{1,8}[^A-Za-z0-9._:-][a-z]{0,8}",
        invalid_text(),
    ]
    .boxed()
}

/// A key (request, order, payment, adjustment) out of printable ASCII, 1..128.
fn invalid_key() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("k".repeat(129)),
        Just("clé".to_owned()),
        invalid_text(),
    ]
    .boxed()
}

/// A usage that may be valid: a few meters with quantities in range.
fn any_usage() -> BoxedStrategy<Vec<pb::Usage>> {
    proptest::collection::vec(("[a-z_]{1,12}", 1_i64..=1_000_000_000_000), 1..5)
        .prop_map(|lines| {
            let lines = lines.into_iter();
            lines
                .map(|(meter, quantity)| pb::Usage { meter, quantity })
                .collect()
        })
        .boxed()
}

/// A usage no request may report: a meter out of `[a-z0-9_]{1,32}`, a quantity out of
/// 1 ..= 10^12, a meter twice, or more than 64 meters.
fn invalid_usage() -> BoxedStrategy<Vec<pb::Usage>> {
    let line = |meter: &str, quantity: i64| pb::Usage {
        meter: meter.to_owned(),
        quantity,
    };
    prop_oneof![
        prop_oneof![
            Just(String::new()),
            Just("Call".to_owned()),
            Just("a".repeat(33)),
            invalid_text(),
            "[a-z]{0,4}[^a-z0-9_][a-z]{0,4}",
        ]
        .prop_map(move |meter| vec![line(&meter, 1)]),
        prop_oneof![Just(0_i64), i64::MIN..0, 1_000_000_000_001..=i64::MAX]
            .prop_map(move |quantity| vec![line("call", quantity)]),
        Just(vec![line("call", 1), line("call", 2)]),
        Just((0..65).map(|i| line(&format!("m{i}"), 1)).collect()),
    ]
    .boxed()
}

/// A price no list may hold: a meter out of its alphabet, a price out of 0 ..= 10^12, per units
/// out of 1 ..= 10^9, an API id out of the contract.
fn invalid_prices() -> BoxedStrategy<Vec<pb::Price>> {
    let one = |api_id: String, meter: &str, price_micros: i64, per_units: i64| {
        vec![pb::Price {
            api_id,
            meter: meter.to_owned(),
            price_micros,
            per_units,
        }]
    };
    prop_oneof![
        invalid_text().prop_map(move |api_id| one(api_id, "call", 1, 1)),
        Just(one("chat".into(), "Call", 1, 1)),
        prop_oneof![i64::MIN..0_i64, 1_000_000_000_001..=i64::MAX].prop_map(move |price| one(
            "chat".into(),
            "call",
            price,
            1
        )),
        prop_oneof![i64::MIN..=0_i64, 1_000_000_001..=i64::MAX].prop_map(move |per_units| one(
            "chat".into(),
            "call",
            1,
            per_units
        )),
        Just(
            [
                one("chat".into(), "call", 1, 1),
                one("chat".into(), "call", 2, 1)
            ]
            .concat()
        ),
    ]
    .boxed()
}

fn invalid_amount() -> BoxedStrategy<i64> {
    prop_oneof![
        Just(0_i64),
        Just(i64::MIN),
        i64::MIN..=0,
        1_000_000_000_001..=i64::MAX,
    ]
    .boxed()
}

/// A value from `valid` or, at position `bad`, from `invalid`.
fn pick<T: std::fmt::Debug>(
    runner: &mut TestRunner,
    bad: bool,
    valid: &BoxedStrategy<T>,
    invalid: &BoxedStrategy<T>,
) -> T {
    let strategy = if bad { invalid } else { valid };
    strategy.new_tree(runner).expect("a value").current()
}

/// The cases of one RPC: `fields` values each, exactly one of them (chosen in turn) invalid.
fn cases<R>(fields: usize, mut build: impl FnMut(&mut TestRunner, usize) -> R) -> Vec<R> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    (0..CASES).map(|i| build(&mut runner, i % fields)).collect()
}

#[tokio::test]
async fn malformed_requests_on_every_rpc_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    // A real account and order, so that valid fields can point at something.
    let user = new_user("hostile");
    recharge(&app, &user, 10_000_000).await;
    let before = fingerprint(&app.db).await;
    let (text, amount) = (any_text(), any_amount());
    let (bad_text, bad_user, bad_key, bad_amount) = (
        invalid_text(),
        invalid_user(),
        invalid_key(),
        invalid_amount(),
    );
    let (mut gateway, mut ops, mut payment, mut orders) = (
        app.gateway().await,
        app.ops().await,
        app.payment().await,
        app.orders().await,
    );
    let mut answers: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();

    for case in cases(2, |r, bad| pb::CheckQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        amount_micros: pick(r, bad == 1, &amount, &bad_amount),
        ..Default::default()
    }) {
        answers.push(("CheckQuota", gateway.check_quota(case).await.map(drop)));
    }
    for case in cases(5, |r, bad| pb::DeductQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        amount_micros: pick(r, bad == 1, &amount, &bad_amount),
        request_id: pick(r, bad == 2, &text, &bad_key),
        api_id: pick(r, bad == 3, &text, &bad_text),
        description: pick(r, bad == 4, &text, &bad_text),
        ..Default::default()
    }) {
        answers.push(("DeductQuota", gateway.deduct_quota(case).await.map(drop)));
    }
    for case in cases(1, |r, _| pb::GetAccountRequest {
        user_id: pick(r, true, &text, &bad_user),
    }) {
        answers.push(("GetAccount", gateway.get_account(case).await.map(drop)));
    }
    for case in cases(4, |r, bad| pb::CreateRechargeOrderRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        amount_micros: pick(r, bad == 1, &amount, &bad_amount),
        channel: pick(r, bad == 2, &text, &bad_text),
        idempotency_key: pick(r, bad == 3, &text, &bad_text),
    }) {
        let answer = orders.create_recharge_order(case).await.map(drop);
        answers.push(("CreateRechargeOrder", answer));
    }
    for case in cases(2, |r, bad| pb::GetRechargeOrderRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        order_no: pick(r, bad == 1, &text, &bad_key),
    }) {
        let answer = orders.get_recharge_order(case).await.map(drop);
        answers.push(("GetRechargeOrder", answer));
    }
    // A success's amount is never refused (invariant 7: the money arrived); a failure notice's
    // amount must be 0 or within range.
    let bad_failure_amount = prop_oneof![
        Just(i64::MIN),
        i64::MIN..0_i64,
        1_000_000_000_001..=i64::MAX,
    ]
    .boxed();
    for case in cases(3, |r, bad| pb::RechargeCallbackRequest {
        order_no: pick(r, bad == 0, &text, &bad_key),
        provider_txn_id: pick(r, bad == 1, &text, &bad_key),
        paid_amount_micros: pick(r, bad == 2, &amount, &bad_failure_amount),
        success: bad != 2,
    }) {
        let answer = payment.recharge_callback(case).await.map(drop);
        answers.push(("RechargeCallback", answer));
    }
    let zero_or_overflowing = prop_oneof![
        Just(0_i64),
        Just(i64::MIN),
        1_000_000_000_001..=i64::MAX,
        i64::MIN..-1_000_000_000_000,
    ]
    .boxed();
    for case in cases(5, |r, bad| pb::AdjustBalanceRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        adjustment_id: pick(r, bad == 1, &text, &bad_key),
        amount_micros: pick(r, bad == 2, &amount, &zero_or_overflowing),
        reason: pick(r, bad == 3, &text, &bad_text),
        actor: pick(r, bad == 4, &text, &bad_text),
    }) {
        answers.push(("AdjustBalance", ops.adjust_balance(case).await.map(drop)));
    }
    let negative_or_overflowing = prop_oneof![
        Just(i64::MIN),
        i64::MIN..0_i64,
        1_000_000_000_001..=i64::MAX,
    ]
    .boxed();
    for case in cases(3, |r, bad| pb::SetFreeQuotaPlanRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        monthly_free_micros: pick(r, bad == 1, &amount, &negative_or_overflowing),
        actor: pick(r, bad == 2, &text, &bad_text),
    }) {
        let answer = ops.set_free_quota_plan(case).await.map(drop);
        answers.push(("SetFreeQuotaPlan", answer));
    }
    for case in cases(5, |r, bad| pb::RefundChargeRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        refund_id: pick(r, bad == 1, &text, &bad_key),
        request_id: pick(r, bad == 2, &text, &bad_key),
        amount_micros: pick(r, bad == 3, &amount, &bad_amount),
        reason: pick(r, bad == 4, &text, &bad_text),
    }) {
        answers.push(("RefundCharge", ops.refund_charge(case).await.map(drop)));
    }
    let bad_ttl = prop_oneof![i64::MIN..0_i64, 1_i64..1_000, 3_600_001..=i64::MAX].boxed();
    let ttl = prop_oneof![Just(0_i64), 1_000_i64..=3_600_000].boxed();
    for case in cases(5, |r, bad| pb::ReserveQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        amount_micros: pick(r, bad == 2, &amount, &bad_amount),
        api_id: pick(r, bad == 3, &text, &bad_text),
        ttl_ms: pick(r, bad == 4, &ttl, &bad_ttl),
        ..Default::default()
    }) {
        answers.push(("ReserveQuota", gateway.reserve_quota(case).await.map(drop)));
    }
    for case in cases(3, |r, bad| pb::SettleReservationRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        actual_amount_micros: pick(r, bad == 2, &amount, &bad_amount),
        ..Default::default()
    }) {
        let answer = gateway.settle_reservation(case).await.map(drop);
        answers.push(("SettleReservation", answer));
    }
    for case in cases(2, |r, bad| pb::ReleaseReservationRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
    }) {
        let answer = gateway.release_reservation(case).await.map(drop);
        answers.push(("ReleaseReservation", answer));
    }
    let bad_threshold = prop_oneof![
        Just(i64::MIN),
        i64::MIN..0_i64,
        1_000_000_000_000_001..=i64::MAX,
    ]
    .boxed();
    let bad_url = prop_oneof![
        "(ftp|file|javascript|data):[[:print:]]{0,60}",
        "https?://",
        "https?://[a-z]{1,10} [a-z]{1,10}",
        "https?://[a-z]{3,10}\\.example/[a-z]{2100,2200}",
        bad_text.clone(),
    ]
    .boxed();
    for case in cases(3, |r, bad| pb::SetAlertSettingsRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        low_balance_threshold_micros: pick(r, bad == 1, &amount, &bad_threshold),
        webhook_url: pick(r, bad == 2, &Just(String::new()).boxed(), &bad_url),
        rotate_signing_secret: false,
        keep_webhook_url: false,
        keep_threshold: false,
    }) {
        let answer = orders.set_alert_settings(case).await.map(drop);
        answers.push(("SetAlertSettings", answer));
    }

    let (usage, bad_usage) = (any_usage(), invalid_usage());
    for case in cases(4, |r, bad| pb::DeductQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        api_id: pick(r, bad == 2, &text, &bad_text),
        usage: pick(r, bad == 3, &usage, &bad_usage),
        ..Default::default()
    }) {
        answers.push((
            "DeductQuota usage",
            gateway.deduct_quota(case).await.map(drop),
        ));
    }
    // An amount and a usage at once is refused whatever both are.
    for case in cases(1, |r, _| pb::CheckQuotaRequest {
        user_id: pick(r, false, &text, &bad_user),
        amount_micros: pick(r, false, &(1_i64..=1_000_000).boxed(), &bad_amount),
        api_id: "chat".into(),
        usage: pick(r, false, &usage, &bad_usage),
        key_id: String::new(),
    }) {
        answers.push(("CheckQuota both", gateway.check_quota(case).await.map(drop)));
    }
    let key_id = "[A-Za-z0-9._:-]{0,64}".boxed();
    let bad_key_id = prop_oneof![
        Just("k".repeat(65)),
        Just("key id".to_owned()),
        Just("clé".to_owned()),
        "[a-z]{0,8}[^A-Za-z0-9._:-][a-z]{0,8}",
        invalid_text(),
    ]
    .boxed();
    for case in cases(4, |r, bad| pb::DeductQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        amount_micros: pick(r, bad == 2, &amount, &bad_amount),
        key_id: pick(r, bad == 3, &key_id, &bad_key_id),
        ..Default::default()
    }) {
        answers.push((
            "DeductQuota key_id",
            gateway.deduct_quota(case).await.map(drop),
        ));
    }
    for case in cases(3, |r, bad| pb::ReserveQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        amount_micros: 1_000,
        key_id: pick(r, bad == 2, &key_id, &bad_key_id),
        ..Default::default()
    }) {
        answers.push((
            "ReserveQuota key_id",
            gateway.reserve_quota(case).await.map(drop),
        ));
    }
    let limit = (
        prop_oneof![
            Just("account".to_owned()),
            "api:[a-z.]{1,20}",
            "key:[A-Za-z0-9._:-]{1,64}"
        ],
        prop_oneof![Just("day".to_owned()), Just("month".to_owned())],
        0_i64..=1_000_000_000_000_000,
    )
        .prop_map(|(scope, window, limit_micros)| pb::SpendLimit {
            scope,
            window,
            limit_micros,
        });
    let limits = proptest::collection::vec(limit, 0..3)
        .prop_map(|mut limits| {
            limits.sort_by(|a, b| (&a.scope, &a.window).cmp(&(&b.scope, &b.window)));
            limits.dedup_by(|a, b| (&a.scope, &a.window) == (&b.scope, &b.window));
            limits
        })
        .boxed();
    let bad_limit = prop_oneof![
        ("[a-z]{0,8}", Just("day".to_owned()), Just(1_i64)),
        (Just("api:".to_owned()), Just("day".to_owned()), Just(1_i64)),
        (
            "key:[a-z]{0,4}[^A-Za-z0-9._:-]",
            Just("day".to_owned()),
            Just(1_i64)
        ),
        (Just("account".to_owned()), "[a-z]{0,8}", Just(1_i64)),
        (
            Just("account".to_owned()),
            Just("day".to_owned()),
            i64::MIN..0_i64
        ),
        (
            Just("account".to_owned()),
            Just("month".to_owned()),
            1_000_000_000_000_001..=i64::MAX
        ),
    ]
    // A generated scope or window may happen to be valid ("account", "day"): left out.
    .prop_filter("an invalid limit", |(scope, window, limit)| {
        shared::limits::SpendLimit::parse(scope, window, *limit).is_err()
    })
    .prop_map(|(scope, window, limit_micros)| pb::SpendLimit {
        scope,
        window,
        limit_micros,
    });
    let bad_limits = prop_oneof![
        proptest::collection::vec(bad_limit, 1..3),
        Just(
            (0..21)
                .map(|n| pb::SpendLimit {
                    scope: format!("key:k{n}"),
                    window: "day".into(),
                    limit_micros: 1,
                })
                .collect()
        ),
        Just(vec![
            pb::SpendLimit {
                scope: "account".into(),
                window: "day".into(),
                limit_micros: 1,
            };
            2
        ]),
    ]
    .boxed();
    let bad_set_id = prop_oneof![
        Just("k".repeat(129)),
        Just("clé".to_owned()),
        invalid_text()
    ]
    .boxed();
    for case in cases(4, |r, bad| pb::SetSpendLimitsRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        limits: pick(r, bad == 1, &limits, &bad_limits),
        actor: pick(r, bad == 2, &text, &bad_text),
        set_id: pick(r, bad == 3, &Just(String::new()).boxed(), &bad_set_id),
    }) {
        let answer = ops.set_spend_limits(case).await.map(drop);
        answers.push(("SetSpendLimits", answer));
    }
    for case in cases(1, |r, bad| pb::GetSpendLimitsRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
    }) {
        let answer = gateway.get_spend_limits(case).await.map(drop);
        answers.push(("GetSpendLimits", answer));
    }
    for case in cases(3, |r, bad| pb::ReserveQuotaRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        api_id: "chat".into(),
        usage: pick(r, bad == 2, &usage, &bad_usage),
        ..Default::default()
    }) {
        let answer = gateway.reserve_quota(case).await.map(drop);
        answers.push(("ReserveQuota usage", answer));
    }
    for case in cases(3, |r, bad| pb::SettleReservationRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        request_id: pick(r, bad == 1, &text, &bad_key),
        usage: pick(r, bad == 2, &usage, &bad_usage),
        ..Default::default()
    }) {
        let answer = gateway.settle_reservation(case).await.map(drop);
        answers.push(("SettleReservation usage", answer));
    }
    let list_name = "[a-z0-9_-]{1,64}".boxed();
    let bad_name = prop_oneof![
        Just("Default".to_owned()),
        Just("n".repeat(65)),
        "[a-z]{0,4}[^a-z0-9_-][a-z]{0,4}",
        invalid_text(),
    ]
    .boxed();
    let prices = proptest::collection::vec(
        (
            "[a-z.]{0,20}",
            "[a-z_]{1,12}",
            0_i64..=1_000_000_000_000,
            1_i64..=1_000_000_000,
        ),
        0..4,
    )
    .prop_map(|prices| {
        let prices = prices.into_iter();
        prices
            .map(|(api_id, meter, price_micros, per_units)| pb::Price {
                api_id,
                meter,
                price_micros,
                per_units,
            })
            .collect()
    })
    .boxed();
    let when = prop_oneof![Just(0_i64), Just(i64::MAX)].boxed();
    let bad_when = prop_oneof![Just(i64::MIN), i64::MIN..0, 1..1_700_000_000_000_i64].boxed();
    for case in cases(5, |r, bad| pb::PublishPriceListRequest {
        name: pick(r, bad == 0, &list_name, &bad_name),
        effective_from_ms: pick(r, bad == 1, &Just(0_i64).boxed(), &bad_when),
        prices: pick(r, bad == 2, &prices, &invalid_prices()),
        publish_id: pick(r, bad == 3, &text, &bad_key),
        actor: pick(r, bad == 4, &text, &bad_text),
    }) {
        let answer = ops.publish_price_list(case).await.map(drop);
        answers.push(("PublishPriceList", answer));
    }
    for case in cases(3, |r, bad| pb::AssignPriceListRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        name: pick(r, bad == 1, &list_name, &bad_name),
        actor: pick(r, bad == 2, &text, &bad_text),
    }) {
        let answer = ops.assign_price_list(case).await.map(drop);
        answers.push(("AssignPriceList", answer));
    }
    for case in cases(3, |r, bad| pb::GetPriceListRequest {
        user_id: pick(r, bad == 0, &text, &bad_user),
        // A name beside a user is refused: one of them.
        name: if bad == 0 {
            String::new()
        } else {
            pick(r, bad == 1, &list_name, &bad_name)
        },
        at_ms: pick(r, bad == 2, &when, &(i64::MIN..0).boxed()),
    }) {
        let answer = gateway.get_price_list(case).await.map(drop);
        answers.push(("GetPriceList", answer));
    }

    let unexpected: Vec<_> = answers
        .iter()
        .filter(|(_, answer)| {
            !matches!(answer, Err(status) if status.code() == Code::InvalidArgument
                && reason(status) == "INVALID_ARGUMENT")
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} of {} hostile requests were not refused as invalid, e.g. {:?}",
        unexpected.len(),
        answers.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    assert_eq!(fingerprint(&app.db).await, before, "nothing changed");
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

/// Any request as the wire sees it: the text fields at tags 1 to 5 as raw bytes, each present
/// only when set, and the amount a request carries at tag 2 or 3 left out.
#[derive(Clone, PartialEq, prost::Message)]
struct RawTexts {
    #[prost(bytes = "vec", optional, tag = "1")]
    t1: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    t2: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    t3: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    t4: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    t5: Option<Vec<u8>>,
}

impl RawTexts {
    fn set(&mut self, tag: u32, bytes: Vec<u8>) {
        let field = match tag {
            1 => &mut self.t1,
            2 => &mut self.t2,
            3 => &mut self.t3,
            4 => &mut self.t4,
            _ => &mut self.t5,
        };
        *field = Some(bytes);
    }
}

/// Whatever an answer holds: the calls here must fail.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyAnswer {}

/// Bytes that are not UTF-8: a valid prefix, then a stray continuation byte, an overlong form,
/// a surrogate, a truncated sequence or a byte UTF-8 never uses, then anything.
fn not_utf8() -> BoxedStrategy<Vec<u8>> {
    let broken = prop_oneof![
        Just(vec![0x80]),
        Just(vec![0xc0, 0xaf]),
        Just(vec![0xc3]),
        Just(vec![0xed, 0xa0, 0x80]),
        Just(vec![0xf8, 0x88, 0x80, 0x80, 0x80]),
        Just(vec![0xff]),
        Just(vec![0xfe]),
        Just(vec![0xe2, 0x82]),
    ];
    (
        "[a-z0-9-]{0,20}",
        broken,
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(prefix, broken, rest)| {
            let mut bytes = prefix.into_bytes();
            bytes.extend(broken);
            bytes.extend(rest);
            bytes
        })
        .prop_filter("not UTF-8", |bytes| std::str::from_utf8(bytes).is_err())
        .boxed()
}

/// Texts that are not UTF-8 in any text field of any RPC are refused as invalid arguments like
/// any other malformed field (prost's own codec would report them as an internal error of the
/// server), and change nothing.
#[tokio::test]
async fn texts_that_are_not_utf8_are_refused_as_invalid() {
    let app = spawn_app().await;
    let before = fingerprint(&app.db).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Each RPC with the tags of its text fields and the token of a caller in its scope.
    let rpcs: [(&'static str, &[u32], &str); 13] = [
        ("CheckQuota", &[1], GATEWAY),
        ("DeductQuota", &[1, 3, 4, 5], GATEWAY),
        ("GetAccount", &[1], GATEWAY),
        ("CreateRechargeOrder", &[1, 3, 4], ORDERS),
        ("GetRechargeOrder", &[1, 2], ORDERS),
        ("RechargeCallback", &[1, 2], PAYMENT),
        ("AdjustBalance", &[1, 2, 4, 5], OPS),
        ("SetFreeQuotaPlan", &[1, 3], OPS),
        ("RefundCharge", &[1, 2, 3, 5], OPS),
        ("SetAlertSettings", &[1, 3], ORDERS),
        ("ReserveQuota", &[1, 2, 4], GATEWAY),
        ("SettleReservation", &[1, 2], GATEWAY),
        ("ReleaseReservation", &[1, 2], GATEWAY),
    ];
    let (broken_text, valid_text) = (not_utf8(), any_text().prop_map(String::into_bytes).boxed());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let mut sent = 0;
    for (method, tags, token) in rpcs {
        let path = format!("/billing.v1.BillingCommandService/{method}");
        for case in 0..CASES / 2 {
            // One text not UTF-8, the other texts anything valid.
            let broken = tags[case % tags.len()];
            let mut request = RawTexts::default();
            for &tag in tags {
                request.set(
                    tag,
                    pick(&mut runner, tag == broken, &valid_text, &broken_text),
                );
            }
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.unwrap();
            let mut call = tonic::Request::new(request.clone());
            call.metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let codec = tonic_prost::ProstCodec::<RawTexts, AnyAnswer>::default();
            let answer = grpc
                .unary(
                    call,
                    tonic::codegen::http::uri::PathAndQuery::try_from(path.as_str()).unwrap(),
                    codec,
                )
                .await;
            let status = answer.expect_err("not UTF-8: refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{method} with tag {broken} not UTF-8: {status:?} ({request:?})"
            );
            assert!(
                status.message().contains("not UTF-8"),
                "refused for its encoding: {status:?}"
            );
            sent += 1;
        }
    }
    assert_eq!(sent, rpcs.len() * (CASES / 2));
    assert_eq!(fingerprint(&app.db).await, before, "nothing changed");
    app.cleanup().await;
}

/// A webhook body that must be refused: not JSON, JSON of the wrong shape or types, or the
/// right shape with a field out of the contract.
fn invalid_body() -> BoxedStrategy<Vec<u8>> {
    let field = |bad: BoxedStrategy<String>| {
        (bad, any_text(), any_amount()).prop_map(|(bad, other, amount)| {
            serde_json::json!({
                "order_no": bad, "provider_txn_id": other,
                "paid_amount_micros": amount, "success": true
            })
        })
    };
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2_000),
        any::<String>().prop_map(String::into_bytes),
        field(invalid_key()).prop_map(|v| v.to_string().into_bytes()),
        (any_text(), invalid_key()).prop_map(|(order, txn)| {
            serde_json::json!({
                "order_no": order, "provider_txn_id": txn,
                "paid_amount_micros": 1_000, "success": true
            })
            .to_string()
            .into_bytes()
        }),
        // A failure notice's amount must be 0 or in range; a success's amount is never refused
        // (invariant 7: an authentic one out of range is an unmatched payment).
        (any_text(), any_text(), invalid_amount().prop_filter("0 is a valid failure amount", |a| *a != 0))
            .prop_map(|(order, txn, amount)| {
            serde_json::json!({
                "order_no": order, "provider_txn_id": txn,
                "paid_amount_micros": amount, "success": false
            })
            .to_string()
            .into_bytes()
        }),
        Just(br#"{"order_no": 5, "provider_txn_id": [], "paid_amount_micros": "1", "success": 1}"#.to_vec()),
        Just(br#"{"order_no": "RO1", "provider_txn_id": "t", "paid_amount_micros": 99999999999999999999999, "success": true}"#.to_vec()),
        Just(br#"{"order_no": "RO1", "provider_txn_id": "t", "paid_amount_micros": 1.5, "success": true}"#.to_vec()),
        Just(br#"{"order_no": "RO1", "provider_txn_id": "t"}"#.to_vec()),
        Just(br#"{"order_no": "RO1", "provider_txn_id": "t", "paid_amount_micros": 1, "success": true, "success": false}"#.to_vec()),
        Just(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()),
        Just(vec![0xef, 0xbb, 0xbf, b'{', b'}']),
        Just(b"null".to_vec()),
        Just(Vec::new()),
    ]
    .boxed()
}

/// Signed deliveries of malformed bodies get 400 (413 when oversized), unsigned or
/// badly signed ones 401; every answer is JSON, none is a 5xx, and nothing changes.
#[tokio::test]
async fn malformed_webhook_deliveries_are_refused_and_change_nothing() {
    use command_svc::api::webhook::sign;
    use reqwest::StatusCode;

    let app = spawn_app().await;
    let user = new_user("hook-hostile");
    recharge(&app, &user, 1_000_000).await;
    let before = fingerprint(&app.db).await;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let bodies = invalid_body();
    let garbage_header = prop_oneof![
        Just(String::new()),
        Just("abc".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("sha256=".to_owned()),
        Just(format!("sha256={}", "0".repeat(64))),
        "[[:print:]]{0,100}",
    ]
    .boxed();
    let client = reqwest::Client::new();
    let url = app.http("/api/v1/billing/recharge/callback");
    let mut unexpected = Vec::new();
    for i in 0..3_000 {
        let body = bodies.new_tree(&mut runner).unwrap().current();
        let now = app.clock.now().timestamp();
        let (timestamp, signature, expected) = match i % 3 {
            // Signed as a payment service would: the body is what is wrong.
            0 | 1 => (
                now.to_string(),
                sign(WEBHOOK_SECRET, now, &body),
                [StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE],
            ),
            _ => {
                let header = garbage_header.new_tree(&mut runner).unwrap().current();
                // An oversized body is refused before its signature is read.
                let refused = [StatusCode::UNAUTHORIZED, StatusCode::PAYLOAD_TOO_LARGE];
                (header.clone(), header, refused)
            }
        };
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&timestamp) {
            request = request.header("x-billing-timestamp", value);
        }
        if let Ok(value) = reqwest::header::HeaderValue::from_str(&signature) {
            request = request.header("x-billing-signature", value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let json = response.json::<serde_json::Value>().await.is_ok();
        if !expected.contains(&status) || !json {
            unexpected.push((
                status,
                json,
                String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned(),
            ));
        }
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected answers, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    assert_eq!(fingerprint(&app.db).await, before, "nothing changed");
    app.cleanup().await;
}

/// Keys that differ from each other in one byte only: a trailing or leading space, two spaces,
/// a tab-free case change, a byte more. Each is a key of its own (invariant 10): each charge
/// and each adjustment applies once, and each replay answers its own record.
#[tokio::test]
async fn keys_differing_in_any_byte_are_distinct_keys() {
    let app = spawn_app().await;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let base = "[!-~]{1,60}".boxed();
    let (mut gateway, mut ops) = (app.gateway().await, app.ops().await);
    for case in 0..40 {
        let key: String = base.new_tree(&mut runner).expect("a key").current();
        let mut variants = vec![
            key.clone(),
            format!("{key} "),
            format!(" {key}"),
            format!("{key}  "),
            format!("{key}x"),
        ];
        let flipped: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        if flipped != key {
            variants.push(flipped);
        }
        let user = new_user(&format!("variants{case}"));
        let mut records = Vec::new();
        for variant in &variants {
            let charged = gateway
                .deduct_quota(deduct(&user, 1_000, variant))
                .await
                .unwrap_or_else(|status| panic!("{variant:?}: {status:?}"))
                .into_inner();
            assert!(!charged.replayed, "{variant:?} replayed another key");
            let adjusted = ops
                .adjust_balance(adjust(&user, 1_000, variant))
                .await
                .unwrap_or_else(|status| panic!("{variant:?}: {status:?}"))
                .into_inner();
            assert!(
                !adjusted.replayed,
                "{variant:?} replayed another adjustment"
            );
            records.push((charged.record_id, adjusted.record_id));
        }
        for (variant, (charge, adjustment)) in variants.iter().zip(&records) {
            let again = gateway
                .deduct_quota(deduct(&user, 1_000, variant))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (again.replayed, &again.record_id),
                (true, charge),
                "{variant:?}"
            );
            let again = ops
                .adjust_balance(adjust(&user, 1_000, variant))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (again.replayed, &again.record_id),
                (true, adjustment),
                "{variant:?}"
            );
        }
        let account = account(&app, &user).await;
        let n = variants.len() as i64;
        assert_eq!(
            (account.free_used_micros, account.balance_micros),
            (n * 1_000, n * 1_000)
        );
        assert_invariants(&app.db, &user).await;
    }
    app.cleanup().await;
}
