//! `BODY_READ_TIMEOUT_SECS`: a request's body must arrive in full within this time of its
//! head. The time counts from the head, not between chunks: a client trickling one byte a
//! second would otherwise hold its request (and its database connection, once a handler has
//! one) until REQUEST_TIMEOUT_SECS answered a misleading 503. A late body is answered 408,
//! in our error shape, by the extractor that was reading it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a body gives once its time is over; extractors find it in their rejection's
/// source chain ([`crate::json`]).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within BODY_READ_TIMEOUT_SECS")]
pub struct BodyTimedOut;

/// Middleware: gives the request's body its deadline.
pub async fn limit_body_time(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let deadline = Instant::now() + limit;
    let request = request.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        })
    });
    next.run(request).await
}

struct DeadlineBody {
    inner: Body,
    timer: Pin<Box<Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
