//! Parked connections: a plain HTTP/1.1 connection idle for `server.park_idle_after` after a
//! request gives up its task. Its loop ends, its socket leaves the runtime's poller, and what
//! it must keep — the socket, its requests so far, its place in the connection limits, when
//! its idle time runs out — waits in its listener's [`Lot`]. One thread watches every parked
//! socket; when one becomes readable (a request, or the client closing) the listener takes the
//! connection back up, as a fresh task that has the bytes waiting for it.
//!
//! An idle connection that is a task costs its task cell, the runtime's readiness record and
//! the loop's state: ~880 bytes measured (`benches/idle-conns.py`). Parked, it costs one entry
//! here. Taking it back up costs a few system calls and a task spawn, paid once per idle spell
//! longer than `park_idle_after`, not per request.
//!
//! The idle timeout still holds while parked: the lot's sweep (on the runtime's clock, like the
//! connection's own) closes what has sat out `server.keepalive_timeout`. A drain closes every
//! parked connection at once, as it does an idle task.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::time::Instant;

use super::ConnSlot;
use super::slots::every_sweep;
use crate::head_timer::{ConnIo, HeadTimer};

/// What a parked connection keeps besides its socket, handed back with it.
#[derive(Debug)]
pub struct Parked {
    /// Requests served so far (for `max_requests_per_connection`).
    pub served: u32,
    /// Its place in the connection limits (and the client a balancer's PROXY header named).
    pub slot: Option<ConnSlot>,
}

/// Takes a connection back up: called on the lot's thread, so it should only spawn.
pub type Resume = Box<dyn Fn(std::net::TcpStream, Parked) + Send + Sync>;

/// One listener's parked connections (see the module docs).
pub struct Lot {
    table: Mutex<Table>,
    registry: Registry,
    waker: mio::Waker,
    resume: Resume,
    gauge: metrics::Gauge,
}

impl std::fmt::Debug for Lot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lot")
            .field("parked", &self.lock().parked)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Table {
    entries: Vec<Entry>,
    /// Entries free to be handed out again.
    free: Vec<u32>,
    parked: usize,
    /// The listener has drained: nothing more is parked.
    closed: bool,
}

/// A place in the lot. `round` changes each time the place is emptied, and is part of the
/// socket's token: an event for the place's previous socket finds nothing.
#[derive(Default)]
struct Entry {
    round: u32,
    held: Option<Held>,
}

struct Held {
    stream: std::net::TcpStream,
    parked: Parked,
    /// The end of its idle time.
    deadline: Instant,
}

/// The token the thread is woken with to stop.
const STOP: Token = Token(usize::MAX);

fn token(index: u32, round: u32) -> Token {
    Token((usize::try_from(round).unwrap_or(0) << 32) | usize::try_from(index).unwrap_or(0))
}

fn untoken(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

impl Lot {
    /// A lot and its thread, which runs until [`Lot::close`]; `listener` labels its gauge.
    pub fn start(listener: &'static str, resume: Resume) -> std::io::Result<Arc<Lot>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), STOP)?;
        let lot = Arc::new(Lot {
            table: Mutex::default(),
            registry,
            waker,
            resume,
            gauge: metrics::gauge!(crate::telemetry::CONNECTIONS_PARKED, crate::telemetry::L_LISTENER => listener),
        });
        let watched = Arc::clone(&lot);
        std::thread::Builder::new()
            .name("frontdoor-park".into())
            .stack_size(256 * 1024)
            .spawn(move || watched.watch(poll))?;
        Ok(lot)
    }

    /// Parks `stream` until it is readable or `deadline` passes. Dropped (closed) if the lot
    /// is closed or the socket cannot be watched.
    pub fn park(&self, stream: tokio::net::TcpStream, parked: Parked, deadline: Instant) {
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let fd = stream.as_raw_fd();
        let mut t = self.lock();
        if t.closed {
            return;
        }
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                let Ok(i) = u32::try_from(t.entries.len()) else {
                    return;
                };
                t.entries.push(Entry::default());
                i
            }
        };
        let entry = &mut t.entries[index as usize];
        // Registered under the lock: the thread cannot see its event before the entry is there.
        let tok = token(index, entry.round);
        if self
            .registry
            .register(&mut SourceFd(&fd), tok, Interest::READABLE)
            .is_err()
        {
            t.free.push(index);
            return;
        }
        entry.held = Some(Held {
            stream,
            parked,
            deadline,
        });
        t.parked += 1;
        self.gauge.increment(1.0);
    }

    /// Closes the parked connections whose idle time ended at `now` or before.
    pub fn expire(&self, now: Instant) {
        let gone: Vec<Held> = {
            let mut t = self.lock();
            if t.parked == 0 {
                return;
            }
            let mut gone = Vec::new();
            for i in 0..t.entries.len() {
                if t.entries[i]
                    .held
                    .as_ref()
                    .is_some_and(|h| h.deadline <= now)
                    && let Some(h) = self.take(&mut t, i)
                {
                    gone.push(h);
                }
            }
            gone
        };
        // Closed outside the lock.
        drop(gone);
    }

    /// Closes every parked connection and stops the thread; nothing is parked after.
    pub fn close(&self) {
        let gone: Vec<Held> = {
            let mut t = self.lock();
            t.closed = true;
            (0..t.entries.len())
                .filter_map(|i| self.take(&mut t, i))
                .collect()
        };
        drop(gone);
        let _ = self.waker.wake();
    }

    /// Connections parked now.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Empties entry `i`, if held, and stops watching its socket.
    fn take(&self, t: &mut Table, i: usize) -> Option<Held> {
        let entry = &mut t.entries[i];
        let held = entry.held.take()?;
        entry.round = entry.round.wrapping_add(1);
        let fd: RawFd = held.stream.as_raw_fd();
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        t.free.push(i as u32);
        t.parked -= 1;
        self.gauge.decrement(1.0);
        Some(held)
    }

    /// The thread: waits for parked sockets to become readable and hands them back.
    fn watch(&self, mut poll: Poll) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(e) = poll.poll(&mut events, None) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "parked connections: poll failed; closing them");
                self.close();
                return;
            }
            let ready: Vec<Held> = {
                let mut t = self.lock();
                if t.closed {
                    return;
                }
                events
                    .iter()
                    .filter(|e| e.token() != STOP)
                    .filter_map(|e| {
                        let (i, round) = untoken(e.token());
                        let current = t.entries.get(i).is_some_and(|en| en.round == round);
                        if current { self.take(&mut t, i) } else { None }
                    })
                    .collect()
            };
            for held in ready {
                (self.resume)(held.stream, held.parked);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Closes expired parked connections every [`SWEEP_EVERY`](super::slots::SWEEP_EVERY) while
/// the lot is there.
pub async fn sweep(lot: Weak<Lot>) {
    every_sweep(move |now| lot.upgrade().map(|l| l.expire(now)).is_some()).await;
}

/// What a plain connection's loop holds for its life: its place in the connection limits,
/// kept while it is parked in its listener's lot.
#[derive(Debug)]
pub struct Keeper {
    slot: Option<ConnSlot>,
}

impl Keeper {
    pub fn new(slot: Option<ConnSlot>) -> Keeper {
        Keeper { slot }
    }
}

impl super::h1::Keep<HeadTimer<tokio::net::TcpStream>> for Keeper {
    fn park(self, io: HeadTimer<tokio::net::TcpStream>) {
        let Some(lot) = io.listener().lot.clone() else {
            return;
        };
        let (stream, served, deadline) = io.into_idle();
        lot.park(
            stream,
            Parked {
                served,
                slot: self.slot,
            },
            deadline,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::*;

    /// A lot whose resumed connections come out of the channel.
    fn lot() -> (
        Arc<Lot>,
        mpsc::UnboundedReceiver<(std::net::TcpStream, Parked)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let resume: Resume = Box::new(move |s, p| {
            let _ = tx.send((s, p));
        });
        (Lot::start("test", resume).expect("lot"), rx)
    }

    /// A connected pair: (the client's end, the server's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    fn in_a_minute() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// A connection parked after `served` requests, until `deadline`: its client's end.
    async fn parked(lot: &Lot, served: u32, deadline: Instant) -> TcpStream {
        let (client, server) = pair().await;
        lot.park(server, Parked { served, slot: None }, deadline);
        client
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_when_its_client_sends() {
        let (lot, mut resumed) = lot();
        let mut quiet = parked(&lot, 7, in_a_minute()).await;
        let mut client = parked(&lot, 3, in_a_minute()).await;
        assert_eq!(lot.parked(), 2);

        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let (stream, parked) = resumed.recv().await.expect("resumed");
        assert_eq!(parked.served, 3, "the connection that sent came back");
        assert_eq!(lot.parked(), 1);
        // The bytes wait for the new task, and the socket is the runtime's again.
        let mut stream = TcpStream::from_std(stream).expect("registers");
        let mut got = [0u8; 18];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        stream.write_all(b"ok").await.expect("write");
        let mut ok = [0u8; 2];
        client.read_exact(&mut ok).await.expect("answer");

        // A client that closes comes back too (its task sees the end and closes).
        drop(quiet.shutdown().await);
        let (stream, parked) = resumed.recv().await.expect("resumed");
        assert_eq!(parked.served, 7);
        let mut stream = TcpStream::from_std(stream).expect("registers");
        assert_eq!(stream.read(&mut ok).await.expect("read"), 0);
        assert_eq!(lot.parked(), 0);
        lot.close();
    }

    #[tokio::test]
    async fn expired_connections_are_closed_and_places_are_reused() {
        let (lot, mut resumed) = lot();
        let now = Instant::now();
        let mut expired = parked(&lot, 1, now).await;
        let mut kept = parked(&lot, 2, in_a_minute()).await;
        lot.expire(now);
        assert_eq!(lot.parked(), 1);
        let mut buf = [0u8; 1];
        assert_eq!(expired.read(&mut buf).await.expect("closed"), 0);

        // The freed place is handed out again; the expired socket's token finds nothing.
        let mut again = parked(&lot, 3, in_a_minute()).await;
        assert_eq!(lot.lock().entries.len(), 2);
        again.write_all(b"x").await.expect("write");
        let (_, back) = resumed.recv().await.expect("resumed");
        assert_eq!(back.served, 3);
        kept.write_all(b"x").await.expect("write");
        let (_, back) = resumed.recv().await.expect("resumed");
        assert_eq!(back.served, 2);
        lot.close();
    }

    #[tokio::test]
    async fn closing_the_lot_closes_what_it_holds_and_refuses_more() {
        let limits = super::super::ConnLimits::new(10, 1);
        let ip = "127.0.0.1".parse().expect("ip");
        let (lot, _resumed) = lot();
        let (mut client, server) = pair().await;
        let slot = limits.admit(Some(ip)).expect("admitted");
        lot.park(
            server,
            Parked {
                served: 1,
                slot: Some(slot),
            },
            in_a_minute(),
        );
        // Parked, it still holds its place in the limits.
        assert!(limits.admit(Some(ip)).is_err());
        lot.close();
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.expect("closed"), 0);
        assert!(limits.admit(Some(ip)).is_ok(), "the place was given back");

        let mut late = parked(&lot, 1, in_a_minute()).await;
        assert_eq!(lot.parked(), 0);
        assert_eq!(late.read(&mut buf).await.expect("closed"), 0);
    }
}
