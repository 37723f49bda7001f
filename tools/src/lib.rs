//! What the programs of this crate share: clients of a running billing stack, configured from
//! the same `configs/config.yaml` as the services (command-svc over gRPC with a caller's token,
//! REST tokens, JetStream with the streams in place), the percentiles of their reports, and the
//! CPU time processes spend during a run (`cpu_time`).
//!
//! The programs, in `src/bin/`:
//! - `billingctl`: the operators' command line (its read-model work is the billing-ops crate).
//! - `loadgen`: the hot-path benchmark (`make bench`).
//! - `projection-lag`: the time from a charge's reply until REST shows its version.
//! - `reset-bench`: the monthly reset at scale.

pub mod cpu_time;

use std::{str::FromStr, time::Duration};

use shared::{
    bus::BusNames, config::Settings,
    proto::v1::billing_command_service_client::BillingCommandServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Adds a caller's bearer token to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type CommandClient = BillingCommandServiceClient<InterceptedService<Channel, Bearer>>;

/// A gRPC client of command-svc at `endpoint` (e.g. `http://127.0.0.1:50051`) for `token`.
pub async fn command_client(endpoint: &str, token: &str) -> anyhow::Result<CommandClient> {
    let channel = Endpoint::from_str(endpoint)?
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let bearer = Bearer(MetadataValue::from_str(&format!("Bearer {token}"))?);
    Ok(BillingCommandServiceClient::with_interceptor(
        channel, bearer,
    ))
}

/// The token of the configured caller named `name`.
pub fn caller_token(settings: &Settings, name: &str) -> anyhow::Result<String> {
    settings
        .auth
        .callers
        .iter()
        .find(|caller| caller.name == name)
        .map(|caller| caller.token.expose().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no caller named {name:?} in auth.callers"))
}

/// A REST token for `user`, signed with the configured secret, valid for `valid_for`.
pub fn user_token(
    settings: &Settings,
    user: &str,
    valid_for: chrono::Duration,
) -> anyhow::Result<String> {
    let claims =
        serde_json::json!({ "sub": user, "exp": (chrono::Utc::now() + valid_for).timestamp() });
    let key = jsonwebtoken::EncodingKey::from_secret(settings.auth.jwt_secret.expose().as_bytes());
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

/// JetStream on the configured NATS, with the service's streams in place.
pub async fn jetstream(
    settings: &Settings,
    names: &BusNames,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let js = async_nats::jetstream::new(shared::bus::connect(&settings.nats).await?);
    shared::bus::ensure_streams(&js, names, &settings.nats).await?;
    Ok(js)
}

/// `host:port` as an `http://` URL.
pub fn http_url(addr: &str) -> String {
    if addr.starts_with("http") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// The percentile `p` (0..=100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
