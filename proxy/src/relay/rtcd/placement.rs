//! Placement: which host a room lives on (rendezvous hashing over ready hosts, hosts that
//! already have it first), and healing a room opened on two hosts at once.

use super::*;

/// Whether placing may claim a room that has no claim yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// A join: claims the room on the host it picks.
    Create,
    /// A resume or a room administration call: reads the claim only.
    Read,
}

impl RtcdRelay {
    /// The host `room` lives on or is placed on (sessions and room administration alike), or
    /// why there is none. With several ready hosts, they are asked first whether they have the
    /// room (`Rooms.HasRoom`): placement is weighted by load, and a room placed while the
    /// weights were different must be found where it is, not opened a second time.
    /// In cluster mode it only reads the room's claim (a resume or an administration call
    /// opens no room, so it claims none: the first join does).
    pub(super) async fn place(&self, room: &str) -> Result<(String, Arc<Host>), &'static str> {
        self.place_as(room, &[], Claim::Read)
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
        self.place_as(room, except, Claim::Create).await
    }

    async fn place_as(
        &self,
        room: &str,
        except: &[String],
        claim: Claim,
    ) -> Result<(String, Arc<Host>, bool), &'static str> {
        if let Some(cluster) = self.cluster.get() {
            match self.place_claimed(cluster, room, except, claim).await {
                Ok(Some((key, host))) => return Ok((key, host, true)),
                Ok(None) => return Err("no media server is ready"),
                // The rule while the store is out of reach: place as without it (ask the hosts,
                // then rendezvous), which a race between replicas may split and a later join
                // heals, as in the multi-host mode without a store.
                Err(e) => {
                    cluster.count(Placement::Fallback);
                    tracing::warn!(room, error = %e, "cannot read or claim the room's placement in the cluster store; placing without it");
                }
            }
        }
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

    /// Placement by claim (cluster mode): the room's claim in the store names its host; the
    /// first join of a room claims it on the host placement picks, with a compare-and-swap
    /// bound to that host's lease (a host that dies takes its claims with it), so two replicas
    /// racing for a new room agree on the one that won. A claim naming a host that is gone,
    /// unready (draining) or in `except` (it just failed this join) is replaced the same way.
    /// `None`: no host is ready.
    async fn place_claimed(
        &self,
        cluster: &ClusterLink,
        room: &str,
        except: &[String],
        claim_as: Claim,
    ) -> Result<Option<(String, Arc<Host>)>, StoreError> {
        let key = claim_key(&self.client_id, room);
        let mut moved = false;
        // A few rounds: each is a read or a compare-and-swap that someone else's change beat.
        for _ in 0..4 {
            let claim = cluster.store.get(&key).await?;
            if let Some(claim) = &claim {
                let holder = String::from_utf8_lossy(&claim.value).into_owned();
                if !except.contains(&holder)
                    && self.hosts.is_ready(&holder)
                    && let Some(host) = self.channel(&holder)
                {
                    if claim_as == Claim::Create {
                        cluster.count(Placement::Found);
                    }
                    return Ok(Some((holder, host)));
                }
            }
            if claim_as == Claim::Read {
                // Not opened anywhere, or claimed on a host that is gone or unready (whoever
                // joins next moves the claim): where its next join would go, unclaimed.
                return Ok(self
                    .hosts
                    .place_except(room, except)
                    .and_then(|pick| self.channel(&pick).map(|host| (pick, host))));
            }
            if let Some(claim) = claim {
                tracing::info!(room, host = %String::from_utf8_lossy(&claim.value), "the room's claimed host is gone or unready; claiming it elsewhere");
                cluster.store.delete_if(&key, claim.mod_revision).await?;
                moved = true;
                continue;
            }
            let Some(pick) = self.hosts.place_except(room, except) else {
                return Ok(None);
            };
            let lease = cluster
                .hosts
                .get(&announcement_key(&pick))
                .and_then(|announcement| announcement.lease);
            match cluster
                .store
                .create(&key, pick.clone().into_bytes(), lease)
                .await
            {
                Ok(Created::Won(_)) => {
                    if let Some(host) = self.channel(&pick) {
                        cluster.count(if moved {
                            Placement::Moved
                        } else {
                            Placement::Claimed
                        });
                        return Ok(Some((pick, host)));
                    }
                }
                // Another replica claimed it first: read its claim in the next round.
                Ok(Created::Taken(_)) => {}
                // The host's lease ended between its announcement and this claim: it is gone.
                Err(StoreError::LeaseExpired(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "the claim of room {room} kept changing"
        )))
    }

    /// The channel of the host with `key`, if it is still known.
    fn channel(&self, key: &str) -> Option<Arc<Host>> {
        self.channels
            .lock()
            .expect("channel map lock is never poisoned")
            .get(key)
            .cloned()
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
