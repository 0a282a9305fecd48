//! What an open connection keeps with its listener: a slot in a shared list, where it leaves
//! its waker while it waits, with the deadline of that wait. One list serves two things:
//!
//! - **Drain.** Every connection holds a [`Hold`]: one count of the connections still open.
//!   [`Slots::start_drain`] flips the flag and wakes every waiting connection; an idle one
//!   closes, a busy one answers with `Connection: close` first. [`Slots::finished`] returns
//!   once the last hold is dropped.
//! - **Timeouts** (the head timer's, `head_timer`). A connection waiting for a request head
//!   leaves its deadline in its slot ([`Deadline`]); [`sweep`] wakes those whose deadline has
//!   passed, every [`SWEEP_EVERY`]. So a timeout fires up to that much late, and a connection
//!   needs no timer of its own.
//!
//! An idle connection pays two 16-byte handles in its task and one slot (a waker and a
//! deadline) here. What this replaced, a `watch` receiver with its boxed `changed()` future and
//! a boxed tokio `Sleep` per connection (each must be kept between polls to stay registered),
//! measured 741 bytes per idle connection against 344 with this (`benches/idle-conns.py` as it
//! was then; that method read too low: builds with the slots measure ~880 bytes now — see
//! benches/README.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How often deadlines are checked: the most a head or idle timeout fires late.
pub const SWEEP_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Slots {
    draining: AtomicBool,
    table: Mutex<Table>,
    /// Told when the last hold is dropped.
    gone: Notify,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Slot>,
    /// Slots given back, to be handed out again.
    free: Vec<usize>,
    /// Holds not yet dropped.
    live: usize,
}

#[derive(Debug, Default)]
struct Slot {
    /// The connection's task, while it waits.
    waker: Option<Waker>,
    /// When its wait runs out, if it has a deadline.
    deadline: Option<Instant>,
    /// Handles on this slot ([`Hold`], [`Deadline`]): it is handed out again only when both
    /// are gone. (A WebSocket tunnel keeps the connection's IO, and its deadline, after the
    /// connection loop and its hold have ended.)
    users: u8,
}

impl Slots {
    /// A connection's hold: counted until dropped.
    pub fn hold(self: &Arc<Self>) -> Hold {
        let mut t = self.lock();
        t.live += 1;
        let slot = match t.free.pop() {
            Some(slot) => slot,
            None => {
                t.slots.push(Slot::default());
                t.slots.len() - 1
            }
        };
        t.slots[slot].users = 1;
        Hold {
            slots: Arc::clone(self),
            slot,
        }
    }

    /// Flips to draining and wakes every connection that waits.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake(|s| s.waker.take());
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

    /// Wakes the connections whose deadline is `now` or earlier.
    fn wake_expired(&self, now: Instant) {
        self.wake(|s| {
            if s.deadline.is_none_or(|d| d > now) {
                return None;
            }
            s.deadline = None;
            s.waker.take()
        });
    }

    /// Wakes the wakers `take` takes from the slots (woken after the lock is released).
    fn wake(&self, take: impl FnMut(&mut Slot) -> Option<Waker>) {
        let wakers: Vec<Waker> = self.lock().slots.iter_mut().filter_map(take).collect();
        for waker in wakers {
            waker.wake();
        }
    }

    /// One handle on `slot` is gone; the last one gives the slot back.
    fn release(t: &mut Table, slot: usize) {
        let s = &mut t.slots[slot];
        s.users -= 1;
        if s.users == 0 {
            *s = Slot::default();
            t.free.push(slot);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `cx`'s waker in `slot` (and the deadline, when given).
    fn wait(&self, slot: usize, cx: &mut Context<'_>, deadline: Option<Instant>) {
        let mut t = self.lock();
        let s = &mut t.slots[slot];
        if !s.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        if deadline.is_some() {
            s.deadline = deadline;
        }
    }
}

/// Wakes expired waits every [`SWEEP_EVERY`] while the listener or any of its connections is
/// still there.
pub async fn sweep(slots: Weak<Slots>) {
    every_sweep(move |now| slots.upgrade().map(|s| s.wake_expired(now)).is_some()).await;
}

/// Calls `expire` with the time every [`SWEEP_EVERY`], until it returns false (what it sweeps
/// is gone).
pub async fn every_sweep(mut expire: impl FnMut(Instant) -> bool) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !expire(Instant::now()) {
            return;
        }
    }
}

/// A connection's part in the drain (see the module docs).
#[derive(Debug)]
pub struct Hold {
    slots: Arc<Slots>,
    slot: usize,
}

impl Hold {
    pub fn is_draining(&self) -> bool {
        self.slots.draining.load(Ordering::SeqCst)
    }

    /// Ready once the listener drains; until then the task is woken when it does.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_draining() {
            return Poll::Ready(());
        }
        self.slots.wait(self.slot, cx, None);
        // `start_drain` flips the flag before it takes the lock: had it run in between, this
        // sees it.
        if self.is_draining() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The same slot, for the connection's deadlines (one more user of the slot; the open
    /// connections are counted by holds alone).
    pub fn deadline(&self) -> Deadline {
        self.slots.lock().slots[self.slot].users += 1;
        Deadline {
            slots: Arc::clone(&self.slots),
            slot: self.slot,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let last = {
            let mut t = self.slots.lock();
            Slots::release(&mut t, self.slot);
            t.live -= 1;
            t.live == 0
        };
        if last {
            self.slots.gone.notify_waiters();
        }
    }
}

/// A connection's deadline in its slot (see the module docs).
#[derive(Debug)]
pub struct Deadline {
    slots: Arc<Slots>,
    slot: usize,
}

impl Drop for Deadline {
    fn drop(&mut self) {
        Slots::release(&mut self.slots.lock(), self.slot);
    }
}

impl Deadline {
    /// Ready once `at` has passed; until then the sweep wakes the task after it. `now` is the
    /// time if the caller has just read it (one clock reading fewer); otherwise it is read.
    pub fn poll_until(&self, cx: &mut Context<'_>, at: Instant, now: Option<Instant>) -> Poll<()> {
        if now.unwrap_or_else(Instant::now) >= at {
            return Poll::Ready(());
        }
        self.slots.wait(self.slot, cx, Some(at));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_wakes_the_waiting_and_finished_waits_for_every_hold() {
        let slots = Arc::new(Slots::default());
        let first = slots.hold();
        let second = slots.hold();
        let waiting = tokio::spawn(async move {
            std::future::poll_fn(|cx| first.poll(cx)).await;
            first
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        slots.start_drain();
        let first = waiting.await.expect("woken");
        assert!(first.is_draining() && second.is_draining());
        // A hold taken after the start is draining at once.
        let late = slots.hold();
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(late.poll(cx)))
                .await
                .is_ready()
        );

        let finished = {
            let slots = Arc::clone(&slots);
            tokio::spawn(async move { slots.finished().await })
        };
        drop(first);
        drop(late);
        tokio::task::yield_now().await;
        assert!(!finished.is_finished(), "one hold is left");
        drop(second);
        finished.await.expect("finished");
        // Slots are reused.
        let again = slots.hold();
        assert_eq!(slots.lock().slots.len(), 3);
        drop(again);
    }

    #[tokio::test]
    async fn a_slot_is_reused_only_when_its_hold_and_deadline_are_both_gone() {
        let slots = Arc::new(Slots::default());
        let hold = slots.hold();
        let deadline = hold.deadline();
        // The connection loop ends; its IO (and deadline) lives on, e.g. in a tunnel.
        drop(hold);
        let other = slots.hold();
        assert_ne!(
            other.slot, deadline.slot,
            "a slot still in use was handed out"
        );
        drop(deadline);
        let reused = slots.hold();
        assert_eq!(reused.slot, 0);
        assert_eq!(slots.lock().slots.len(), 2);
        drop((other, reused));
        slots.finished().await;
    }

    /// (Paused clock.)
    #[tokio::test(start_paused = true)]
    async fn the_sweep_wakes_a_wait_once_its_deadline_has_passed() {
        let slots = Arc::new(Slots::default());
        tokio::spawn(sweep(Arc::downgrade(&slots)));
        let hold = slots.hold();
        let deadline = hold.deadline();
        let started = Instant::now();
        let at = started + Duration::from_secs(5);
        std::future::poll_fn(|cx| deadline.poll_until(cx, at, None)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took <= Duration::from_secs(5) + SWEEP_EVERY,
            "{took:?}"
        );
        // A later deadline replaces the earlier one in the slot.
        let at = Instant::now() + Duration::from_secs(2);
        std::future::poll_fn(|cx| deadline.poll_until(cx, at, None)).await;
        assert!(Instant::now() >= at);
    }
}
