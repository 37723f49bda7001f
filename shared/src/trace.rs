//! W3C trace context (`traceparent`): the trace a command belongs to, carried from the caller's
//! request through the outbox row and the event's header to the projection, so that the logs
//! (and, with the `otel` feature, the exported spans) of one call share one trace id.
//!
//! A request that arrives with a valid `traceparent` continues its trace under a new span id; one
//! without starts a new trace. The context of the request being handled is task-local
//! ([`scope`], [`current`]): code that writes an event reads it there.

use std::{fmt, future::Future};

/// The header (and gRPC metadata key) that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// A trace id, a span id and whether the caller samples the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    sampled: bool,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// Reads a `traceparent` value: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`
    /// (lowercase; a later version may append fields). Invalid values, all-zero ids and the
    /// forbidden version `ff` give `None`: the request then starts a trace of its own.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let version = lower_hex::<1>(version)?[0];
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let trace_id = lower_hex::<16>(trace)?;
        let span_id = lower_hex::<8>(span)?;
        let flags = lower_hex::<1>(flags)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, sampled.
    pub fn new_root() -> TraceContext {
        let mut trace_id = [0; 16];
        trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
        trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// The context a request continues: the caller's trace under a new span id, or a new trace.
    pub fn continue_from(header: Option<&str>) -> TraceContext {
        header
            .and_then(TraceContext::parse)
            .map_or_else(TraceContext::new_root, |parent| parent.child())
    }

    /// The caller's context named by a `traceparent` header value, if valid.
    pub fn incoming(header: Option<&str>) -> Option<TraceContext> {
        header.and_then(TraceContext::parse)
    }

    /// The caller's context in a request's headers (HTTP, or gRPC metadata), if valid.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
        TraceContext::incoming(
            headers
                .get(TRACEPARENT)
                .and_then(|value| value.to_str().ok()),
        )
    }

    /// The same trace under a new span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    pub fn from_parts(trace_id: [u8; 16], span_id: [u8; 8], sampled: bool) -> TraceContext {
        TraceContext {
            trace_id,
            span_id,
            sampled,
        }
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The trace id as 32 lowercase hex digits, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The `traceparent` value naming this context as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// Joins `span` (a request's, or an event's projection) to the trace `incoming` continues, records
/// the trace id in the span's `trace_id` field, and returns the context that the events written
/// under the span carry: with span export (feature `otel`), the exported span's own ids, so the
/// consumer's span becomes its child; otherwise a new span id in the incoming trace, or a new
/// trace when there is none.
pub fn attach(span: &tracing::Span, incoming: Option<TraceContext>) -> TraceContext {
    #[cfg(feature = "otel")]
    if let Some(exported) = crate::otel::attach(span, incoming) {
        span.record("trace_id", exported.trace_id_hex());
        return exported;
    }
    let context = incoming.map_or_else(TraceContext::new_root, |parent| parent.child());
    span.record("trace_id", context.trace_id_hex());
    context
}

/// Runs `work` with `context` as the current trace context.
pub async fn scope<F: Future>(context: TraceContext, work: F) -> F::Output {
    CURRENT.scope(context, work).await
}

/// The trace context of the request this task is handling, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|context| *context).ok()
}

/// The current context as a `traceparent` value, for an outbox row.
pub fn current_traceparent() -> Option<String> {
    current().map(|context| context.traceparent())
}

fn new_span_id() -> [u8; 8] {
    let mut span_id = random_u64().to_be_bytes();
    if span_id == [0; 8] {
        span_id[7] = 1;
    }
    span_id
}

/// 32 random hex digits: a new request id.
pub fn random_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// Ids for traces and requests: unique, not secret. A SplitMix64 sequence per thread, seeded
/// from the system's randomness once, spares every request the system calls of a UUIDv4.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(u64::from_be_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8].try_into().expect("eight bytes"),
        ));
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn new_ids_do_not_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| random_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32));
        let traces: std::collections::HashSet<[u8; 16]> = (0..10_000)
            .map(|_| TraceContext::new_root().trace_id())
            .collect();
        assert_eq!(traces.len(), 10_000);
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(context.sampled());
        assert_eq!(context.traceparent(), EXAMPLE);
    }

    #[test]
    fn invalid_values_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let fresh = TraceContext::continue_from(Some("garbage"));
        assert_ne!(fresh.trace_id(), [0; 16]);
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let context = TraceContext::parse(later).unwrap();
        assert!(!context.sampled());
    }

    #[test]
    fn a_continued_trace_keeps_the_trace_id_under_a_new_span() {
        let parent = TraceContext::parse(EXAMPLE).unwrap();
        let continued = TraceContext::continue_from(Some(EXAMPLE));
        assert_eq!(continued.trace_id(), parent.trace_id());
        assert_ne!(continued.span_id(), parent.span_id());
    }

    #[tokio::test]
    async fn the_current_context_is_the_scope_s() {
        assert_eq!(current(), None);
        let context = TraceContext::new_root();
        let seen = scope(context, async { current_traceparent() }).await;
        assert_eq!(seen, Some(context.traceparent()));
    }
}
