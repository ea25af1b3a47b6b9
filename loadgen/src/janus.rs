//! Target "janus": Janus 1.x VideoRoom through its WebSocket API (subprotocol `janus-protocol`),
//! driven by the same str0m peers as our stack, so that clients and measurements are identical.
//!
//! One participant = one Janus session with two handles, as a Janus web client has:
//! * the publisher handle joins room `call` with `joinandconfigure` carrying the participant's
//!   own offer (its tracks, or the single receive-only audio section a participant that
//!   publishes nothing offers to our stack too). The offer is the very SDP our stack gets, so
//!   the join time (start to that connection's ICE connected) means the same on both targets,
//!   and a participant without tracks (the join storm) still has a connection to time;
//! * the subscriber handle joins as `ptype: subscriber` with the `streams` of every other
//!   publisher (multistream), Janus offers, a second, receive-only peer answers with `start`.
//!   Publishers that appear later (`publishers` events on the publisher handle) are added with
//!   `subscribe`; Janus renegotiates with `updated` offers (postponing and merging them itself
//!   while an answer is pending), each answered with `start`.
//!
//! Janus gathers all its candidates before it sends an SDP (no full trickle), and our peers put
//! their one host candidate in theirs, so offers and answers go with `trickle: false`; candidates
//! Janus trickles anyway are passed on. Janus skips loopback interfaces when gathering, so media
//! needs an address on a real interface: `tests/bench/compare.sh` runs everything in a network
//! namespace with a veth pair.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_util::sync::CancellationToken;

use super::peer::{self, FromPeer, PeerConfig, PeerOutcome, ToPeer};
use super::stats::Counters;

/// Janus drops a session after `session_timeout` (60 s by default) without a request.
const KEEPALIVE: Duration = Duration::from_secs(25);
/// How long a synchronous request (create, attach, create room) may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long leaving (destroying the session) may take once the run stops.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// VideoRoom error codes (janus_videoroom.c) that are not failures here.
const ROOM_EXISTS: i64 = 427;
const NO_SUCH_FEED: i64 = 428;
/// Room capacity: every participant joins as a publisher (those without tracks too), so the
/// room must admit all of them; above any scenario's participants per call.
const MAX_PUBLISHERS: usize = 1000;
/// Signaling is a handful of messages per connection: a full channel means the other side is
/// stuck, and waiting (back-pressure) is the right policy.
const SIGNAL_QUEUE: usize = 16;

/// The VideoRoom room number of call `call`. Rooms are numbered from a base taken once per
/// process from the clock, so that a second run against the same Janus never lands in a room
/// an earlier run created (rooms persist until Janus restarts, with their old settings).
pub fn room_number(call: usize) -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Below 2^53, so that JavaScript-minded JSON parsers in Janus's tooling agree.
        1_000_000 + (secs % 1_000_000) * 10_000
    });
    base + call as u64
}

/// One participant in the VideoRoom room of `call`: joins (publishing its tracks, if any),
/// subscribes to everyone else, and relays signaling until `stop`. Its join time is the
/// publisher connection's; its loss is what the subscriber connection received.
pub async fn participant(
    ws_url: String,
    call: usize,
    index: usize,
    config: PeerConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> PeerOutcome {
    let started = Instant::now();
    let mut participant = Participant {
        room: room_number(call),
        display: format!("lg-{call}-{index}"),
        config,
        counters: counters.clone(),
        started,
        publisher_handle: 0,
        me: None,
        private_id: None,
        subscriber: Subscriber::default(),
    };
    let peers_stop = stop.child_token();
    let mut links = Links {
        publisher: None,
        subscriber: None,
    };
    let relay_error = participant
        .run(&ws_url, &mut links, &stop, &peers_stop)
        .await
        .err()
        .map(|e| format!("{e:#}"));
    peers_stop.cancel();

    let publisher = match links.publisher {
        Some(link) => Some(link.finish().await),
        None => None,
    };
    let subscriber = match links.subscriber {
        Some(link) => Some(link.finish().await),
        None => None,
    };
    let join_time = publisher.as_ref().and_then(|o| o.join_time);
    if join_time.is_none() {
        counters.failed.fetch_add(1, Relaxed);
    }
    let error = relay_error
        .or_else(|| publisher.as_ref().and_then(|o| o.error.clone()))
        .or_else(|| subscriber.as_ref().and_then(|o| o.error.clone()));
    PeerOutcome {
        join_time,
        // The publisher connection is send-only: what arrived, arrived on the subscriber's.
        loss: subscriber.map(|o| o.loss).unwrap_or_default(),
        error,
    }
}

/// A running peer and its two signaling channels.
struct Link {
    to: mpsc::Sender<ToPeer>,
    from: mpsc::Receiver<FromPeer>,
    task: JoinHandle<PeerOutcome>,
}

impl Link {
    fn spawn(
        config: PeerConfig,
        started: Instant,
        counters: Arc<Counters>,
        stop: CancellationToken,
    ) -> Self {
        let (to_adapter, from) = mpsc::channel(SIGNAL_QUEUE);
        let (to, from_adapter) = mpsc::channel(SIGNAL_QUEUE);
        let task = tokio::spawn(peer::run(
            config,
            started,
            to_adapter,
            from_adapter,
            counters,
            stop,
        ));
        Self { to, from, task }
    }

    async fn send(&self, signal: ToPeer) {
        // A closed channel means the peer stopped: its outcome carries the reason.
        let _ = self.to.send(signal).await;
    }

    async fn finish(self) -> PeerOutcome {
        match self.task.await {
            Ok(outcome) => outcome,
            Err(e) => PeerOutcome {
                join_time: None,
                loss: Default::default(),
                error: Some(format!("peer task: {e}")),
            },
        }
    }
}

struct Links {
    publisher: Option<Link>,
    subscriber: Option<Link>,
}

/// The next signal from a peer that may not exist yet (pending forever if it does not).
async fn next_signal(link: Option<&mut Link>) -> Option<FromPeer> {
    match link {
        Some(link) => link.from.recv().await,
        None => std::future::pending().await,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The sending half of a Janus API connection: numbers transactions, adds the session.
struct Api {
    sink: SplitSink<Ws, Message>,
    session: Option<u64>,
    transactions: u64,
}

impl Api {
    /// Sends a request; returns its transaction.
    async fn send(&mut self, mut request: Value) -> anyhow::Result<String> {
        self.transactions += 1;
        let transaction = format!("lg{}", self.transactions);
        request["transaction"] = transaction.clone().into();
        if let Some(session) = self.session {
            request["session_id"] = session.into();
        }
        self.sink
            .send(Message::text(request.to_string()))
            .await
            .context("Janus WebSocket send")?;
        Ok(transaction)
    }

    /// Sends a VideoRoom request on `handle`, with a JSEP if given.
    async fn message(
        &mut self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<String> {
        let mut request = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        self.send(request).await
    }
}

/// Reads the next JSON message from Janus (skipping pings and the like).
async fn next_message(stream: &mut SplitStream<Ws>) -> anyhow::Result<Value> {
    loop {
        let text = match stream.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => bail!("Janus closed the WebSocket: {close:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("Janus WebSocket: {e}"),
            None => bail!("Janus WebSocket ended"),
        };
        return serde_json::from_str(&text).context("Janus sent malformed JSON");
    }
}

/// Sends `request` and waits for its reply (not the `ack`). Only used before the event loop,
/// while nothing else can arrive on the session.
async fn call(
    api: &mut Api,
    stream: &mut SplitStream<Ws>,
    request: Value,
) -> anyhow::Result<Value> {
    let transaction = api.send(request).await?;
    tokio::time::timeout(REPLY_TIMEOUT, async {
        loop {
            let reply = next_message(stream).await?;
            if reply["transaction"] == transaction.as_str() && reply["janus"] != "ack" {
                return Ok(reply);
            }
        }
    })
    .await
    .context("no reply from Janus")?
}

/// A Janus error in a reply or event (core `error`, or the plugin's `error_code`).
fn janus_error(message: &Value) -> Option<(i64, String)> {
    if message["janus"] == "error" {
        let e = &message["error"];
        return Some((
            e["code"].as_i64().unwrap_or(0),
            e["reason"].as_str().unwrap_or("(no reason)").to_owned(),
        ));
    }
    let data = &message["plugindata"]["data"];
    data["error_code"].as_i64().map(|code| {
        (
            code,
            data["error"].as_str().unwrap_or("(no reason)").to_owned(),
        )
    })
}

/// The id Janus returns in a `success` reply (session, handle).
fn success_id(reply: &Value, what: &str) -> anyhow::Result<u64> {
    if let Some((code, reason)) = janus_error(reply) {
        bail!("Janus error {code} on {what}: {reason}");
    }
    reply["data"]["id"]
        .as_u64()
        .with_context(|| format!("no id in Janus's reply to {what}: {reply}"))
}

#[derive(Debug, Default, PartialEq, Eq)]
enum SubscriberState {
    /// No subscription yet (nothing to subscribe to, or the handle is being attached).
    #[default]
    Idle,
    /// `join` sent, Janus's first offer not yet in.
    Joining,
    /// Joined: more streams go with `subscribe`.
    Joined,
}

/// The subscriber handle's bookkeeping.
#[derive(Default)]
struct Subscriber {
    handle: Option<u64>,
    /// The transaction of the pending `attach`, if one is under way.
    attaching: Option<String>,
    state: SubscriberState,
    /// Streams (feed, mid, is video) to ask for at the next opportunity.
    wanted: Vec<(u64, String, bool)>,
    /// Streams asked for already (Janus would add a duplicate m-line for a repeat).
    requested: HashSet<(u64, String)>,
}

struct Participant {
    room: u64,
    display: String,
    config: PeerConfig,
    counters: Arc<Counters>,
    started: Instant,
    publisher_handle: u64,
    /// Our publisher id in the room, once joined.
    me: Option<u64>,
    private_id: Option<u64>,
    subscriber: Subscriber,
}

impl Participant {
    async fn run(
        &mut self,
        ws_url: &str,
        links: &mut Links,
        stop: &CancellationToken,
        peers_stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut request = ws_url
            .into_client_request()
            .context("Janus WebSocket URL")?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        // Without Nagle, as browsers open their WebSockets (and as the load tool talks to ours).
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (ws, _) = tokio::time::timeout(REPLY_TIMEOUT, connect)
            .await
            .context("Janus WebSocket connect timed out")?
            .context("Janus WebSocket connect")?;
        let (sink, mut stream) = ws.split();
        let mut api = Api {
            sink,
            session: None,
            transactions: 0,
        };
        let reply = call(&mut api, &mut stream, json!({"janus": "create"})).await?;
        api.session = Some(success_id(&reply, "create session")?);
        let result = self
            .in_session(&mut api, &mut stream, links, stop, peers_stop)
            .await;
        // Leave: destroying the session hangs up both handles (bounded; Janus may be gone).
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, async {
            let Ok(transaction) = api.send(json!({"janus": "destroy"})).await else {
                return;
            };
            // Its reply first: closing at once lets Janus drop the session with the socket and
            // then refuse the destroy ("No such session").
            while let Ok(reply) = next_message(&mut stream).await {
                if reply["transaction"] == transaction.as_str() && reply["janus"] != "ack" {
                    break;
                }
            }
            let _ = api.sink.close().await;
        })
        .await;
        result
    }

    async fn in_session(
        &mut self,
        api: &mut Api,
        stream: &mut SplitStream<Ws>,
        links: &mut Links,
        stop: &CancellationToken,
        peers_stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let attach = json!({"janus": "attach", "plugin": "janus.plugin.videoroom"});
        let reply = call(api, stream, attach).await?;
        self.publisher_handle = success_id(&reply, "attach")?;

        // The first participant of a call creates its room; the others get "already exists".
        let create = json!({
            "janus": "message",
            "handle_id": self.publisher_handle,
            "body": {
                "request": "create",
                "room": self.room,
                "permanent": false,
                "description": self.display,
                "publishers": MAX_PUBLISHERS,
                // Fairness (docs/benchmarks.md): no REMB cap, no periodic key frame requests, no
                // audio level parsing, no recording, no join notifications.
                "bitrate": 0,
                "fir_freq": 0,
                "audiolevel_event": false,
                "record": false,
                "notify_joining": false,
                "audiocodec": "opus",
                "videocodec": "vp8",
            },
        });
        let reply = call(api, stream, create).await?;
        match janus_error(&reply) {
            None | Some((ROOM_EXISTS, _)) => {}
            Some((code, reason)) => {
                bail!("Janus error {code} creating room {}: {reason}", self.room)
            }
        }

        links.publisher = Some(Link::spawn(
            self.config.clone(),
            self.started,
            self.counters.clone(),
            peers_stop.clone(),
        ));
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            tokio::select! {
                // Stop first: once the run ends, everyone leaves, and Janus's renegotiations
                // and hangups that follow are not errors of this participant.
                biased;
                _ = stop.cancelled() => return Ok(()),
                _ = keepalive.tick() => {
                    api.send(json!({"janus": "keepalive"})).await?;
                }
                signal = next_signal(links.publisher.as_mut()) => match signal {
                    Some(FromPeer::Offer { sdp, .. }) => {
                        let body = json!({
                            "request": "joinandconfigure",
                            "room": self.room,
                            "ptype": "publisher",
                            "display": self.display,
                        });
                        let mut jsep = json!({"type": "offer", "sdp": sdp, "trickle": false});
                        if self.config.tracks.iter().any(|t| t.layer.is_some()) {
                            // Janus takes the rids of `a=simulcast` as high-to-low unless told
                            // otherwise; ours (and the SDK's) list the lowest first.
                            jsep["rid_order"] = "lmh".into();
                        }
                        api.message(self.publisher_handle, body, Some(jsep)).await?;
                    }
                    Some(FromPeer::Answer(_)) => bail!("the publishing peer answered an offer it never got"),
                    Some(FromPeer::Connected | FromPeer::Receiving { .. }) => {}
                    None => return Ok(()), // the peer stopped; its outcome says why
                },
                signal = next_signal(links.subscriber.as_mut()) => match signal {
                    Some(FromPeer::Answer(sdp)) => {
                        let handle = self.subscriber.handle.context("an answer without a subscriber handle")?;
                        let jsep = json!({"type": "answer", "sdp": sdp, "trickle": false});
                        api.message(handle, json!({"request": "start"}), Some(jsep)).await?;
                    }
                    Some(FromPeer::Offer { .. }) => bail!("the subscribing peer offered"),
                    // The layer goes with the subscription (`substream`), not as a view.
                    Some(FromPeer::Connected | FromPeer::Receiving { .. }) => {}
                    None => return Ok(()),
                },
                message = next_message(stream) => {
                    let message = message?;
                    self.on_message(message, api, links, peers_stop).await?;
                }
            }
        }
    }

    async fn on_message(
        &mut self,
        message: Value,
        api: &mut Api,
        links: &mut Links,
        peers_stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let sender = message["sender"].as_u64();
        let from_subscriber = sender.is_some() && sender == self.subscriber.handle;
        match message["janus"].as_str().unwrap_or_default() {
            "success"
                if self.subscriber.attaching.is_some()
                    && message["transaction"].as_str() == self.subscriber.attaching.as_deref() =>
            {
                self.subscriber.attaching = None;
                self.subscriber.handle = Some(success_id(&message, "attach (subscriber)")?);
                self.subscribe(api).await
            }
            "error" => {
                let (code, reason) = janus_error(&message).unwrap_or_default();
                bail!("Janus error {code}: {reason}")
            }
            "event" => {
                if let Some((code, reason)) = janus_error(&message) {
                    if from_subscriber && code == NO_SUCH_FEED {
                        // A publisher left between its announcement and our request: skip it.
                        if self.subscriber.state == SubscriberState::Joining {
                            self.subscriber.state = SubscriberState::Idle;
                        }
                        return Ok(());
                    }
                    bail!("Janus error {code}: {reason}");
                }
                let data = &message["plugindata"]["data"];
                let offer_or_answer = message["jsep"]["sdp"].as_str().map(str::to_owned);
                if from_subscriber {
                    if matches!(data["videoroom"].as_str(), Some("attached" | "updated"))
                        && self.subscriber.state == SubscriberState::Joining
                    {
                        self.subscriber.state = SubscriberState::Joined;
                        self.subscribe(api).await?;
                    }
                    if let Some(sdp) = offer_or_answer {
                        let link = links.subscriber.get_or_insert_with(|| {
                            let config = PeerConfig {
                                tracks: Vec::new(),
                                offer_first: false,
                                counts_as_join: false,
                                // Janus was told the layer with the subscription: no views.
                                receive_layer: None,
                                ..self.config.clone()
                            };
                            Link::spawn(
                                config,
                                self.started,
                                self.counters.clone(),
                                peers_stop.clone(),
                            )
                        });
                        link.send(ToPeer::Offer(sdp)).await;
                    }
                    return Ok(());
                }
                if sender != Some(self.publisher_handle) {
                    return Ok(());
                }
                if data["videoroom"] == "joined" {
                    self.me = data["id"].as_u64();
                    self.private_id = data["private_id"].as_u64();
                    self.counters.joined.fetch_add(1, Relaxed);
                }
                if let Some(sdp) = offer_or_answer
                    && let Some(link) = &links.publisher
                {
                    link.send(ToPeer::Answer(sdp)).await;
                }
                if let Some(publishers) = data["publishers"].as_array() {
                    self.add_feeds(publishers);
                    self.subscribe(api).await?;
                }
                Ok(())
            }
            "trickle" => {
                let candidate = &message["candidate"];
                let Some(line) = candidate["candidate"].as_str() else {
                    return Ok(()); // {"completed": true}
                };
                let link = if from_subscriber {
                    &links.subscriber
                } else {
                    &links.publisher
                };
                if let Some(link) = link {
                    link.send(ToPeer::Candidate(line.to_owned())).await;
                }
                Ok(())
            }
            "hangup" => bail!(
                "Janus hung up handle {}: {}",
                sender.unwrap_or_default(),
                message["reason"].as_str().unwrap_or("(no reason)")
            ),
            "timeout" => bail!("Janus timed the session out"),
            // ack, webrtcup, media, slowlink, detached: nothing to do.
            _ => Ok(()),
        }
    }

    /// Notes the streams of `publishers` (other than ours) not asked for yet.
    fn add_feeds(&mut self, publishers: &[Value]) {
        for publisher in publishers {
            let Some(feed) = publisher["id"].as_u64() else {
                continue;
            };
            if Some(feed) == self.me {
                continue;
            }
            for stream in publisher["streams"].as_array().into_iter().flatten() {
                let Some(mid) = stream["mid"].as_str() else {
                    continue;
                };
                let media = matches!(stream["type"].as_str(), Some("audio" | "video"));
                // A participant that publishes nothing has a disabled (receive-only) stream.
                if !media || stream["disabled"] == true {
                    continue;
                }
                let key = (feed, mid.to_owned());
                if !self.subscriber.requested.contains(&key)
                    && !self
                        .subscriber
                        .wanted
                        .iter()
                        .any(|w| (w.0, &w.1) == (key.0, &key.1))
                {
                    let video = stream["type"] == "video";
                    self.subscriber.wanted.push((key.0, key.1, video));
                }
            }
        }
    }

    /// Asks for the wanted streams: attaches the subscriber handle first, then `join`s, then
    /// `subscribe`s (one request in flight until the join's offer is in).
    async fn subscribe(&mut self, api: &mut Api) -> anyhow::Result<()> {
        if self.subscriber.wanted.is_empty() || self.subscriber.attaching.is_some() {
            return Ok(());
        }
        let Some(handle) = self.subscriber.handle else {
            let attach = json!({"janus": "attach", "plugin": "janus.plugin.videoroom"});
            self.subscriber.attaching = Some(api.send(attach).await?);
            return Ok(());
        };
        let request = match self.subscriber.state {
            SubscriberState::Joining => return Ok(()),
            SubscriberState::Idle => "join",
            SubscriberState::Joined => "subscribe",
        };
        let streams: Vec<Value> = self
            .subscriber
            .wanted
            .drain(..)
            .map(|(feed, mid, video)| {
                let mut value = json!({"feed": feed, "mid": mid});
                // The simulcast layer this participant takes (0 = the lowest), as a Janus
                // client asks for one; a stream without simulcast ignores it.
                if let (true, Some(layer)) = (video, self.config.receive_layer) {
                    value["substream"] = layer.into();
                }
                self.subscriber.requested.insert((feed, mid));
                value
            })
            .collect();
        let mut body = json!({"request": request, "streams": streams});
        if request == "join" {
            body["room"] = self.room.into();
            body["ptype"] = "subscriber".into();
            if let Some(private_id) = self.private_id {
                body["private_id"] = private_id.into();
            }
            self.subscriber.state = SubscriberState::Joining;
        }
        api.message(handle, body, None).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn janus_errors_are_read_from_core_and_plugin_replies() {
        let core = json!({"janus": "error", "error": {"code": 458, "reason": "No such session"}});
        assert_eq!(janus_error(&core), Some((458, "No such session".into())));
        let plugin = json!({"janus": "success", "plugindata": {"data": {
            "videoroom": "event", "error_code": 427, "error": "Room 7 already exists"}}});
        assert_eq!(
            janus_error(&plugin),
            Some((427, "Room 7 already exists".into()))
        );
        let fine = json!({"janus": "success", "data": {"id": 5}});
        assert_eq!(janus_error(&fine), None);
        assert_eq!(success_id(&fine, "attach").unwrap(), 5);
        assert!(
            success_id(&core, "attach")
                .unwrap_err()
                .to_string()
                .contains("No such session")
        );
        assert!(success_id(&json!({"janus": "success"}), "attach").is_err());
    }

    #[test]
    fn rooms_are_distinct_per_call_and_stable_in_a_process() {
        assert_eq!(room_number(3), room_number(3));
        assert_eq!(room_number(4), room_number(3) + 1);
        assert!(room_number(0) < (1u64 << 53));
    }
}
