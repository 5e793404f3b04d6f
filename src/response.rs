//! Response bodies and the one shape every refusal takes: `{"error", "detail"}`.
//!
//! The refusals themselves ([`ApiError`]) are declared in [`crate::refusal`], which knows no
//! body type: the modules that decide (limits, auth, publish, head) depend on that alone.

use crate::hub::Subscription;
pub use crate::refusal::ApiError;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use std::pin::Pin;
use std::task::{Context, Poll};

/// The body of every response ssegate sends: nothing, a buffer, the upstream's body
/// streamed through, or an SSE stream.
pub enum Body {
    /// No body.
    Empty,
    /// A complete body.
    Full(Option<Bytes>),
    /// The upstream's body, streamed as it arrives.
    Incoming(Incoming),
    /// An event stream.
    Stream(Box<EventBody>),
    /// Another body, with something released when it ends (a proxied request's place
    /// under its address's in-flight cap).
    Guarded(Box<GuardedBody>),
    /// Another body, watched by a [`Tap`] that sees its data and is dropped with it.
    Tapped(Box<Body>, Box<dyn Tap>),
    /// Frames from another source (the dashboard's feed), written as they come.
    Frames(Box<dyn FrameSource>),
}

/// A source of body frames that are written as they come; `Ready(None)` ends the body.
pub trait FrameSource: Send {
    /// The next frame.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>>;
}

/// A body and what it holds until it is dropped.
pub struct GuardedBody {
    /// The body sent.
    pub body: Body,
    /// Dropped with the body.
    pub guard: Box<dyn Send + Sync>,
}

/// Sees the data of a [`Body::Tapped`] as it is sent, and is dropped with the body (once
/// it has been sent, or the client has gone).
pub trait Tap: Send + Sync {
    /// A piece of the body, as it goes out.
    fn data(&mut self, chunk: &[u8]);

    /// What follows is the body as sent on the wire with chunked framing (a relay that
    /// passes the app's bytes through), not its data.
    fn chunked(&mut self) {}
}

/// An SSE stream as a response body, with whatever must be released when it ends
/// (connection gauges, per-IP slots) held in `guard`.
pub struct EventBody {
    /// The subscription the frames come from.
    pub subscription: Subscription,
    /// Dropped with the body.
    pub guard: Box<dyn Send + Sync>,
}

/// Never at its end until the subscription ends, of no known size (the trait's defaults).
impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.get_mut()
            .subscription
            .poll_chunk(cx)
            .map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// A response body as hyper keeps it while sending it ([`Body::into_sending`]).
pub type Sending = http_body_util::Either<EventBody, Body>;

impl Body {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    /// The body with an event stream's state out of its box, anything else as it is.
    /// hyper keeps an HTTP/2 stream's body in the stream's future for as long as the stream
    /// is open, so an event stream there needs no allocation of its own (the box's 112
    /// bytes), and takes no more room than any other body.
    pub fn into_sending(self) -> Sending {
        match self {
            Self::Stream(events) => Sending::Left(*events),
            other => Sending::Right(other),
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Incoming(b) => Pin::new(b).poll_frame(cx),
            Self::Stream(s) => Pin::new(s.as_mut()).poll_frame(cx),
            Self::Tapped(b, tap) => {
                let polled = Pin::new(b.as_mut()).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    tap.data(data);
                }
                polled
            }
            Self::Guarded(g) => Pin::new(&mut g.body).poll_frame(cx),
            Self::Frames(s) => s.poll_frame(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::Incoming(b) => b.is_end_stream(),
            Self::Stream(s) => s.is_end_stream(),
            Self::Frames(_) => false,
            Self::Tapped(b, _) => b.is_end_stream(),
            Self::Guarded(g) => g.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Incoming(b) => b.size_hint(),
            Self::Stream(s) => s.size_hint(),
            Self::Frames(_) => SizeHint::default(),
            Self::Tapped(b, _) => b.size_hint(),
            Self::Guarded(g) => g.body.size_hint(),
        }
    }
}

/// The JSON error response for `err`.
pub fn error_response(err: &dyn ApiError) -> Response<Body> {
    let mut resp = json_error(err.status(), err.code(), &err.to_string());
    if let Some(secs) = err.retry_after() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// `{"error": code, "detail": detail}` with `status`.
pub fn json_error(status: StatusCode, code: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "detail": detail }).to_string();
    json(status, body)
}

/// A JSON response.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response with an empty body.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Body::Empty);
    *resp.status_mut() = status;
    resp
}
