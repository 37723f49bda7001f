//! Span export to an OpenTelemetry collector over OTLP/gRPC (cargo feature `otel`), and the link
//! between a request's span and the trace context its events carry.

use std::{
    future::Future,
    pin::Pin,
    task::{Context as Poller, Poll},
    time::Duration,
};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{ExporterBuildError, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tokio::runtime::Handle;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::trace::TraceContext;

/// How long one export to the collector may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporting tracer provider, while spans are exported.
#[derive(Default)]
pub struct SpanExport(Option<SdkTracerProvider>);

impl SpanExport {
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Sends the spans still buffered and stops exporting. The SDK blocks while it flushes, so
    /// that happens off the runtime's workers.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// A tracer provider exporting in batches to `endpoint`, and the layer that turns `tracing`
/// spans into its spans. Must run inside the service's Tokio runtime.
pub fn exporting<S>(
    endpoint: &str,
    service: &'static str,
) -> Result<(SpanExport, impl tracing_subscriber::Layer<S>), ExporterBuildError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let exporter = OnRuntime {
        inner: exporter,
        runtime: Handle::current(),
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    Ok((SpanExport(Some(provider)), layer))
}

/// Makes `span` a child of `incoming` (a caller's span, in another process) and returns the
/// span's own context, for the events written under it; `None` when spans are not exported.
pub fn attach(span: &tracing::Span, incoming: Option<TraceContext>) -> Option<TraceContext> {
    if let Some(parent) = incoming {
        let flags = if parent.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id()),
            SpanId::from_bytes(parent.span_id()),
            flags,
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let own = span.context().span().span_context().clone();
    own.is_valid().then(|| {
        TraceContext::from_parts(
            own.trace_id().to_bytes(),
            own.span_id().to_bytes(),
            own.is_sampled(),
        )
    })
}

/// The SDK exports from a thread of its own, while the gRPC client needs the Tokio reactor:
/// every export is polled inside the service's runtime.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: Handle,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let runtime = self.runtime.clone();
        let export = {
            let _inside = runtime.enter();
            Box::pin(self.inner.export(batch))
        };
        InRuntime { runtime, export }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _inside = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

struct InRuntime<F> {
    runtime: Handle,
    export: Pin<Box<F>>,
}

impl<F: Future> Future for InRuntime<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Poller<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _inside = this.runtime.enter();
        this.export.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Debug, Default)]
    struct Collected(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collected {
        fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
            self.0.lock().unwrap().extend(batch);
            std::future::ready(Ok(()))
        }
    }

    #[test]
    fn a_request_s_span_continues_the_caller_s_trace_and_its_events_name_that_span() {
        let collected = Collected::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(collected.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let caller =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let carried = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("grpc", trace_id = tracing::field::Empty);
            let carried = crate::trace::attach(&span, Some(caller));
            drop(span);
            carried
        });
        let spans = collected.0.lock().unwrap();
        assert_eq!(spans.len(), 1);
        let exported = &spans[0];
        assert_eq!(
            exported.span_context.trace_id().to_bytes(),
            caller.trace_id()
        );
        assert_eq!(exported.parent_span_id.to_bytes(), caller.span_id());
        // The events carry the exported span as their parent.
        assert_eq!(carried.trace_id(), caller.trace_id());
        assert_eq!(
            carried.span_id(),
            exported.span_context.span_id().to_bytes()
        );
    }

    #[test]
    fn without_an_exporting_subscriber_the_trace_continues_all_the_same() {
        let caller =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let span = tracing::info_span!("grpc", trace_id = tracing::field::Empty);
        let carried = crate::trace::attach(&span, Some(caller));
        assert_eq!(carried.trace_id(), caller.trace_id());
        assert_ne!(carried.span_id(), caller.span_id());
    }
}
