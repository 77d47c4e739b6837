//! `limits.grpc.max_open_streams`: one cap on open gRPC streams across every gRPC listener and
//! connection.
//!
//! An open stream costs memory (HTTP/2 stream state, the call's buffers, its future) from its
//! headers on, long before a Check reaches the handler and `limits.max_in_flight`: header-only
//! streams held until `request_timeout` are invisible to that cap. This layer sits in front of
//! the routes, so it sees a stream as soon as hyper hands it over (headers received, message not
//! read). A stream takes a slot there and keeps it until its response body is done or dropped
//! (a reset, a timeout, a closed connection); a streaming response (health `Watch`) holds its
//! slot while it stays open. With every slot taken, a stream is answered at once without reading
//! its message: a Check with the same in-band 503 `overloaded` as load shedding (a successful
//! RPC, so Envoy returns that 503 rather than its `status_on_error`), anything else with
//! `RESOURCE_EXHAUSTED`. Refusing is cheap and frees the stream at once; nothing is queued.
//!
//! The in-band answer carries a DATA frame, which HTTP/2 flow control holds back until the
//! client grants window: a client that never does keeps each answered stream open (no slot,
//! but still HTTP/2 stream state and a task), which would let it grow memory past the cap. So
//! at most a quarter of the cap's worth of in-band refusals may be unsent at once; past that a
//! Check gets the trailers-only `RESOURCE_EXHAUSTED` too (HEADERS frames are not
//! flow-controlled, so that stream ends at once). Envoy reads its answers, so it sees the
//! in-band 503.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::Frame;
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tower::{Layer, Service};

use crate::check;
use crate::config::SubjectLog;
use crate::metrics::{CheckMetrics, StreamMetrics};
use crate::response::{self, ResponseOptions};

/// The gRPC path of the ext_authz Check method.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The layer: one per process, cloned into every listener's server so all share its slots.
#[derive(Clone)]
pub(super) struct StreamCap {
    slots: Arc<Semaphore>,
    /// In-band refusals not yet sent (see the module docs).
    unsent: Arc<Semaphore>,
    refusal: Arc<Refusal>,
}

/// What a refused stream needs.
struct Refusal {
    /// The framed gRPC message of the Check refusal: it has no request id (the message is never
    /// read) and is otherwise always the same, so it is rendered once.
    check_message: Bytes,
    streams: StreamMetrics,
    checks: CheckMetrics,
    log_subject: SubjectLog,
}

impl StreamCap {
    pub(super) fn new(
        max_open_streams: usize,
        opts: &ResponseOptions,
        streams: StreamMetrics,
        checks: CheckMetrics,
        log_subject: SubjectLog,
    ) -> Self {
        let message = response::render(&check::overloaded(""), opts).encode_to_vec();
        // gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, message.
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        Self {
            slots: Arc::new(Semaphore::new(max_open_streams)),
            unsent: Arc::new(Semaphore::new((max_open_streams / 4).max(1))),
            refusal: Arc::new(Refusal { check_message: Bytes::from(framed), streams, checks, log_subject }),
        }
    }

    /// The answer to a stream over the cap, built without touching its body.
    fn refuse(&self, path: &str) -> http::Response<CappedBody> {
        let start = Instant::now();
        let r = &self.refusal;
        let check = path == CHECK_PATH;
        let unsent = if check { self.unsent.clone().try_acquire_owned().ok() } else { None };
        let Some(unsent) = unsent else {
            r.streams.refused(check, false);
            return tonic::Status::resource_exhausted("too many open gRPC streams (limits.grpc.max_open_streams)")
                .into_http();
        };
        r.streams.refused(true, true);
        // Counted and logged like a shed check, with what is known without the message.
        let decision = check::overloaded("");
        let elapsed = start.elapsed();
        r.checks.record(false, decision.reason(), elapsed.as_secs_f64());
        super::decision_log::log_decision(
            decision,
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            r.log_subject,
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let mut resp = http::Response::new(CappedBody::Refused {
            message: Some(r.check_message.clone()),
            trailers: Some(trailers),
            _unsent: Some(unsent),
        });
        resp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        resp
    }
}

impl<S> Layer<S> for StreamCap {
    type Service = Capped<S>;

    fn layer(&self, inner: S) -> Capped<S> {
        Capped { inner, cap: self.clone() }
    }
}

/// The routes behind the cap.
#[derive(Clone)]
pub(super) struct Capped<S> {
    inner: S,
    cap: StreamCap,
}

impl<S> Service<http::Request<Body>> for Capped<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<CappedBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        match self.cap.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let slot = Slot::new(permit, &self.cap.refusal.streams);
                let call = self.inner.call(req);
                Box::pin(async move {
                    let resp = call.await?;
                    Ok(resp.map(|inner| CappedBody::Held { inner, _slot: slot }))
                })
            }
            // `req` (and its unread body) is dropped here.
            Err(_) => Box::pin(futures::future::ready(Ok(self.cap.refuse(req.uri().path())))),
        }
    }
}

/// One taken slot, given back (and the open-streams gauge lowered) when dropped.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    streams: StreamMetrics,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, streams: &StreamMetrics) -> Self {
        streams.opened();
        Self { _permit: permit, streams: streams.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.streams.closed();
    }
}

/// A response body: the call's own, holding the stream's slot until it is dropped, or a refusal.
pub(super) enum CappedBody {
    Held {
        inner: Body,
        _slot: Slot,
    },
    /// A gRPC message (if any) then trailers (if any); both `None` for a trailers-only answer.
    /// An in-band answer holds one of the unsent-refusal permits until it is dropped.
    Refused {
        message: Option<Bytes>,
        trailers: Option<HeaderMap>,
        _unsent: Option<OwnedSemaphorePermit>,
    },
}

impl Default for CappedBody {
    fn default() -> Self {
        Self::Refused { message: None, trailers: None, _unsent: None }
    }
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match self.get_mut() {
            Self::Held { inner, .. } => Pin::new(inner).poll_frame(cx),
            Self::Refused { message, trailers, .. } => Poll::Ready(
                message.take().map(|m| Ok(Frame::data(m))).or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Held { inner, .. } => inner.is_end_stream(),
            Self::Refused { message, trailers, .. } => message.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Held { inner, .. } => inner.size_hint(),
            Self::Refused { message, .. } => {
                http_body::SizeHint::with_exact(message.as_ref().map_or(0, |m| m.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Body as _;

    use super::*;
    use crate::proto::auth::CheckResponse;

    /// A routes stand-in whose calls never complete (a stream whose message never arrives).
    #[derive(Clone)]
    struct Parked;

    impl Service<http::Request<Body>> for Parked {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            Box::pin(futures::future::pending())
        }
    }

    /// Every frame of a body: its data, concatenated, and its trailers.
    async fn collect(mut body: CappedBody) -> (Vec<u8>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            match frame.expect("frame").into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::post(path).body(Body::empty()).expect("request")
    }

    fn cap(n: usize, streams: &StreamMetrics) -> StreamCap {
        let mut registry = prometheus_client::registry::Registry::default();
        let opts = crate::server::response_options(&crate::config::HeaderNames::default());
        StreamCap::new(n, &opts, streams.clone(), CheckMetrics::register(&mut registry), SubjectLog::default())
    }

    /// Over the cap a Check is answered at once with a successful RPC carrying the 503
    /// `overloaded` deny; another method gets RESOURCE_EXHAUSTED. Dropping held calls (a reset
    /// stream) gives their slots back.
    #[tokio::test]
    async fn streams_over_the_cap_are_refused_at_once_and_slots_come_back() {
        let streams = StreamMetrics::unregistered();
        let mut svc = cap(2, &streams).layer(Parked);
        let held: Vec<_> = (0..2).map(|_| svc.call(request(CHECK_PATH))).collect();
        assert_eq!(streams.open_now(), 2);

        let refused = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert_eq!(refused.status(), http::StatusCode::OK);
        assert_eq!(refused.headers()["content-type"], "application/grpc");
        let (framed, trailers) = collect(refused.into_body()).await;
        assert_eq!(trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes()), Some(&b"0"[..]));
        assert_eq!(framed[0], 0, "uncompressed");
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!(framed.len(), 5 + len);
        let msg = CheckResponse::decode(&framed[5..]).expect("a CheckResponse");
        assert_eq!(msg.status.as_ref().map(|s| s.code), Some(tonic::Code::Unavailable as i32));
        let Some(crate::proto::auth::check_response::HttpResponse::DeniedResponse(d)) = &msg.http_response else {
            panic!("not a deny: {msg:?}")
        };
        assert_eq!(d.status.as_ref().map(|s| s.code), Some(503));
        assert!(d.body.contains(r#""error":"overloaded""#), "{d:?}");
        assert!(d.headers.iter().filter_map(|h| h.header.as_ref()).any(|h| h.key == "retry-after" && h.value == "1"));

        let health = svc.call(request("/grpc.health.v1.Health/Check")).await.expect("infallible");
        assert_eq!(health.headers()["grpc-status"], (tonic::Code::ResourceExhausted as i32).to_string().as_str());
        assert!(health.body().is_end_stream(), "trailers-only");
        assert_eq!(streams.refused_total("check", true), 1);
        assert_eq!(streams.refused_total("other", false), 1);

        // The held calls end (reset, timeout): their slots are free again.
        drop(held);
        assert_eq!(streams.open_now(), 0);
        let again: Vec<_> = (0..2).map(|_| svc.call(request(CHECK_PATH))).collect();
        assert_eq!(streams.open_now(), 2, "both slots taken again, none leaked");
        assert_eq!(streams.refused_total("check", true), 1);
        drop(again);
    }

    /// In-band refusals whose answer is not sent yet (a client that grants no HTTP/2 window) are
    /// bounded: past a quarter of the cap a Check gets the trailers-only RESOURCE_EXHAUSTED,
    /// which flow control cannot hold back; once an answer is gone, in-band refusals resume.
    #[tokio::test]
    async fn unsent_in_band_refusals_are_bounded() {
        let streams = StreamMetrics::unregistered();
        let mut svc = cap(4, &streams).layer(Parked);
        let _held: Vec<_> = (0..4).map(|_| svc.call(request(CHECK_PATH))).collect();
        let unsent = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert!(matches!(unsent.body(), CappedBody::Refused { message: Some(_), .. }), "in band");
        let bare = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert_eq!(bare.headers()["grpc-status"], (tonic::Code::ResourceExhausted as i32).to_string().as_str());
        assert!(bare.body().is_end_stream(), "trailers-only");
        assert_eq!(streams.refused_total("check", false), 1);
        drop(unsent);
        let again = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert!(matches!(again.body(), CappedBody::Refused { message: Some(_), .. }), "in band again");
        assert_eq!(streams.refused_total("check", true), 2);
    }

    /// A call that completed keeps its slot while its response body is alive (a streaming
    /// response stays counted), and gives it back when the body is dropped.
    #[tokio::test]
    async fn the_slot_is_held_until_the_response_body_is_done() {
        #[derive(Clone)]
        struct Answers;
        impl Service<http::Request<Body>> for Answers {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = futures::future::Ready<Result<http::Response<Body>, Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<Body>) -> Self::Future {
                futures::future::ready(Ok(http::Response::new(Body::empty())))
            }
        }
        let streams = StreamMetrics::unregistered();
        let mut svc = cap(1, &streams).layer(Answers);
        let first = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert!(matches!(first.body(), CappedBody::Held { .. }));
        let second = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert!(matches!(second.body(), CappedBody::Refused { .. }), "the first body still holds the slot");
        drop(first);
        let third = svc.call(request(CHECK_PATH)).await.expect("infallible");
        assert!(matches!(third.body(), CappedBody::Held { .. }));
    }
}
