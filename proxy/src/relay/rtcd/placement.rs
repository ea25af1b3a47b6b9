//! Placement: which host a room lives on (rendezvous hashing over ready hosts, hosts that
//! already have it first), and healing a room opened on two hosts at once.

use super::*;

impl RtcdRelay {
    /// The host `room` lives on or is placed on (sessions and room administration alike), or
    /// why there is none. With several ready hosts, they are asked first whether they have the
    /// room (`Rooms.HasRoom`): placement is weighted by load, and a room placed while the
    /// weights were different must be found where it is, not opened a second time.
    pub(super) async fn place(&self, room: &str) -> Result<(String, Arc<Host>), &'static str> {
        self.place_found(room, &[])
            .await
            .map(|(key, host, _)| (key, host))
    }

    /// [`RtcdRelay::place`] among the ready hosts not in `except`, and whether the room was
    /// found on its host (false: the host is where a new room goes).
    pub(super) async fn place_found(
        &self,
        room: &str,
        except: &[String],
    ) -> Result<(String, Arc<Host>, bool), &'static str> {
        let ready: Vec<_> = self
            .all_hosts(true)
            .into_iter()
            .filter(|(k, _)| !except.contains(k))
            .collect();
        if ready.len() > 1
            && let Some((key, host)) = self.locate(room, &ready).await
        {
            return Ok((key, host, true));
        }
        let key = self
            .hosts
            .place_except(room, except)
            .ok_or("no media server is ready")?;
        let host = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .get(&key)
            .cloned()
            .ok_or("media server went away")?;
        Ok((key, host, false))
    }

    /// The ready host that has `room` (sessions or people waiting), if any answers so within
    /// [`LOCATE_TIMEOUT`]; a host that does not answer is skipped (its room, if any, is lost
    /// with it, and the passive health check will mark it). If several have it (a split, see
    /// [`RtcdRelay::heal`]), the one with the smallest key, which every replica agrees on; the
    /// others are told to move the room there.
    pub(super) async fn locate(
        &self,
        room: &str,
        hosts: &[(String, Arc<Host>)],
    ) -> Option<(String, Arc<Host>)> {
        let mut present = self.present(room, hosts).await;
        present.sort_by(|a, b| a.0.cmp(&b.0));
        if present.len() > 1 {
            self.spawn_heal(room, Duration::ZERO);
        }
        present.into_iter().next()
    }

    /// The hosts among `hosts` that say they have `room` within [`LOCATE_TIMEOUT`].
    pub(super) async fn present(
        &self,
        room: &str,
        hosts: &[(String, Arc<Host>)],
    ) -> Vec<(String, Arc<Host>)> {
        let request = pb::HasRoomRequest {
            call_id: room.to_owned(),
        };
        let asks = hosts.iter().map(|(key, host)| {
            let request = request.clone();
            async move {
                let answer =
                    tokio::time::timeout(
                        LOCATE_TIMEOUT,
                        self.rooms_call(key, host, request, |mut c, r| async move {
                            c.has_room(r).await
                        }),
                    )
                    .await;
                matches!(answer, Ok(Ok(pb::HasRoomResponse { present: true })))
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        hosts
            .iter()
            .zip(answers)
            .filter(|(_, present)| *present)
            .map(|((k, h), _)| (k.clone(), h.clone()))
            .collect()
    }

    /// Checks `room` again after `delay` (in the background) and heals a split.
    pub(super) fn spawn_heal(&self, room: &str, delay: Duration) {
        if let Some(relay) = self.this.upgrade() {
            let room = room.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                relay.heal(&room).await;
            });
        }
    }

    /// Two replicas that place the first joins of a new room at the same moment, while they
    /// see different load levels (probes seconds apart), can open it on two hosts: a split
    /// room, whose two halves do not see each other. When `room` is on several ready hosts,
    /// it stays on the one with the smallest key (every replica agrees on it, whatever the
    /// loads) and the others close their sessions of it ("moved", `Rooms.MoveRoom`); those
    /// clients rejoin and [`RtcdRelay::locate`] finds the room on that host.
    pub(super) async fn heal(&self, room: &str) {
        let ready = self.all_hosts(true);
        if ready.len() < 2 {
            return;
        }
        let mut present = self.present(room, &ready).await;
        if present.len() < 2 {
            return;
        }
        present.sort_by(|a, b| a.0.cmp(&b.0));
        let request = pb::MoveRoomRequest {
            call_id: room.to_owned(),
        };
        for (key, host) in &present[1..] {
            let moved = self
                .rooms_call(key, host, request.clone(), |mut c, r| async move {
                    c.move_room(r).await
                })
                .await;
            tracing::info!(room, from = %key, to = %present[0].0, moved = ?moved.map(|r| r.sessions_closed), "a room opened on two hosts at once; moving it to one");
        }
    }

    /// [`RtcdRelay::place`] for room administration.
    pub(super) async fn host_for(&self, room: &str) -> Result<(String, Arc<Host>), ControlError> {
        self.place(room)
            .await
            .map_err(|e| ControlError::Unavailable(e.into()))
    }

    /// Every known host (`ready_only`: only those that answer `/readyz`).
    pub(super) fn all_hosts(&self, ready_only: bool) -> Vec<(String, Arc<Host>)> {
        let channels = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned");
        self.hosts
            .snapshot()
            .into_iter()
            .filter(|(_, h)| !ready_only || *h == HostHealth::Ready)
            .filter_map(|(k, _)| channels.get(&k).map(|h| (k, h.clone())))
            .collect()
    }
}
