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
    pub local: SocketAddr,
    /// The worker this receiver belongs to: its datagrams are not queued.
    pub own: usize,
    /// Every worker's datagram queue, by index.
    pub workers: Vec<mpsc::Sender<Datagram>>,
    pub updates: std::sync::mpsc::Receiver<DemuxUpdate>,
    /// `rtcd_media_dropped_datagrams_total{reason="worker_behind"}`.
    pub dropped_behind: Counter,
    /// `rtcd_media_dropped_datagrams_total{reason="no_session"}`.
    pub dropped_unknown: Counter,
    /// `rtcd_media_dropped_datagrams_total{reason="socket_full"}`: what the kernel dropped
    /// while this worker was behind (no queue of ours in between any more).
    pub dropped_full: Counter,
    /// The kernel's count of those as last read (`UdpStats::overflowed`).
    pub overflowed_seen: u64,
    /// How often it grew, for the log's rate limit.
    pub overflow_reports: u64,
    pub demux: Demux<SessionKey>,
    pub batch: RecvBatch,
    /// Datagrams dropped because a worker was behind, for the log's rate limit.
    pub overflow: u64,
}

impl Receiver {
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
                    self.dropped_unknown.inc();
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
                    self.dropped_behind.inc();
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
        self.dropped_full.inc_by(dropped);
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
    use crate::engine::net::udp::UdpConfig;

    /// A STUN Binding request naming `username` (RFC 8489: header, then USERNAME padded to 4).
    fn binding(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        attr.resize(attr.len().next_multiple_of(4), 0);
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

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
        let mut receiver = Receiver {
            socket: socket.clone(),
            local: socket.local_addr(),
            own: 0,
            workers: vec![to_0, to_1],
            updates: updates_rx,
            dropped_behind: Counter::default(),
            dropped_unknown: Counter::default(),
            dropped_full: Counter::default(),
            overflowed_seen: 0,
            overflow_reports: 0,
            demux: Demux::default(),
            batch: RecvBatch::new(),
            overflow: 0,
        };
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
        assert_eq!(receiver.dropped_unknown.get(), 2);
        let empty = receiver
            .receive(|_, _, _, _| panic!("nothing left"))
            .unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }
}
