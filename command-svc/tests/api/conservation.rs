//! Invariant 5 under a random, concurrent mix of every command on a few accounts: conservation
//! of balance and free quota, the ledger chain, and every acknowledged charge recorded once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::future::join_all;
use shared::proto::v1 as pb;

use crate::helpers::*;

const ACCOUNTS: usize = 50;
const OPERATIONS: usize = 5_000;
const WORKERS: usize = 16;

/// xorshift64*: a small deterministic generator, seeded per worker.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A charge the service acknowledged as new: it must be in the ledger exactly like this.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Acknowledged {
    user: String,
    free: i64,
    balance: i64,
}

#[derive(Default)]
struct Seen {
    /// record_id → the acknowledged charge.
    charges: HashMap<String, Acknowledged>,
    /// Earlier charge requests, to send again: (user, request_id, amount).
    requests: Vec<(String, String, i64)>,
    refused_reuses: usize,
    replays: usize,
}

#[tokio::test]
async fn a_random_mix_of_5000_operations_conserves_every_account() {
    let app = spawn_app().await;
    let users: Arc<Vec<String>> = Arc::new(
        (0..ACCOUNTS)
            .map(|i| new_user(&format!("mix{i}")))
            .collect(),
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (gateway, orders, payment, ops) = (
        app.gateway().await,
        app.orders().await,
        app.payment().await,
        app.ops().await,
    );

    let workers = (0..WORKERS).map(|worker| {
        let (users, seen) = (users.clone(), seen.clone());
        let (mut gateway, mut orders, mut payment, mut ops) = (
            gateway.clone(),
            orders.clone(),
            payment.clone(),
            ops.clone(),
        );
        async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((worker as u64 + 1) * 0x1000_0001));
            for op in 0..OPERATIONS / WORKERS {
                let user = users[rng.below(ACCOUNTS as u64) as usize].clone();
                match rng.below(100) {
                    0..=54 => {
                        let amount = (1 + rng.below(3_000)) as i64 * 1_000;
                        let request_id = format!("w{worker}-op{op}");
                        match gateway
                            .deduct_quota(deduct(&user, amount, &request_id))
                            .await
                        {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                let mut seen = seen.lock().unwrap();
                                let ack = Acknowledged {
                                    user: user.clone(),
                                    free: reply.free_deducted_micros,
                                    balance: reply.balance_deducted_micros,
                                };
                                assert_eq!(ack.free + ack.balance, amount);
                                assert!(
                                    seen.charges.insert(reply.record_id, ack).is_none(),
                                    "a new charge has a new record"
                                );
                                seen.requests.push((user, request_id, amount));
                            }
                            Err(status) => {
                                assert_eq!(reason(&status), "INSUFFICIENT_QUOTA", "{status:?}")
                            }
                        }
                    }
                    55..=64 => {
                        let earlier = {
                            let seen = seen.lock().unwrap();
                            (!seen.requests.is_empty()).then(|| {
                                seen.requests[rng.below(seen.requests.len() as u64) as usize]
                                    .clone()
                            })
                        };
                        let Some((user, request_id, amount)) = earlier else {
                            continue;
                        };
                        let changed = rng.below(4) == 0;
                        let sent = if changed { amount + 1 } else { amount };
                        match gateway.deduct_quota(deduct(&user, sent, &request_id)).await {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                assert!(!changed && reply.replayed, "a resent charge is a replay");
                                let mut seen = seen.lock().unwrap();
                                let original = seen
                                    .charges
                                    .get(&reply.record_id)
                                    .expect("the original record")
                                    .clone();
                                assert_eq!(
                                    (original.free, original.balance),
                                    (reply.free_deducted_micros, reply.balance_deducted_micros)
                                );
                                seen.replays += 1;
                            }
                            Err(status) => {
                                assert!(changed, "{status:?}");
                                assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED");
                                seen.lock().unwrap().refused_reuses += 1;
                            }
                        }
                    }
                    65..=79 => {
                        let amount = (1 + rng.below(20)) as i64 * CNY;
                        let order = orders
                            .create_recharge_order(new_order(&user, amount))
                            .await
                            .unwrap()
                            .into_inner()
                            .order
                            .unwrap();
                        let txn = format!("txn-w{worker}-op{op}");
                        let reply = payment
                            .recharge_callback(paid(&order.order_no, &txn, amount))
                            .await
                            .unwrap()
                            .into_inner();
                        assert_eq!(reply.outcome, pb::CallbackOutcome::Credited as i32);
                    }
                    80..=91 => {
                        let magnitude = (1 + rng.below(5)) as i64 * CNY;
                        let amount = if rng.below(2) == 0 {
                            magnitude
                        } else {
                            -magnitude
                        };
                        if let Err(status) = ops
                            .adjust_balance(adjust(&user, amount, &format!("adj-w{worker}-op{op}")))
                            .await
                        {
                            assert!(
                                amount < 0 && reason(&status) == "INSUFFICIENT_QUOTA",
                                "{status:?}"
                            );
                        }
                    }
                    92..=93 => {
                        let earlier = {
                            let seen = seen.lock().unwrap();
                            (!seen.requests.is_empty()).then(|| {
                                seen.requests[rng.below(seen.requests.len() as u64) as usize]
                                    .clone()
                            })
                        };
                        let Some((user, request_id, amount)) = earlier else {
                            continue;
                        };
                        let refund = pb::RefundChargeRequest {
                            user_id: user,
                            refund_id: format!("rf-w{worker}-op{op}"),
                            request_id,
                            amount_micros: 1 + rng.below(amount as u64) as i64,
                            reason: "conservation".into(),
                        };
                        if let Err(status) = ops.refund_charge(refund).await {
                            assert_eq!(reason(&status), "REFUND_EXCEEDS_CHARGE", "{status:?}");
                        }
                    }
                    94..=96 => {
                        // A reservation, settled at some price or released.
                        let request_id = format!("hold-w{worker}-op{op}");
                        let amount = (1 + rng.below(3_000)) as i64 * 1_000;
                        let held = gateway
                            .reserve_quota(pb::ReserveQuotaRequest {
                                user_id: user.clone(),
                                request_id: request_id.clone(),
                                amount_micros: amount,
                                api_id: "api.stream".into(),
                                ttl_ms: 60_000,
                                ..Default::default()
                            })
                            .await;
                        match held {
                            Ok(_) if rng.below(3) > 0 => {
                                let charge = gateway
                                    .settle_reservation(pb::SettleReservationRequest {
                                        user_id: user.clone(),
                                        request_id,
                                        actual_amount_micros: 1 + rng.below(amount as u64) as i64,
                                        ..Default::default()
                                    })
                                    .await
                                    .unwrap()
                                    .into_inner()
                                    .charge
                                    .unwrap();
                                // A settled reservation is an ordinary charge.
                                let ack = Acknowledged {
                                    user: user.clone(),
                                    free: charge.free_deducted_micros,
                                    balance: charge.balance_deducted_micros,
                                };
                                seen.lock().unwrap().charges.insert(charge.record_id, ack);
                            }
                            Ok(_) => {
                                gateway
                                    .release_reservation(pb::ReleaseReservationRequest {
                                        user_id: user.clone(),
                                        request_id,
                                    })
                                    .await
                                    .unwrap();
                            }
                            Err(status) => {
                                assert_eq!(reason(&status), "INSUFFICIENT_QUOTA", "{status:?}")
                            }
                        }
                    }
                    97 => {
                        let plan = pb::SetFreeQuotaPlanRequest {
                            user_id: user.clone(),
                            monthly_free_micros: rng.below(20) as i64 * CNY,
                            actor: format!("ops-w{worker}"),
                        };
                        ops.set_free_quota_plan(plan).await.unwrap();
                    }
                    _ => {
                        let check = pb::CheckQuotaRequest {
                            user_id: user.clone(),
                            amount_micros: CNY,
                            ..Default::default()
                        };
                        let view = gateway
                            .check_quota(check)
                            .await
                            .unwrap()
                            .into_inner()
                            .account
                            .unwrap();
                        assert!(
                            view.balance_micros >= 0
                                && view.free_used_micros <= view.free_granted_micros
                        );
                    }
                }
            }
        }
    });
    join_all(workers).await;

    for user in users.iter() {
        assert_invariants(&app.db, user).await;
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let recorded: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT record_id, user_id, free_micros, balance_micros FROM ledger WHERE kind = 'deduct'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        recorded.len(),
        seen.charges.len(),
        "every acknowledged charge recorded once, nothing else"
    );
    for (record_id, user, free, balance) in recorded {
        assert_eq!(
            seen.charges.get(&record_id),
            Some(&Acknowledged {
                user,
                free,
                balance
            })
        );
    }
    assert!(
        seen.replays > 0 && seen.refused_reuses > 0,
        "the mix exercised replays and refused reuse"
    );
    app.cleanup().await;
}
