//! The response body on its way to the client, copied into a cache entry as it passes.
//! The entry is stored when the body ends cleanly within the size limit; on an error, trailers,
//! too many bytes or a client gone, the copy is dropped, and with it the fill guard, which
//! wakes the requests waiting for this key.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use super::{Entry, FillGuard};
use crate::forward::IdleTimeoutBody;

/// A copy in progress.
struct Fill {
    guard: FillGuard,
    entry: Entry,
    buf: BytesMut,
    max: usize,
}

/// An upstream body, optionally filling a cache entry.
pub struct TeeBody {
    inner: IdleTimeoutBody,
    fill: Option<Box<Fill>>,
}

impl std::fmt::Debug for TeeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeeBody")
            .field("filling", &self.fill.is_some())
            .finish()
    }
}

impl TeeBody {
    pub fn plain(inner: IdleTimeoutBody) -> TeeBody {
        TeeBody { inner, fill: None }
    }

    /// Streams `inner` and stores `entry` with its bytes when it ends (at most `max` bytes).
    pub fn filling(inner: IdleTimeoutBody, guard: FillGuard, entry: Entry, max: u64) -> TeeBody {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let hint = inner.size_hint().lower() as usize;
        let fill = Fill {
            guard,
            entry,
            buf: BytesMut::with_capacity(hint.min(max)),
            max,
        };
        let mut body = TeeBody {
            inner,
            fill: Some(Box::new(fill)),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(fill) = self.fill.take() {
            let Fill {
                guard,
                mut entry,
                buf,
                ..
            } = *fill;
            entry.body = buf.freeze();
            guard.cache().insert(guard.key.clone(), entry);
            drop(guard);
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(fill) = this.fill.as_mut() {
                    match frame.data_ref() {
                        Some(data) if fill.buf.len() + data.len() <= fill.max => {
                            fill.buf.extend_from_slice(data)
                        }
                        // Too large, or trailers: not stored.
                        _ => this.fill = None,
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.fill = None,
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
