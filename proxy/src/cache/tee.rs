//! The response body on its way to the client, copied into a cache entry as it passes.
//!
//! A fill goes at the upstream's pace, not the client's: a task reads the upstream body into
//! the entry and queues each frame for the client who asked. A slow client (or one that
//! stops reading) does not hold back the requests waiting for the entry, and one that goes
//! away does not waste the fetch: the entry is still stored. Once the entry is stored, what the
//! client has not taken yet is a slice of it: a slow client holds no copy of its own. Once
//! nothing is being stored (too many bytes, trailers), the task reads only as fast as the
//! client takes the queued bytes.
//!
//! The entry is stored when the body ends cleanly within the size limit; on an error, trailers
//! or too many bytes the copy is dropped, and with it the fill guard, which wakes the requests
//! waiting for this key.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use super::{Entry, FillGuard};
use crate::forward::IdleTimeoutBody;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Once nothing is stored, the upstream is read only while the client has fewer bytes than
/// this waiting for it.
const QUEUE_LOW: usize = 64 * 1024;

/// A copy in progress.
struct Fill {
    guard: FillGuard,
    entry: Entry,
    buf: BytesMut,
    max: usize,
}

impl Fill {
    /// Takes a frame into the copy; `false` when the copy must be given up (too large,
    /// trailers).
    fn take(&mut self, frame: &Frame<Bytes>) -> bool {
        match frame.data_ref() {
            Some(data) if self.buf.len() + data.len() <= self.max => {
                self.buf.extend_from_slice(data);
                true
            }
            _ => false,
        }
    }

    /// Stores the entry; returns its body.
    fn store(self) -> Bytes {
        let Fill {
            guard,
            mut entry,
            buf,
            ..
        } = self;
        entry.body = buf.freeze();
        let body = entry.body.clone();
        guard.cache().insert(guard.key.clone(), entry);
        body
    }
}

/// An upstream body, or the client's end of a fill.
pub struct TeeBody<B = IdleTimeoutBody> {
    inner: Inner<B>,
}

enum Inner<B> {
    Plain(B),
    Filling(Reader),
}

impl<B> std::fmt::Debug for TeeBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeBody")
            .field("filling", &matches!(self.inner, Inner::Filling(_)))
            .finish()
    }
}

impl<B> TeeBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    pub fn plain(inner: B) -> TeeBody<B> {
        TeeBody {
            inner: Inner::Plain(inner),
        }
    }

    /// Streams `inner` and stores `entry` with its bytes when it ends (at most `max` bytes).
    pub fn filling(inner: B, guard: FillGuard, entry: Entry, max: u64) -> TeeBody<B> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let hint = inner.size_hint();
        let fill = Fill {
            guard,
            entry,
            buf: BytesMut::with_capacity((hint.lower() as usize).min(max)),
            max,
        };
        if inner.is_end_stream() {
            fill.store();
            return TeeBody::plain(inner);
        }
        let queue = Arc::new(Queue::default());
        tokio::spawn(drive(inner, Some(fill), Arc::clone(&queue)));
        TeeBody {
            inner: Inner::Filling(Reader {
                queue,
                left: hint.exact(),
                lower: hint.lower(),
            }),
        }
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.inner {
            Inner::Plain(body) => Pin::new(body).poll_frame(cx),
            Inner::Filling(reader) => reader.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain(body) => body.is_end_stream(),
            Inner::Filling(reader) => {
                let state = reader.queue.lock();
                state.frames.is_empty() && matches!(state.end, End::Done)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Plain(body) => body.size_hint(),
            Inner::Filling(reader) => match reader.left {
                Some(n) => SizeHint::with_exact(n),
                None => {
                    let mut hint = SizeHint::new();
                    hint.set_lower(reader.lower);
                    hint
                }
            },
        }
    }
}

/// How the upstream body ended, as far as the fill task has read it.
#[derive(Default)]
enum End {
    #[default]
    Open,
    Done,
    Failed(Option<BoxError>),
}

#[derive(Default)]
struct State {
    /// Frames read and not yet taken by the client, and their data bytes.
    frames: VecDeque<Frame<Bytes>>,
    queued: usize,
    /// Data bytes the client has taken.
    taken: usize,
    end: End,
    /// The client's body was dropped.
    gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

/// Frames passed from the fill task to the client's body.
#[derive(Default)]
struct Queue(Mutex<State>);

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame (dropped when the client is gone); `end`: it was the last.
    fn push(&self, frame: Frame<Bytes>, end: bool) {
        let mut state = self.lock();
        if !state.gone {
            state.queued += frame.data_ref().map_or(0, Bytes::len);
            state.frames.push_back(frame);
        }
        if end {
            state.end = End::Done;
        }
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// The body ended and was stored whole as `body`: what the client has not taken yet is
    /// handed over as a slice of it, and the copies read from the upstream are let go (a slow
    /// client holds no more than the cache does).
    fn stored(&self, body: &Bytes) {
        let mut state = self.lock();
        if !state.gone {
            let rest = body.slice(state.taken.min(body.len())..);
            state.frames.clear();
            state.queued = rest.len();
            if !rest.is_empty() {
                state.frames.push_back(Frame::data(rest));
            }
        }
        drop(state);
        self.end(End::Done);
    }

    fn end(&self, end: End) {
        let mut state = self.lock();
        state.end = end;
        let reader = state.reader.take();
        drop(state);
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// Ready with `true` when the client has room for more, `false` when it is gone.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut state = self.lock();
        if state.gone {
            return Poll::Ready(false);
        }
        if state.queued < QUEUE_LOW {
            return Poll::Ready(true);
        }
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Reads `body` to its end (or until nothing is stored and the client has gone), filling the
/// entry and queueing the frames for the client.
async fn drive<B>(mut body: B, mut fill: Option<Fill>, queue: Arc<Queue>)
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    loop {
        if fill.is_none() && !poll_fn(|cx| queue.poll_room(cx)).await {
            return;
        }
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if fill.as_mut().is_some_and(|f| !f.take(&frame)) {
                    fill = None;
                }
                let end = body.is_end_stream();
                if end && let Some(f) = fill.take() {
                    queue.stored(&f.store());
                    return;
                }
                queue.push(frame, end);
                if end {
                    return;
                }
            }
            Some(Err(e)) => {
                queue.end(End::Failed(Some(e)));
                return;
            }
            None => {
                match fill.take() {
                    Some(f) => queue.stored(&f.store()),
                    None => queue.end(End::Done),
                }
                return;
            }
        }
    }
}

/// The client's end: takes the queued frames.
struct Reader {
    queue: Arc<Queue>,
    /// Bytes still to come, when the length is known.
    left: Option<u64>,
    lower: u64,
}

impl Reader {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut state = self.queue.lock();
        if let Some(frame) = state.frames.pop_front() {
            let n = frame.data_ref().map_or(0, Bytes::len);
            state.queued -= n;
            state.taken += n;
            let writer = (state.queued < QUEUE_LOW)
                .then(|| state.writer.take())
                .flatten();
            drop(state);
            if let Some(w) = writer {
                w.wake();
            }
            self.left = self.left.map(|l| l.saturating_sub(n as u64));
            self.lower = self.lower.saturating_sub(n as u64);
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut state.end {
            End::Open => {
                state.reader = Some(cx.waker().clone());
                Poll::Pending
            }
            End::Done => Poll::Ready(None),
            End::Failed(e) => {
                let e = e.take().unwrap_or_else(|| "upstream body failed".into());
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.gone = true;
        state.frames.clear();
        state.queued = 0;
        let writer = state.writer.take();
        drop(state);
        if let Some(w) = writer {
            w.wake();
        }
    }
}
