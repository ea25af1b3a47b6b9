//! A [`Relay`] whose far end is the test itself: each session the proxy relays arrives as a
//! [`FarEnd`] holding the join request, the commands the proxy forwarded (after its policy),
//! and a sender for the events the media server would push.
//!
//! The real path (proxy -> rtcd relay -> rtcd) is covered by the `relay`, `dev` and browser
//! call tests; this stand-in is for what a real rtcd cannot be made to do on cue: scripted room
//! events, a `negotiation_needed` at a chosen moment, an answer that never comes, a session
//! closed with a chosen reason ([`RelayEvent::Closed`]), and the loss of the media server (drop
//! [`FarEnd::events`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rtcd_proxy::policy::TrackSource;
use rtcd_proxy::relay::{
    BoxFuture, JoinRequest, LINK_CAPACITY, Relay, RelayCommand, RelayError, RelayEvent, RelayLink,
};
use tokio::sync::mpsc;

/// One relayed session, seen from the media server's side.
pub struct FarEnd {
    /// What the proxy asked for (identity, room, permissions).
    pub request: JoinRequest,
    /// Commands the proxy relayed, in order.
    pub commands: rtcd_kit::queue::Receiver<RelayCommand>,
    /// Events to push to the client; dropping it is "the media server is gone".
    pub events: rtcd_kit::queue::Sender<RelayEvent>,
}

impl FarEnd {
    /// The next relayed command, or an error after `wait`.
    pub async fn command(&mut self, wait: Duration) -> anyhow::Result<RelayCommand> {
        tokio::time::timeout(wait, self.commands.recv())
            .await
            .context("no command relayed in time")?
            .context("the session ended")
    }

    /// The next relayed offer `(sdp, tracks)`, skipping other commands (candidates...).
    pub async fn offer(
        &mut self,
        wait: Duration,
    ) -> anyhow::Result<(String, BTreeMap<String, TrackSource>)> {
        loop {
            if let RelayCommand::Offer { sdp, tracks } = self.command(wait).await? {
                return Ok((sdp, tracks));
            }
        }
    }

    /// Pushes an event to the client.
    pub async fn send(&self, event: RelayEvent) -> anyhow::Result<()> {
        self.events
            .send(event)
            .await
            .map_err(|_| anyhow::anyhow!("the session ended"))
    }
}

/// The relay; sessions arrive on the receiver returned by [`ScriptedRelay::start`].
pub struct ScriptedRelay(mpsc::UnboundedSender<FarEnd>);

impl ScriptedRelay {
    /// A relay for `rtcd_e2e::proxy::start_with_relay`, and where its sessions arrive.
    pub fn start() -> (Arc<dyn Relay>, mpsc::UnboundedReceiver<FarEnd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self(tx)), rx)
    }
}

impl Relay for ScriptedRelay {
    fn join(&self, request: JoinRequest) -> BoxFuture<'_, Result<RelayLink, RelayError>> {
        Box::pin(async move {
            let (commands, command_rx) = rtcd_kit::queue::channel(LINK_CAPACITY);
            let (events, event_rx) = rtcd_kit::queue::channel(LINK_CAPACITY);
            self.0
                .send(FarEnd {
                    request,
                    commands: command_rx,
                    events,
                })
                .map_err(|_| RelayError::Unavailable("the test stopped listening".into()))?;
            Ok(RelayLink {
                commands,
                events: event_rx,
                waiting: None,
                resume_token: None,
                resumed: None,
                e2ee: false,
            })
        })
    }
}
