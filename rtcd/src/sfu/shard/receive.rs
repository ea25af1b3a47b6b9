//! The receive thread: one `recvmmsg` loop on the shared UDP port, routing each datagram to the
//! worker that owns its session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use super::{Datagram, DemuxUpdate, SessionKey};
use crate::engine::net::Transport;
use crate::engine::net::demux::{Demux, Route};
use crate::engine::net::udp::{BatchSocket, RecvBatch};

/// Owns the demultiplexer; see the module docs of `shard`.
pub(super) struct Receiver {
    pub socket: Arc<BatchSocket>,
    /// The address of our candidate (what the peers' ICE agents know us by).
    pub local: SocketAddr,
    pub workers: Vec<mpsc::Sender<Datagram>>,
    pub updates: std::sync::mpsc::Receiver<DemuxUpdate>,
    pub stop: Arc<AtomicBool>,
    /// `rtcd_media_dropped_datagrams_total{reason="worker_behind"}`.
    pub dropped_behind: Counter,
    /// `rtcd_media_dropped_datagrams_total{reason="no_session"}`.
    pub dropped_unknown: Counter,
}

impl Receiver {
    pub(super) fn run(self) {
        let mut demux: Demux<SessionKey> = Demux::default();
        let mut batch = RecvBatch::new();
        let mut overflow = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            let n = match self.socket.recv_batch(&mut batch) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "media UDP socket broken; no more media is received");
                    return;
                }
            };
            // Registrations first: the answer naming a ufrag went out before its checks came.
            self.apply_updates(&mut demux);
            if n == 0 {
                continue;
            }
            for (i, (peer, data)) in batch.iter().enumerate() {
                let transport = Transport::udp(self.local, peer);
                let key = match demux.route(transport, data) {
                    Route::Known(k) | Route::Learned(k) => k,
                    Route::Unknown | Route::Drop => {
                        self.dropped_unknown.inc();
                        let dropped = demux.stats().unknown + demux.stats().dropped;
                        if dropped.is_power_of_two() {
                            tracing::debug!(%peer, dropped, ufrag = ?crate::engine::net::demux::binding_request_local_ufrag(data).ok(), "datagrams for no session");
                        }
                        continue;
                    }
                };
                let worker = (key >> 48) as usize;
                let Some(inbox) = self.workers.get(worker) else {
                    continue;
                };
                let datagram = Datagram {
                    key,
                    transport,
                    data: BytesMut::from(data),
                    arrived: batch.arrived(i).unwrap_or_else(Instant::now),
                };
                match inbox.try_send(datagram) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.dropped_behind.inc();
                        overflow += 1;
                        if overflow.is_power_of_two() {
                            tracing::warn!(
                                worker,
                                dropped = overflow,
                                "a media worker is behind; datagrams dropped"
                            );
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    }

    fn apply_updates(&self, demux: &mut Demux<SessionKey>) {
        while let Ok(update) = self.updates.try_recv() {
            match update {
                DemuxUpdate::Register { key, ufrag } => {
                    if let Err(e) = demux.register(key, &ufrag) {
                        tracing::debug!(error = %e, "ufrag not registered");
                    }
                }
                DemuxUpdate::Remove { key } => demux.remove(key),
            }
        }
    }
}
