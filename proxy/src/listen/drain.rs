//! A listener's graceful stop, as its connections see it.
//!
//! Every connection holds a [`Hold`]: a slot in the listener's list of wakers, and one count of
//! the connections still open. An idle connection leaves its waker in the slot while it waits
//! for a request; [`Drain::start`] flips the flag and wakes them all, and each one closes (or,
//! busy, answers with `Connection: close` first). [`Drain::finished`] returns once the last
//! hold is dropped.
//!
//! This costs an idle connection 16 bytes in its task and one slot in a shared list. (A
//! `watch` receiver with its boxed `changed()` future cost it ~130: the future must be kept
//! between polls to stay registered.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    waiting: Mutex<Waiting>,
    /// Told when the last hold is dropped.
    gone: Notify,
}

#[derive(Debug, Default)]
struct Waiting {
    /// By slot: the waker of a connection that waits idle, if it has waited.
    wakers: Vec<Option<Waker>>,
    /// Slots given back, to be handed out again.
    free: Vec<usize>,
    /// Holds not yet dropped.
    live: usize,
}

impl Drain {
    /// A connection's hold: counted until dropped.
    pub fn hold(self: &Arc<Self>) -> Hold {
        let mut w = self.lock();
        w.live += 1;
        let slot = match w.free.pop() {
            Some(slot) => slot,
            None => {
                w.wakers.push(None);
                w.wakers.len() - 1
            }
        };
        Hold {
            drain: Arc::clone(self),
            slot,
        }
    }

    /// Flips to draining and wakes every connection that waits idle.
    pub fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self
            .lock()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// Returns once every hold is dropped.
    pub async fn finished(&self) {
        loop {
            let gone = self.gone.notified();
            let mut gone = std::pin::pin!(gone);
            // Registered before the count is read: a drop in between still wakes us.
            gone.as_mut().enable();
            if self.lock().live == 0 {
                return;
            }
            gone.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's part in the drain (see the module docs).
#[derive(Debug)]
pub struct Hold {
    drain: Arc<Drain>,
    slot: usize,
}

impl Hold {
    pub fn is_draining(&self) -> bool {
        self.drain.draining.load(Ordering::SeqCst)
    }

    /// Ready once the listener drains; until then the task is woken when it does.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_draining() {
            return Poll::Ready(());
        }
        {
            let mut w = self.drain.lock();
            let kept = &mut w.wakers[self.slot];
            if !kept.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
                *kept = Some(cx.waker().clone());
            }
        }
        // `start` flips the flag before it takes the lock: had it run in between, this sees it.
        if self.is_draining() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let last = {
            let mut w = self.drain.lock();
            w.wakers[self.slot] = None;
            w.free.push(self.slot);
            w.live -= 1;
            w.live == 0
        };
        if last {
            self.drain.gone.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_wakes_the_waiting_and_finished_waits_for_every_hold() {
        let drain = Arc::new(Drain::default());
        let first = drain.hold();
        let second = drain.hold();
        let waiting = tokio::spawn(async move {
            std::future::poll_fn(|cx| first.poll(cx)).await;
            first
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drain.start();
        let first = waiting.await.expect("woken");
        assert!(first.is_draining() && second.is_draining());
        // A hold taken after the start is draining at once.
        let late = drain.hold();
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(late.poll(cx)))
                .await
                .is_ready()
        );

        let finished = {
            let drain = Arc::clone(&drain);
            tokio::spawn(async move { drain.finished().await })
        };
        drop(first);
        drop(late);
        tokio::task::yield_now().await;
        assert!(!finished.is_finished(), "one hold is left");
        drop(second);
        finished.await.expect("finished");
        // Slots are reused.
        let again = drain.hold();
        assert_eq!(drain.lock().wakers.len(), 3);
        drop(again);
    }
}
