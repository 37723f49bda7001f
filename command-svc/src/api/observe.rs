//! Every gRPC call, whatever its service: its span (method, request id, trace id; the request id
//! is echoed in the response metadata), its trace
//! context for the events it writes, and its count and latency by method and status code
//! (`billing_grpc_requests_total`, `billing_grpc_request_duration_seconds`).
//!
//! The method label is the RPC's path when the protos (or gRPC health and reflection) declare it,
//! and `other` for anything else, so hostile paths cannot multiply the series.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use shared::{
    telemetry::{REQUEST_ID, request_id},
    trace::{self, TraceContext},
};
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;

/// Wraps the gRPC server's routes.
#[derive(Clone, Default)]
pub struct ObserveLayer;

impl ObserveLayer {
    pub fn new() -> Self {
        ObserveLayer
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
}

/// The method label of a path: the path of a served RPC, else `other`. The paths are made once
/// per process and live as long as it, so a label costs no allocation per call.
fn method_label(path: &str) -> &'static str {
    static METHODS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        let declared = shared::proto::method_paths()
            .into_iter()
            .map(|path| &*Box::leak(path.into_boxed_str()));
        declared
            .chain([
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ])
            .collect()
    });
    methods.get(path).copied().unwrap_or("other")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = request.uri().path();
        let method = method_label(path);
        let request_id = request_id(request.headers().get(REQUEST_ID));
        let incoming = TraceContext::from_headers(request.headers());
        let span = tracing::info_span!(
            "grpc",
            %method,
            %request_id,
            trace_id = tracing::field::Empty,
        );
        let context = trace::attach(&span, incoming);
        // The clone that was made ready serves this call; the fresh one waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // Counted as CANCELLED if the call is dropped unanswered (its caller went away or
            // its deadline passed).
            let mut open = OpenCall {
                method: Some(method),
                started,
            };
            let mut result =
                trace::scope(context, inner.call(request).instrument(span.clone())).await;
            if let (Ok(response), Ok(value)) =
                (&mut result, http::HeaderValue::from_str(&request_id))
            {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            let code = match &result {
                Ok(response) => status_code(response),
                Err(_) => Code::Unknown,
            };
            span.in_scope(|| {
                tracing::debug!(code = ?code, elapsed_us = started.elapsed().as_micros() as u64, "call finished")
            });
            open.finish(code);
            result
        })
    }
}

/// A call being served, counted and timed once it ends, however it ends.
struct OpenCall {
    method: Option<&'static str>,
    started: Instant,
}

impl OpenCall {
    fn finish(&mut self, code: Code) {
        let Some(method) = self.method.take() else {
            return;
        };
        metrics::counter!(
            "billing_grpc_requests_total",
            "method" => method,
            "code" => code_name(code),
        )
        .increment(1);
        metrics::histogram!("billing_grpc_request_duration_seconds", "method" => method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// A refused call carries its status in the response headers (a trailers-only response); an
/// answered one carries OK in the trailers, after the message.
fn status_code<R>(response: &http::Response<R>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// The code's name as gRPC spells it (`INVALID_ARGUMENT`).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_from_the_headers_of_a_refusal_and_is_ok_otherwise() {
        let refused = http::Response::builder()
            .header("grpc-status", "3")
            .body(())
            .unwrap();
        assert_eq!(status_code(&refused), Code::InvalidArgument);
        assert_eq!(status_code(&http::Response::new(())), Code::Ok);
        assert_eq!(code_name(Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
    }
}
