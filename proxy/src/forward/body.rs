//! A response body that fails instead of hanging when the upstream goes quiet mid-stream, and
//! tells who waits for it how it ended ([`Watch`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::pool::MemberHealth;
use super::upstream::UpstreamIncoming;
use crate::listen::RequestBody;
use crate::rollout::Judged;
use tokio::time::{Instant, Sleep};

/// Wraps an upstream body; if no frame arrives for `idle`, the body ends with an error, which
/// makes hyper abort the client's response (reset stream / close connection) rather than hang.
/// It tells its [`Watch`] how the body ended.
#[derive(Debug)]
pub struct IdleTimeoutBody<B = UpstreamIncoming> {
    inner: B,
    idle: Duration,
    /// Armed the first time the upstream makes us wait (most small bodies never do).
    timer: Option<Pin<Box<Sleep>>>,
    /// Boxed: most answers have one, and the body moves several times on its way out.
    watch: Option<Box<Watch>>,
}

/// Who hears how an upstream answer's body ended. An exchange is judged at its head for a
/// `5xx`; one whose head was fine is judged again at its body's end, since an upstream that
/// answers `200` and breaks off (a reset, a close before its length, a stall past
/// `body_idle_timeout`), or ends a gRPC call with a server's failure in its trailers, is
/// failing its users as surely as one answering `503`.
#[derive(Debug, Default)]
pub struct Watch {
    /// The endpoint whose live outcome waits for the body (see [`MemberHealth::record_live`]):
    /// a body read whole is its success, one broken off its failure towards ejection. A body
    /// given up by its client counts neither way.
    pub endpoint: Option<(Arc<MemberHealth>, routes::Outlier)>,
    /// The exchange probed the endpoint while it was ejected: a body read whole ends the
    /// ejection.
    pub probe: bool,
    /// A rollout's analysis: a broken body is the version's error.
    pub judged: Option<Judged>,
    /// How the client's request body ended, when it streamed through to the upstream: if it
    /// broke first (the client left mid-upload, sent a bad chunk, went quiet), the upstream's
    /// answer breaking is the client's doing, not the endpoint's or the version's.
    pub client_body: Option<Arc<AtomicU8>>,
}

impl Watch {
    /// The body broke off with an error. Returns the error to pass on instead when the
    /// client's own body broke the exchange.
    fn broke(self) -> Option<ClientBodyBroke> {
        if self
            .client_body
            .as_ref()
            .is_some_and(|how| client_body_failed(how.load(Ordering::Relaxed)))
        {
            return Some(ClientBodyBroke);
        }
        self.failed();
        None
    }

    /// The answer failed after its head: the version's error, the endpoint's failure.
    fn failed(self) {
        if let Some(judged) = self.judged {
            judged.broke();
        }
        if let Some((health, outlier)) = self.endpoint {
            health.record_live(false, &outlier);
        }
    }

    /// The body was read whole.
    fn whole(self) {
        match self.endpoint {
            Some((health, _)) if self.probe => health.restore(),
            Some((health, outlier)) => {
                health.record_live(true, &outlier);
            }
            None => {}
        }
    }
}

/// An upstream's answer broke off because the client's request body broke the exchange
/// first: the answer's end is the client's doing.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body broke off the exchange")]
pub struct ClientBodyBroke;

/// The body went quiet for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle timeout")]
pub struct BodyIdleTimeout;

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, idle: Duration) -> IdleTimeoutBody<B> {
        IdleTimeoutBody {
            inner,
            idle,
            timer: None,
            watch: None,
        }
    }

    /// The body of an exchange whose end someone waits for (see [`Watch`]).
    pub fn watched(mut self, watch: Option<Box<Watch>>) -> IdleTimeoutBody<B> {
        self.watch = watch;
        self
    }
}

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let mut poll = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(Instant::now() + this.idle);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdleTimeout) as _))),
                    Poll::Pending => Poll::Pending,
                }
            }
        };
        let whole = match &poll {
            Poll::Ready(None) => true,
            // Trailers whose gRPC status is a server's failure: the call failed, under a 200.
            Poll::Ready(Some(Ok(frame)))
                if this.watch.is_some()
                    && frame
                        .trailers_ref()
                        .is_some_and(crate::respond::grpc_failed) =>
            {
                if let Some(watch) = this.watch.take() {
                    watch.failed();
                }
                false
            }
            // A server may stop polling at the last frame, not at `None`.
            Poll::Ready(Some(Ok(_))) => {
                this.watch.as_ref().is_some_and(|w| w.endpoint.is_some())
                    && this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(client) = this.watch.take().and_then(|w| w.broke()) {
                    poll = Poll::Ready(Some(Err(Box::new(client))));
                }
                false
            }
            Poll::Pending => false,
        };
        if whole && let Some(watch) = this.watch.take() {
            watch.whole();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body on its way upstream; remembers how it ended: whether *it*
/// failed (a malformed chunk, a client gone mid-upload), so the failure is blamed on the
/// client (400), not the upstream (502), and whether it was all read (only then may the
/// upstream connection carry another request).
#[derive(Debug)]
pub struct ClientBody {
    inner: IdleTimeoutBody<RequestBody>,
    ended: Arc<AtomicU8>,
    rate: Option<RateState>,
    /// The route's `max_request_body`, and the bytes read against it.
    limit: Option<(u64, u64)>,
}

/// A floor on the body's average rate: after `grace`, fewer than `bytes_per_sec` × elapsed
/// bytes received fails the body (a client trickling bytes just often enough to beat the idle
/// timeout holds a connection and an upstream exchange for as long as it likes otherwise).
#[derive(Debug, Clone, Copy)]
pub struct MinRate {
    pub bytes_per_sec: u64,
    pub grace: Duration,
}

#[derive(Debug)]
struct RateState {
    floor: MinRate,
    started: Instant,
    received: u64,
}

/// The client's body arrived more slowly than `server.client_body_min_rate`.
#[derive(Debug, thiserror::Error)]
#[error("request body slower than the minimum rate")]
pub struct BodyTooSlow;

/// How the client's body ended: not yet.
pub const CLIENT_BODY_GOING: u8 = 0;
/// It broke the exchange: malformed, or the client went away.
pub const CLIENT_BODY_MALFORMED: u8 = 1;
/// The client went quiet inside its body for longer than `server.client_body_timeout`.
/// Or sent it more slowly than `server.client_body_min_rate`.
pub const CLIENT_BODY_TIMED_OUT: u8 = 2;
/// All of it was read.
pub const CLIENT_BODY_ENDED: u8 = 3;
/// It grew past the route's `max_request_body`.
pub const CLIENT_BODY_TOO_LARGE: u8 = 4;

/// Whether a body that ended `how` broke the exchange (the client is to blame).
pub fn client_body_failed(how: u8) -> bool {
    matches!(
        how,
        CLIENT_BODY_MALFORMED | CLIENT_BODY_TIMED_OUT | CLIENT_BODY_TOO_LARGE
    )
}

/// The client's body grew past the route's `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route's limit")]
pub struct BodyTooLarge;

impl ClientBody {
    pub fn new(
        inner: RequestBody,
        idle: Duration,
        min_rate: Option<MinRate>,
        limit: Option<u64>,
    ) -> ClientBody {
        ClientBody {
            inner: IdleTimeoutBody::new(inner, idle),
            ended: Arc::new(AtomicU8::new(CLIENT_BODY_GOING)),
            rate: min_rate.map(|floor| RateState {
                floor,
                started: Instant::now(),
                received: 0,
            }),
            limit: limit.map(|l| (l, 0)),
        }
    }

    /// How the body ended so far (`CLIENT_BODY_*`), shared.
    pub fn ended(&self) -> Arc<AtomicU8> {
        Arc::clone(&self.ended)
    }

    /// Notes that all of the body was read, unless it failed first.
    fn note_end(&self) {
        let _ = self.ended.compare_exchange(
            CLIENT_BODY_GOING,
            CLIENT_BODY_ENDED,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(rate)) = (&poll, self.rate.as_mut()) {
            rate.received += frame.data_ref().map_or(0, |d| d.len() as u64);
            let elapsed = rate.started.elapsed();
            if elapsed > rate.floor.grace
                && u128::from(rate.received) * 1000
                    < u128::from(rate.floor.bytes_per_sec) * elapsed.as_millis()
            {
                poll = Poll::Ready(Some(Err(Box::new(BodyTooSlow))));
            }
        }
        if let (Poll::Ready(Some(Ok(frame))), Some((limit, read))) = (&poll, self.limit.as_mut()) {
            *read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if *read > *limit {
                poll = Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
            }
        }
        match &poll {
            Poll::Ready(Some(Err(e))) => {
                let how = if e.is::<BodyIdleTimeout>() || e.is::<BodyTooSlow>() {
                    CLIENT_BODY_TIMED_OUT
                } else if e.is::<BodyTooLarge>() {
                    CLIENT_BODY_TOO_LARGE
                } else {
                    CLIENT_BODY_MALFORMED
                };
                self.ended.store(how, Ordering::Relaxed);
            }
            Poll::Ready(None) => self.note_end(),
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.note_end();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    const OUTLIER: routes::Outlier = routes::Outlier {
        consecutive_failures: 2,
        ejection_time: Duration::from_secs(3600),
        max_ejection_percent: 100,
        failure_percentage: None,
    };

    /// A body that sends `first`, then fails.
    struct Breaks(Option<Bytes>);

    impl Body for Breaks {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(Some(match self.0.take() {
                Some(data) => Ok(Frame::data(data)),
                None => Err(std::io::ErrorKind::ConnectionReset.into()),
            }))
        }
    }

    fn watching<B>(
        body: B,
        health: &Arc<MemberHealth>,
        client_body: Option<Arc<AtomicU8>>,
    ) -> IdleTimeoutBody<B> {
        IdleTimeoutBody::new(body, Duration::from_secs(60)).watched(Some(Box::new(Watch {
            endpoint: Some((Arc::clone(health), OUTLIER)),
            probe: false,
            judged: None,
            client_body,
        })))
    }

    /// The endpoint's success is counted at its last frame (a server may not poll further),
    /// its failure when the body breaks; a body given up unread counts neither way.
    #[tokio::test(start_paused = true)]
    async fn an_answer_counts_for_its_endpoint_when_its_body_ends() {
        let health = MemberHealth::alone("watch", "127.0.0.1:1");
        assert!(!health.record_live(false, &OUTLIER));
        let mut whole = watching(Full::new(Bytes::from_static(b"abc")), &health, None);
        whole.frame().await.expect("a frame").expect("data");
        // One failure, then a success: the next failure is the first in a row again.
        assert!(!health.record_live(false, &OUTLIER));

        drop(watching(
            Full::new(Bytes::from_static(b"abc")),
            &health,
            None,
        ));
        // Abandoned: the failure before it still counts, and this one ejects.
        assert!(health.record_live(false, &OUTLIER));
        assert!(health.ejected(crate::clock::now_ms()));
    }

    /// A body that breaks off is its endpoint's failure, unless the client's upload broke
    /// first: then the error passed on says so, and the endpoint is not blamed.
    #[tokio::test(start_paused = true)]
    async fn a_broken_body_fails_its_endpoint_unless_the_client_broke_it() {
        let health = MemberHealth::alone("watch", "127.0.0.1:2");
        let client = Arc::new(AtomicU8::new(CLIENT_BODY_MALFORMED));
        let broken = Breaks(Some(Bytes::from_static(b"abc")));
        let mut body = watching(broken, &health, Some(Arc::clone(&client)));
        body.frame().await.expect("a frame").expect("data");
        let error = body.frame().await.expect("an end").expect_err("broken");
        assert!(error.is::<ClientBodyBroke>(), "{error}");
        assert!(!health.record_live(false, &OUTLIER), "not counted");

        client.store(CLIENT_BODY_ENDED, Ordering::Relaxed);
        let mut body = watching(Breaks(None), &health, Some(client));
        let error = body.frame().await.expect("an end").expect_err("broken");
        assert!(!error.is::<ClientBodyBroke>(), "{error}");
        assert!(
            health.ejected(crate::clock::now_ms()),
            "the second in a row"
        );
    }
}
