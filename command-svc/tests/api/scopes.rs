//! Who may call what: a token per caller, each with its scopes.

use shared::proto::v1 as pb;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::*;

#[tokio::test]
async fn the_gateway_may_not_credit_or_adjust() {
    let app = spawn_app().await;
    let user = new_user("scoped");
    let mut gateway = app.gateway().await;
    let before = fingerprint(&app.db).await;

    let callback = gateway
        .recharge_callback(paid("RO1", "t1", CNY))
        .await
        .unwrap_err();
    let adjustment = gateway
        .adjust_balance(adjust(&user, CNY, "a1"))
        .await
        .unwrap_err();
    let order = gateway
        .create_recharge_order(new_order(&user, CNY))
        .await
        .unwrap_err();
    for denied in [callback, adjustment, order] {
        assert_eq!(
            (denied.code(), reason(&denied)),
            (Code::PermissionDenied, "SCOPE".to_owned())
        );
    }
    assert_eq!(fingerprint(&app.db).await, before);
    app.cleanup().await;
}

#[tokio::test]
async fn each_caller_reaches_only_its_own_methods() {
    let app = spawn_app().await;
    let user = new_user("scopes");
    let denied = |result: Result<(), tonic::Status>| matches!(result, Err(status) if status.code() == Code::PermissionDenied);

    let mut orders = app.orders().await;
    assert!(
        orders
            .get_account(pb::GetAccountRequest {
                user_id: user.clone()
            })
            .await
            .is_ok()
    );
    assert!(denied(
        orders.deduct_quota(deduct(&user, 1, "r")).await.map(drop)
    ));
    assert!(denied(
        orders
            .recharge_callback(paid("RO1", "t", 1))
            .await
            .map(drop)
    ));

    let mut payment = app.payment().await;
    assert!(denied(
        payment
            .get_account(pb::GetAccountRequest {
                user_id: user.clone()
            })
            .await
            .map(drop)
    ));
    assert!(denied(
        payment
            .check_quota(pb::CheckQuotaRequest {
                user_id: user.clone(),
                amount_micros: 1,
                ..Default::default()
            })
            .await
            .map(drop)
    ));
    assert!(denied(
        payment
            .adjust_balance(adjust(&user, 1, "a"))
            .await
            .map(drop)
    ));
    let plan = pb::SetFreeQuotaPlanRequest {
        user_id: user.clone(),
        monthly_free_micros: CNY,
        actor: "someone".into(),
    };
    assert!(denied(
        payment.set_free_quota_plan(plan.clone()).await.map(drop)
    ));
    assert!(denied(
        orders.set_free_quota_plan(plan.clone()).await.map(drop)
    ));

    // Operators (admin) may do everything.
    let mut ops = app.ops().await;
    assert!(
        ops.adjust_balance(adjust(&user, CNY, "grant"))
            .await
            .is_ok()
    );
    assert!(
        ops.deduct_quota(deduct(&user, 1, "ops-charge"))
            .await
            .is_ok()
    );
    assert!(
        ops.create_recharge_order(new_order(&user, CNY))
            .await
            .is_ok()
    );
    assert_invariants(&app.db, &user).await;
    app.cleanup().await;
}

#[tokio::test]
async fn calls_without_a_known_token_are_unauthenticated() {
    let app = spawn_app().await;
    let user = new_user("anon");
    let mut anonymous = app.anonymous().await;
    let mut stranger = app.client("not-a-configured-token").await;
    let mut wrong_scheme = app
        .client_with(Bearer(Some("Basic dev-gateway-token".parse().unwrap())))
        .await;
    for client in [&mut anonymous, &mut stranger, &mut wrong_scheme] {
        let refused = client
            .deduct_quota(deduct(&user, 1, "r"))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::Unauthenticated, "UNAUTHENTICATED".to_owned())
        );
        let refused = client
            .get_account(pb::GetAccountRequest {
                user_id: user.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    assert_eq!(ledger_count(&app, &user).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn health_answers_without_a_token() {
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status, ServingStatus::Serving as i32);
    let billing = HealthCheckRequest {
        service: "billing.v1.BillingCommandService".into(),
    };
    assert_eq!(
        health.check(billing).await.unwrap().into_inner().status,
        ServingStatus::Serving as i32
    );
    app.cleanup().await;
}

#[tokio::test]
async fn reflection_lists_the_billing_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("a list of services");
    };
    let names: Vec<_> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"billing.v1.BillingCommandService".to_owned()),
        "{names:?}"
    );
    app.cleanup().await;
}
