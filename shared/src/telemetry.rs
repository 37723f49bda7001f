//! Logging, metrics and request telemetry, set up once per process. `RUST_LOG` overrides the
//! configured filter.
//!
//! Every request runs in a span carrying its request id (the caller's `x-request-id`, or a new
//! one, echoed in the response) and its trace id, so each log line written while handling it
//! names both; JSON logs put them in the line's `span` object.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderValue, header::HeaderName},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing_subscriber::{EnvFilter, fmt};

use crate::{
    config::{LogFormat, TelemetrySettings},
    trace::{self, TraceContext},
};

/// The header a caller may name its request with; echoed in the response.
pub const REQUEST_ID: &str = "x-request-id";

/// Upper bounds (seconds) of every latency histogram's buckets: from half a millisecond, where a
/// quota check sits, to five minutes, past which a projection lag is an outage.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Installs the global subscriber. A second call (several apps in one test process) is a no-op.
pub fn init(settings: &TelemetrySettings) {
    install(settings, None);
}

/// As [`init`], for a service: with the `otel` feature and `telemetry.otlp_endpoint` set, spans
/// are also exported to that OpenTelemetry collector under `service`'s name. Keep the returned
/// guard until the service has stopped; [`SpanExport::shutdown`] sends the last spans.
pub fn init_service(settings: &TelemetrySettings, service: &'static str) -> SpanExport {
    install(settings, Some(service))
}

fn install(settings: &TelemetrySettings, service: Option<&'static str>) -> SpanExport {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = match settings.format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_target(true)
            .boxed(),
        LogFormat::Pretty => fmt::layer().compact().with_target(true).boxed(),
    };
    let endpoint = settings.otlp_endpoint.trim();
    let (export, spans) = match service {
        Some(service) if !endpoint.is_empty() => export_layer(endpoint, service),
        _ => (SpanExport::default(), None),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init()
        .is_ok();
    if installed && service.is_some() && !endpoint.is_empty() && !export.is_on() {
        tracing::warn!(
            endpoint,
            "telemetry.otlp_endpoint is set but this build exports no spans (cargo feature `otel`)"
        );
    }
    export
}

#[cfg(feature = "otel")]
pub use crate::otel::SpanExport;

#[cfg(feature = "otel")]
fn export_layer<S>(
    endpoint: &str,
    service: &'static str,
) -> (SpanExport, Option<impl tracing_subscriber::Layer<S>>)
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    match crate::otel::exporting(endpoint, service) {
        Ok((export, layer)) => (export, Some(layer)),
        Err(error) => {
            eprintln!("spans are not exported: cannot set up the OTLP exporter: {error}");
            (SpanExport::default(), None)
        }
    }
}

/// Without the `otel` feature no span leaves the process.
#[cfg(not(feature = "otel"))]
#[derive(Default)]
pub struct SpanExport {
    _none: (),
}

#[cfg(not(feature = "otel"))]
impl SpanExport {
    pub fn is_on(&self) -> bool {
        false
    }

    pub async fn shutdown(self) {}
}

#[cfg(not(feature = "otel"))]
fn export_layer(
    _endpoint: &str,
    _service: &'static str,
) -> (SpanExport, Option<tracing_subscriber::layer::Identity>) {
    (SpanExport::default(), None)
}

/// The process's metrics recorder, installed on first use; `/metrics` renders it in the
/// Prometheus text format. Several services in one test process share it.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); then this one stays local.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The request id a request is known by: the caller's, when it is a short printable token, else
/// a new one.
pub fn request_id(header: Option<&HeaderValue>) -> String {
    header
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(trace::random_id, str::to_owned)
}

/// Middleware of every HTTP router: the request's span (request id, trace id, route), its trace
/// context, the request id echoed in the response, and the request counted and timed by route
/// (`billing_http_requests_total`, `billing_http_request_duration_seconds`). Routes are the
/// router's patterns, never raw paths, so hostile URLs cannot multiply the series.
pub async fn observe_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let method = match request.method().as_str() {
        known @ ("GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS") => known,
        _ => "other",
    }
    .to_owned();
    let request_id = request_id(request.headers().get(REQUEST_ID));
    let incoming = TraceContext::from_headers(request.headers());
    let span = tracing::info_span!(
        "http",
        %method,
        %route,
        %request_id,
        trace_id = tracing::field::Empty,
    );
    let context = trace::attach(&span, incoming);
    let mut response = trace::scope(context, next.run(request).instrument(span.clone())).await;
    let status = response.status();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            elapsed_us = elapsed.as_micros() as u64,
            "request finished"
        )
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), value);
    }
    metrics::counter!(
        "billing_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    metrics::histogram!(
        "billing_http_request_duration_seconds",
        "method" => method,
        "route" => route,
    )
    .record(elapsed.as_secs_f64());
    response
}
