//! HTTP/2 answers whose client takes none of them. On HTTP/1.1 a client that stops reading
//! fills the socket, and the write that waits runs out `server.send_timeout`
//! (`head_timer`). An HTTP/2 client can keep its connection busy (answering PINGs, reading
//! other streams) and give one stream no flow-control window: hyper then never asks that
//! stream's body for more, and the upstream answer behind it (an upstream connection, its
//! slot at the endpoint) would be held for as long as the client likes, up to
//! `H2_MAX_STREAMS` streams per connection.
//!
//! Each HTTP/2 answer's body is [`Watched`]: it marks the sweep count whenever it hands hyper a
//! frame, and a listener's sweep, once a second, drops the upstream body of every answer whose
//! client has asked for nothing since for `send_timeout` (an answer waiting on its upstream
//! is the upstream's business: `body_idle_timeout`). When hyper next asks, the body fails and
//! the stream is reset. What the client has been given window for, and what h2 buffers for
//! it (`max_send_buf_size`), count as taken: the test is a client taking less than that in
//! `send_timeout`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};

use crate::listen::BoxError;

/// How often stalled answers are looked for: the most a stall is judged late.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A mark meaning "waiting on the upstream, not on the client".
const UPSTREAM: u32 = u32::MAX;

/// A listener's HTTP/2 answers in flight.
pub struct Streams {
    table: Mutex<Table>,
    /// Sweeps so far: what marks are read against.
    tick: AtomicU32,
    /// Sweeps an answer may go without its client asking for more.
    limit: u32,
    /// The listener's name, for the metric.
    name: &'static str,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Table {
    cells: Vec<Option<Weak<dyn Stall>>>,
    free: Vec<usize>,
}

/// One answer, as the sweep sees it.
trait Stall: Send + Sync {
    /// The sweep count when the client last asked for more, or [`UPSTREAM`].
    fn mark(&self) -> u32;
    /// Drops the body behind the answer.
    fn cut(&self);
}

impl Streams {
    pub fn new(name: &'static str, send_timeout: Duration) -> Arc<Streams> {
        let limit = send_timeout.as_secs_f64() / SWEEP_EVERY.as_secs_f64();
        Arc::new(Streams {
            table: Mutex::new(Table::default()),
            tick: AtomicU32::new(0),
            limit: (limit.ceil() as u32).max(1),
            name,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches `body`, an HTTP/2 answer's.
    pub fn watch<B>(self: &Arc<Self>, body: B) -> Watched<B>
    where
        B: Body<Error: Into<BoxError>> + Send + Unpin + 'static,
    {
        let cell = Arc::new(Cell {
            body: Mutex::new(Some(body)),
            mark: AtomicU32::new(self.tick.load(Ordering::Relaxed)),
        });
        let weak: Weak<dyn Stall> = Arc::downgrade(&cell) as Weak<dyn Stall>;
        let mut table = self.lock();
        let index = match table.free.pop() {
            Some(i) => {
                table.cells[i] = Some(weak);
                i
            }
            None => {
                table.cells.push(Some(weak));
                table.cells.len() - 1
            }
        };
        drop(table);
        Watched {
            cell,
            streams: Arc::clone(self),
            index,
        }
    }

    /// One sweep: cuts the answers whose client has asked for nothing for `limit` sweeps.
    fn sweep(&self) -> usize {
        let now = self.tick.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let stalled: Vec<Arc<dyn Stall>> = self
            .lock()
            .cells
            .iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .filter(|c| {
                let mark = c.mark();
                mark != UPSTREAM && now.wrapping_sub(mark) >= self.limit
            })
            .collect();
        for cell in &stalled {
            cell.cut();
        }
        if !stalled.is_empty() {
            metrics::counter!(crate::telemetry::SEND_TIMEOUTS, crate::telemetry::L_LISTENER => self.name)
                .increment(stalled.len() as u64);
        }
        stalled.len()
    }
}

/// Sweeps `streams` every [`SWEEP_EVERY`] until the listener is gone.
pub async fn sweep(streams: Weak<Streams>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(streams) = streams.upgrade() else {
            return;
        };
        streams.sweep();
    }
}

struct Cell<B> {
    /// `None` once cut.
    body: Mutex<Option<B>>,
    mark: AtomicU32,
}

impl<B: Send> Stall for Cell<B> {
    fn mark(&self) -> u32 {
        self.mark.load(Ordering::Relaxed)
    }

    fn cut(&self) {
        let body = self.body.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(body);
        // Judged once: what is left waits for hyper to ask (and fail) or drop it.
        self.mark.store(UPSTREAM, Ordering::Relaxed);
    }
}

/// An HTTP/2 answer's body under the sweep's watch.
pub struct Watched<B> {
    cell: Arc<Cell<B>>,
    streams: Arc<Streams>,
    index: usize,
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        let mut table = self.streams.lock();
        table.cells[self.index] = None;
        table.free.push(self.index);
    }
}

/// The answer was cut: its client took none of it for `send_timeout`.
#[derive(Debug)]
pub struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the client took none of the answer within server.send_timeout")
    }
}

impl std::error::Error for Stalled {}

impl<B> Body for Watched<B>
where
    B: Body<Error: Into<BoxError>> + Unpin,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let cell = &self.cell;
        let mut body = cell.body.lock().unwrap_or_else(|p| p.into_inner());
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let mark = match polled {
            Poll::Pending => UPSTREAM,
            Poll::Ready(_) => self.streams.tick.load(Ordering::Relaxed),
        };
        cell.mark.store(mark, Ordering::Relaxed);
        polled.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        let body = self.cell.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref().is_some_and(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let body = self.cell.body.lock().unwrap_or_else(|p| p.into_inner());
        body.as_ref().map_or_else(SizeHint::default, B::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed frame by frame by the test.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed(n: usize) -> (mpsc::UnboundedSender<Bytes>, Fed) {
        let (tx, rx) = mpsc::unbounded_channel();
        for _ in 0..n {
            tx.send(Bytes::from_static(b"x")).expect("fed");
        }
        (tx, Fed(rx))
    }

    #[tokio::test]
    async fn an_answer_the_client_asks_nothing_of_is_cut_after_the_limit() {
        let streams = Streams::new("test", Duration::from_secs(3));
        let (idle_feed, body) = fed(10);
        let mut idle = streams.watch(body);
        let (taking_feed, body) = fed(10);
        let mut taking = streams.watch(body);
        for _ in 0..2 {
            assert_eq!(streams.sweep(), 0);
            taking.frame().await.expect("a frame").expect("data");
        }
        // The third sweep since `idle` was handed out: cut, and its upstream body dropped;
        // counted once.
        assert_eq!(streams.sweep(), 1);
        assert_eq!(streams.sweep(), 0);
        assert!(idle_feed.is_closed(), "the body behind it was dropped");
        let err = idle.frame().await.expect("an item").expect_err("cut");
        assert!(err.is::<Stalled>(), "{err}");
        assert!(!idle.is_end_stream());
        taking.frame().await.expect("a frame").expect("data");
        assert!(!taking_feed.is_closed());
        // Dropped answers leave the table; their slots are used again.
        drop(idle);
        drop(taking);
        let _again = streams.watch(fed(1).1);
        assert_eq!(streams.lock().cells.len(), 2);
    }

    #[tokio::test]
    async fn an_answer_waiting_on_its_upstream_is_not_the_clients_stall() {
        let streams = Streams::new("test", Duration::from_secs(1));
        let (tx, body) = fed(0);
        let mut w = streams.watch(body);
        // Asked, and the upstream has nothing yet: pending, not the client's stall.
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_frame(cx).is_pending()))
                .await;
        assert!(pending);
        for _ in 0..5 {
            assert_eq!(streams.sweep(), 0);
        }
        tx.send(Bytes::from_static(b"late")).expect("fed");
        assert!(w.frame().await.expect("a frame").is_ok());
        // Handed a frame, and the client asks for nothing more: cut at the next sweep.
        assert_eq!(streams.sweep(), 1);
    }
}
