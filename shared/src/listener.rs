//! Every listener of the three services, bounded ("Running safely"): at most `max_connections`
//! open at once (more wait in the kernel's backlog), a connection that moves no byte either way
//! for `idle_timeout` is closed, and its first bytes must come within `header_read_timeout`. HTTP
//! adds hyper's own header timeout (a request's head must be whole within `header_read_timeout`,
//! which also ends an idle keep-alive), a deadline per request (`408 REQUEST_TIMEOUT`) and a body
//! limit (`413 PAYLOAD_TOO_LARGE`). gRPC servers take [`incoming`] and set their own message size,
//! stream and deadline limits from the same settings.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use crate::{
    config::ListenerSettings,
    shutdown::{Stop, Stopper},
};

/// The code of the answer to a request that was not whole and answered in time.
pub const REQUEST_TIMEOUT: &str = "REQUEST_TIMEOUT";

/// The limits of one listener, from [`ListenerSettings`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
}

impl Limits {
    pub fn from_settings(settings: &ListenerSettings) -> Limits {
        Limits {
            max_connections: settings.max_connections.max(1),
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(settings.request_timeout_ms.max(1)),
            max_body_bytes: settings.max_body_bytes,
        }
    }
}

/// A connection that holds one of its listener's places until it is dropped, and fails with
/// `TimedOut` when no byte has moved for the idle timeout, or its first bytes are late.
pub struct Guarded<T> {
    inner: T,
    idle: Duration,
    /// When the connection is given up unless a byte moves first.
    deadline: Pin<Box<Sleep>>,
    /// Until the first byte is read, the deadline is the (shorter) first-bytes one.
    started: bool,
    _place: OwnedSemaphorePermit,
}

impl<T> Guarded<T> {
    fn new(inner: T, limits: &Limits, place: OwnedSemaphorePermit) -> Guarded<T> {
        let first = limits.header_read_timeout.min(limits.idle_timeout);
        Guarded {
            inner,
            idle: limits.idle_timeout,
            deadline: Box::pin(tokio::time::sleep(first)),
            started: false,
            _place: place,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn moved(&mut self) {
        self.started = true;
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Pending unless the deadline has passed; then the connection's end.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let why = if self.started {
                    "the connection was idle too long"
                } else {
                    "the connection's first bytes were late"
                };
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.expired(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(written)) => {
                // Writing is activity, but only reading proves the peer is there at the start.
                if written > 0 && this.started {
                    this.moved();
                }
                Poll::Ready(Ok(written))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.expired(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Takes a place, then waits for the next connection; accept errors (out of descriptors, a
/// connection reset before it was accepted) are handed on, to be logged and passed over.
async fn accept(
    listener: &TcpListener,
    places: &Arc<Semaphore>,
    limits: &Limits,
) -> io::Result<Guarded<TcpStream>> {
    let place = places
        .clone()
        .acquire_owned()
        .await
        .expect("the listener's places are never closed");
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok(Guarded::new(stream, limits, place))
}

/// The accepted connections of `listener`, for a gRPC server's `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold(
        (listener, places, limits),
        |(listener, places, limits)| async move {
            let next = accept(&listener, &places, &limits).await;
            Some((next, (listener, places, limits)))
        },
    )
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets each connection finish the request in hand, and returns once all are closed.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let router = router
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            request_deadline,
        ));
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let (stopper, stop) = Stopper::new();
    tokio::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            () = &mut shutdown => break,
            connection = accept(&listener, &places, &limits) => connection,
        };
        match connection {
            Ok(connection) => {
                let serving = serve_connection(connection, router.clone(), limits, stop.clone());
                tokio::spawn(serving);
            }
            Err(error) => {
                tracing::debug!(%error, "connection not accepted");
                // Out of descriptors: give the ones in use a moment to close.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    stopper.stop();
    // Every connection holds a place: all places back means all connections closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _closed = places.acquire_many(all).await;
    Ok(())
}

async fn serve_connection(
    connection: Guarded<TcpStream>,
    router: Router,
    limits: Limits,
    mut stop: Stop,
) {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let router = router.clone();
        async move {
            use tower::Service;
            let mut router = router;
            router.call(request.map(axum::body::Body::new)).await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    let serving = builder.serve_connection(TokioIo::new(connection), service);
    tokio::pin!(serving);
    tokio::select! {
        result = serving.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended");
            }
            return;
        }
        () = stop.stopped() => serving.as_mut().graceful_shutdown(),
    }
    if let Err(error) = serving.await {
        tracing::debug!(%error, "connection ended while draining");
    }
}

/// A request not answered within the deadline gets `408` and the common JSON error body. The
/// deadline covers the body's arrival and the handler, not a streamed response's body.
async fn request_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("billing_http_request_timeouts_total").increment(1);
            let body = json!({"error": {
                "code": REQUEST_TIMEOUT,
                "message": "the request was not complete and answered in time",
            }});
            (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response()
        }
    }
}
