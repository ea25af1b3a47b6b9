//! The receiving half of worker 0: the shared UDP port, read with `recvmmsg` when the worker's
//! reactor says it is readable, each datagram routed by the demultiplexer to the worker that
//! owns its session. Worker 0's own datagrams are handled where they were read; the others'
//! are queued to their workers.
//!
//! Why not a thread of its own (as before issue 33): the media path is short (decrypt,
//! forward, encrypt), so handing every small batch to another thread cost a wake-up and a
//! context switch per batch, about as much as the work itself in a two-person call. On a host
//! where rtcd has one core, nothing is handed off now; with more, the datagrams of calls on
//! worker 0 are not.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::{Datagram, DemuxUpdate, SessionKey};
use crate::engine::net::Transport;
use crate::engine::net::demux::{Demux, Route};
use crate::engine::net::udp::{BatchSocket, RecvBatch};

/// Owns the demultiplexer; see the module docs.
pub(super) struct Receiver {
    pub socket: Arc<BatchSocket>,
    /// The address of our candidate (what the peers' ICE agents know us by).
    local: SocketAddr,
    /// The worker this receiver belongs to: its datagrams are not queued.
    own: usize,
    /// Every worker's datagram queue, by index.
    workers: Vec<mpsc::Sender<Datagram>>,
    updates: std::sync::mpsc::Receiver<DemuxUpdate>,
    drops: Drops,
    /// The kernel's count of `socket_full` drops as last read (`UdpStats::overflowed`).
    overflowed_seen: u64,
    /// How often it grew, for the log's rate limit.
    overflow_reports: u64,
    demux: Demux<SessionKey>,
    batch: RecvBatch,
    /// Datagrams dropped because a worker was behind, for the log's rate limit.
    overflow: u64,
}

/// The receiver's series of `rtcd_media_dropped_datagrams_total`.
pub(super) struct Drops {
    /// `reason="worker_behind"`.
    pub behind: Counter,
    /// `reason="no_session"`.
    pub unknown: Counter,
    /// `reason="socket_full"`: what the kernel dropped while the receiving worker was behind
    /// (no queue of ours in between any more).
    pub full: Counter,
}

impl Receiver {
    /// The receiver of worker `own`, routing to `workers` (every worker's queue, by index) as
    /// `updates` register and remove sessions; `local` is our candidate's address.
    pub(super) fn new(
        socket: Arc<BatchSocket>,
        local: SocketAddr,
        own: usize,
        workers: Vec<mpsc::Sender<Datagram>>,
        updates: std::sync::mpsc::Receiver<DemuxUpdate>,
        drops: Drops,
    ) -> Self {
        Self {
            socket,
            local,
            own,
            workers,
            updates,
            drops,
            overflowed_seen: 0,
            overflow_reports: 0,
            demux: Demux::default(),
            batch: RecvBatch::new(),
            overflow: 0,
        }
    }

    /// Reads one batch without waiting (`Err` of kind `WouldBlock`: the socket is empty; any
    /// other `Err`: the socket is broken) and routes it: other workers' datagrams are queued
    /// first, so they never wait for this worker's own, then `own` gets each of this worker's.
    pub(super) fn receive(
        &mut self,
        mut own: impl FnMut(SessionKey, Transport, &[u8], Instant),
    ) -> io::Result<usize> {
        let n = self.socket.try_recv_batch(&mut self.batch)?;
        // Registrations first: the answer naming a ufrag went out before its checks came.
        self.apply_updates();
        if n == 0 {
            return Ok(0);
        }
        self.count_overflow();
        // This worker's datagrams (batch index, session), handled after the others are queued.
        let mut mine = [(0usize, 0 as SessionKey); crate::engine::net::udp::RECV_BATCH];
        let mut mine_len = 0;
        for (i, (peer, data)) in self.batch.iter().enumerate() {
            let transport = Transport::udp(self.local, peer);
            let key = match self.demux.route(transport, data) {
                Route::Known(k) | Route::Learned(k) => k,
                Route::Unknown | Route::Drop => {
                    self.drops.unknown.inc();
                    let dropped = self.demux.stats().unknown + self.demux.stats().dropped;
                    if dropped.is_power_of_two() {
                        tracing::debug!(%peer, dropped, ufrag = ?crate::engine::net::demux::binding_request_local_ufrag(data).ok(), "datagrams for no session");
                    }
                    continue;
                }
            };
            let worker = (key >> 48) as usize;
            if worker == self.own {
                mine[mine_len] = (i, key);
                mine_len += 1;
                continue;
            }
            let Some(inbox) = self.workers.get(worker) else {
                continue;
            };
            let datagram = Datagram {
                key,
                transport,
                data: BytesMut::from(data),
                arrived: self.batch.arrived(i).unwrap_or_else(Instant::now),
            };
            match inbox.try_send(datagram) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.drops.behind.inc();
                    self.overflow += 1;
                    if self.overflow.is_power_of_two() {
                        tracing::warn!(
                            worker,
                            dropped = self.overflow,
                            "a media worker is behind; datagrams dropped"
                        );
                    }
                }
                // That worker has stopped (shutdown): nothing to deliver to.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for &(i, key) in &mine[..mine_len] {
            if let (Some((peer, data)), Some(arrived)) = (self.batch.get(i), self.batch.arrived(i))
            {
                own(key, Transport::udp(self.local, peer), data, arrived);
            }
        }
        Ok(n)
    }

    /// Counts what the kernel dropped for a full receive buffer since the last batch.
    fn count_overflow(&mut self) {
        let total = self.socket.overflowed();
        if total <= self.overflowed_seen {
            return;
        }
        let dropped = total - self.overflowed_seen;
        self.overflowed_seen = total;
        self.drops.full.inc_by(dropped);
        self.overflow_reports += 1;
        if self.overflow_reports.is_power_of_two() {
            tracing::warn!(
                dropped,
                total,
                "the media port's receive buffer overflowed; datagrams dropped (the host is out of CPU)"
            );
        }
    }

    fn apply_updates(&mut self) {
        while let Ok(update) = self.updates.try_recv() {
            match update {
                DemuxUpdate::Register { key, ufrag } => {
                    if let Err(e) = self.demux.register(key, &ufrag) {
                        tracing::debug!(error = %e, "ufrag not registered");
                    }
                }
                DemuxUpdate::Remove { key } => self.demux.remove(key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::engine::net::demux::tests::binding;
    use crate::engine::net::udp::UdpConfig;

    #[test]
    fn other_workers_datagrams_are_queued_before_its_own_are_handled_in_place() {
        let socket = Arc::new(
            BatchSocket::bind("127.0.0.1:0".parse().unwrap(), &UdpConfig::default()).unwrap(),
        );
        let (to_0, mut inbox_0) = mpsc::channel(16);
        let (to_1, mut inbox_1) = mpsc::channel(16);
        let (updates, updates_rx) = std::sync::mpsc::channel();
        let (mine, theirs): (SessionKey, SessionKey) = (1, (1 << 48) | 2);
        updates
            .send(DemuxUpdate::Register {
                key: mine,
                ufrag: "mine".into(),
            })
            .unwrap();
        updates
            .send(DemuxUpdate::Register {
                key: theirs,
                ufrag: "them".into(),
            })
            .unwrap();
        let mut receiver = Receiver::new(
            socket.clone(),
            socket.local_addr(),
            0,
            vec![to_0, to_1],
            updates_rx,
            Drops {
                behind: Counter::default(),
                unknown: Counter::default(),
                full: Counter::default(),
            },
        );
        let client = || UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b, stranger) = (client(), client(), client());
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        let to = socket.local_addr();
        a.send_to(&binding("mine:x"), to).unwrap();
        b.send_to(&binding("them:y"), to).unwrap();
        stranger.send_to(&binding("nobody:z"), to).unwrap();
        a.send_to(&rtp, to).unwrap();
        b.send_to(&rtp, to).unwrap();
        stranger.send_to(&rtp, to).unwrap();

        let mut handled = Vec::new();
        let n = receiver
            .receive(|key, transport, data, _| {
                // Everything for the other worker is already in its queue.
                assert_eq!(inbox_1.len(), 2);
                handled.push((key, transport.peer, data.to_vec()));
            })
            .unwrap();
        assert_eq!(n, 6);
        let a_addr = a.local_addr().unwrap();
        assert_eq!(
            handled,
            vec![
                (mine, a_addr, binding("mine:x")),
                (mine, a_addr, rtp.to_vec())
            ]
        );
        let queued: Vec<_> = std::iter::from_fn(|| inbox_1.try_recv().ok()).collect();
        assert_eq!(queued.len(), 2);
        assert!(queued.iter().all(|d| d.key == theirs));
        assert_eq!(queued[0].transport.peer, b.local_addr().unwrap());
        assert_eq!(&queued[1].data[..], &rtp[..]);
        assert!(inbox_0.try_recv().is_err(), "its own are never queued");
        assert_eq!(receiver.drops.unknown.get(), 2);
        let empty = receiver
            .receive(|_, _, _, _| panic!("nothing left"))
            .unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }
}
