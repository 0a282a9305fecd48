//! A response body that fails instead of hanging when the upstream goes quiet mid-stream.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::upstream::UpstreamIncoming;
use crate::listen::RequestBody;
use crate::rollout::Judged;
use tokio::time::{Instant, Sleep};

/// Wraps an upstream body; if no frame arrives for `idle`, the body ends with an error, which
/// makes hyper abort the client's response (reset stream / close connection) rather than hang.
#[derive(Debug)]
pub struct IdleTimeoutBody<B = UpstreamIncoming> {
    inner: B,
    idle: Duration,
    /// Armed the first time the upstream makes us wait (most small bodies never do).
    timer: Option<Pin<Box<Sleep>>>,
    /// A rollout's analysis, told when the body breaks off.
    judged: Option<Judged>,
}

/// The body went quiet for longer than the idle timeout.
#[derive(Debug)]
pub struct BodyIdleTimeout;

impl std::fmt::Display for BodyIdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream body idle timeout")
    }
}

impl std::error::Error for BodyIdleTimeout {}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, idle: Duration) -> IdleTimeoutBody<B> {
        IdleTimeoutBody {
            inner,
            idle,
            timer: None,
            judged: None,
        }
    }

    /// The body of an exchange in a rollout's analysis: an error from it (the idle timeout's
    /// too) is counted against the version that answered.
    pub fn judged(mut self, judged: Option<Judged>) -> IdleTimeoutBody<B> {
        self.judged = judged;
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
        let poll = match Pin::new(&mut this.inner).poll_frame(cx) {
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
        if let Poll::Ready(Some(Err(_))) = &poll
            && let Some(judged) = this.judged.take()
        {
            judged.broke();
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
    ended: std::sync::Arc<std::sync::atomic::AtomicU8>,
    rate: Option<RateState>,
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
#[derive(Debug)]
pub struct BodyTooSlow;

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body slower than the minimum rate")
    }
}

impl std::error::Error for BodyTooSlow {}

/// How the client's body ended: not yet.
pub const CLIENT_BODY_GOING: u8 = 0;
/// It broke the exchange: malformed, or the client went away.
pub const CLIENT_BODY_MALFORMED: u8 = 1;
/// The client went quiet inside its body for longer than `server.client_body_timeout`.
/// Or sent it more slowly than `server.client_body_min_rate`.
pub const CLIENT_BODY_TIMED_OUT: u8 = 2;
/// All of it was read.
pub const CLIENT_BODY_ENDED: u8 = 3;

/// Whether a body that ended `how` broke the exchange (the client is to blame).
pub fn client_body_failed(how: u8) -> bool {
    matches!(how, CLIENT_BODY_MALFORMED | CLIENT_BODY_TIMED_OUT)
}

impl ClientBody {
    pub fn new(inner: RequestBody, idle: Duration, min_rate: Option<MinRate>) -> ClientBody {
        ClientBody {
            inner: IdleTimeoutBody::new(inner, idle),
            ended: std::sync::Arc::new(std::sync::atomic::AtomicU8::new(CLIENT_BODY_GOING)),
            rate: min_rate.map(|floor| RateState {
                floor,
                started: Instant::now(),
                received: 0,
            }),
        }
    }

    /// How the body ended so far (`CLIENT_BODY_*`), shared.
    pub fn ended(&self) -> std::sync::Arc<std::sync::atomic::AtomicU8> {
        std::sync::Arc::clone(&self.ended)
    }

    /// Notes that all of the body was read, unless it failed first.
    fn note_end(&self) {
        let _ = self.ended.compare_exchange(
            CLIENT_BODY_GOING,
            CLIENT_BODY_ENDED,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
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
        match &poll {
            Poll::Ready(Some(Err(e))) => {
                let how = if e.is::<BodyIdleTimeout>() || e.is::<BodyTooSlow>() {
                    CLIENT_BODY_TIMED_OUT
                } else {
                    CLIENT_BODY_MALFORMED
                };
                self.ended.store(how, std::sync::atomic::Ordering::Relaxed);
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
