//! The dispatcher against a real HTTP receiver on 127.0.0.1 that checks every request the way
//! `docs/webhooks.md` tells receivers to (signature, headers), and records what it got.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use warp::Filter as _;

use super::*;
use crate::sfu::events::{EventParticipant, RoomEvent, RoomEventKind};
use crate::sfu::{CallId, SessionId, TenantId, UserId};

const SECRET: &str = "whsec-test-0123456789abcdef-0123456789";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    kind: String,
    instance: String,
    seq: u64,
    /// What the receiver answered.
    status: u16,
}

#[derive(Default)]
struct ReceiverState {
    /// Answer 500 to this many requests first.
    fail_first: usize,
    /// Never answer (until the test ends).
    stall: bool,
    /// Never answer this room instance's requests (until the test ends).
    stall_instance: Option<String>,
    requests: Vec<Received>,
    /// Requests whose signature, headers or body were wrong (must stay empty).
    bad: Vec<String>,
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start(fail_first: usize, stall: bool) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState {
            fail_first,
            stall,
            ..ReceiverState::default()
        }));
        let shared = state.clone();
        let routes = warp::post()
            .and(warp::path("hook"))
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let state = shared.clone();
                async move {
                    let (status, instance) = Self::handle(&state, &headers, &body);
                    let stall = {
                        let state = state.lock().unwrap();
                        state.stall || state.stall_instance.as_deref() == Some(instance.as_str())
                    };
                    if stall {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    warp::reply::with_status("", warp::http::StatusCode::from_u16(status).unwrap())
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        Self { addr, state }
    }

    /// Checks the request as a receiver must, records it, and picks the answer.
    fn handle(
        state: &Mutex<ReceiverState>,
        headers: &warp::http::HeaderMap,
        body: &[u8],
    ) -> (u16, String) {
        let mut state = state.lock().unwrap();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        if let Err(e) = signature::verify(
            SECRET.as_bytes(),
            &header(signature::SIGNATURE_HEADER),
            body,
            now,
            signature::DEFAULT_TOLERANCE,
        ) {
            state.bad.push(format!("signature: {e}"));
            return (401, String::new());
        }
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        let id = json["id"].as_str().unwrap_or_default().to_owned();
        if header(signature::EVENT_ID_HEADER) != id
            || header("content-type") != "application/json"
            || !header("user-agent").starts_with("rtcd/")
        {
            state.bad.push(format!("headers: {headers:?}"));
        }
        let status = if state.requests.len() < state.fail_first {
            500
        } else {
            200
        };
        let instance = json["room"]["instance"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        state.requests.push(Received {
            id,
            kind: json["type"].as_str().unwrap_or_default().to_owned(),
            instance: instance.clone(),
            seq: json["seq"].as_u64().unwrap_or_default(),
            status,
        });
        (status, instance)
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        let state = self.state.lock().unwrap();
        assert!(state.bad.is_empty(), "bad requests: {:?}", state.bad);
        state.requests.clone()
    }

    fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }
}

/// Small backoffs and timeouts, loopback allowed.
fn settings() -> WebhooksConfig {
    WebhooksConfig {
        enabled: true,
        allow_private_addresses: true,
        queue_capacity: 256,
        max_pending_events: 1000,
        max_attempts: 5,
        initial_backoff_ms: 5,
        max_backoff_seconds: 1,
        timeout_seconds: 2,
        max_concurrency: 4,
    }
}

fn tenant() -> TenantId {
    TenantId::new("acme")
}

fn event(tenant: &TenantId, instance: &str, seq: u64) -> RoomEvent {
    let kind = if seq == 1 {
        RoomEventKind::RoomStarted
    } else {
        RoomEventKind::ParticipantJoined(EventParticipant {
            session: SessionId::new(format!("s{seq}")),
            user: UserId::new(format!("u{seq}")),
            display_name: format!("User {seq}"),
            role: "guest".into(),
        })
    };
    RoomEvent {
        tenant: tenant.clone(),
        call: CallId::new(format!("call-{instance}")),
        room_instance: instance.into(),
        seq,
        at_ms: 1_700_000_000_000 + i64::try_from(seq).unwrap(),
        kind,
    }
}

/// Polls `check` until it holds (or fails the test after 10 s).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn seqs_by_room(received: &[Received]) -> HashMap<String, Vec<u64>> {
    let mut rooms: HashMap<String, Vec<u64>> = HashMap::new();
    for r in received {
        rooms.entry(r.instance.clone()).or_default().push(r.seq);
    }
    rooms
}

async fn started(
    config: WebhooksConfig,
    urls: Vec<String>,
) -> (Webhooks, RoomEventSink, Arc<Metrics>) {
    let metrics = Metrics::new();
    let (webhooks, sink) = Webhooks::start(&config, metrics.clone()).unwrap();
    if !urls.is_empty() {
        webhooks
            .configure(&tenant(), urls, SECRET.into())
            .await
            .unwrap();
    }
    (webhooks, sink.unwrap(), metrics)
}

#[tokio::test]
async fn two_rooms_arrive_signed_once_each_and_in_order() {
    let receiver = Receiver::start(0, false).await;
    let (webhooks, sink, metrics) = started(settings(), vec![receiver.url()]).await;
    for seq in 1..=10 {
        sink.emit(event(&tenant(), "room-a", seq));
        sink.emit(event(&tenant(), "room-b", seq));
    }
    eventually("20 deliveries", || receiver.delivered().len() == 20).await;
    let received = receiver.requests();
    assert_eq!(received.len(), 20, "nothing twice: {received:?}");
    let rooms = seqs_by_room(&received);
    let want: Vec<u64> = (1..=10).collect();
    assert_eq!(rooms["room-a"], want);
    assert_eq!(rooms["room-b"], want);
    assert_eq!(
        received.iter().filter(|r| r.kind == "room_started").count(),
        2
    );
    let mut ids: Vec<_> = received.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "one id per event");
    // The receiver records a request before its response reaches the dispatcher, which counts
    // the delivery only then.
    eventually("20 deliveries counted", || {
        metrics.webhook.delivery_count("acme", "delivered") == 20
    })
    .await;
    assert_eq!(metrics.webhook.delivery_count("acme", "retried"), 0);
    eventually("nothing pending", || metrics.webhook.pending.get() == 0).await;
    let text = metrics.encode();
    assert!(
        text.contains("rtcd_webhook_deliveries_total{client_id=\"acme\",outcome=\"delivered\"} 20"),
        "{text}"
    );
    webhooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn events_answered_500_come_again_in_order_with_the_same_id() {
    // The first three requests (all attempts at seq 1) fail; seq 2.. wait behind them.
    let receiver = Receiver::start(3, false).await;
    let (webhooks, sink, metrics) = started(settings(), vec![receiver.url()]).await;
    for seq in 1..=5 {
        sink.emit(event(&tenant(), "room-a", seq));
    }
    eventually("5 deliveries", || receiver.delivered().len() == 5).await;
    let received = receiver.requests();
    let seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 1, 1, 1, 2, 3, 4, 5], "{received:?}");
    assert!(
        received[..4].iter().all(|r| r.id == received[0].id),
        "retries keep the id"
    );
    assert_eq!(
        receiver
            .delivered()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    eventually("5 deliveries counted", || {
        metrics.webhook.delivery_count("acme", "delivered") == 5
    })
    .await;
    assert_eq!(metrics.webhook.delivery_count("acme", "retried"), 3);
    assert_eq!(metrics.webhook.delivery_count("acme", "failed"), 0);
    webhooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_event_is_given_up_after_max_attempts_and_the_next_one_goes() {
    let receiver = Receiver::start(3, false).await;
    let config = WebhooksConfig {
        max_attempts: 3,
        ..settings()
    };
    let (webhooks, sink, metrics) = started(config, vec![receiver.url()]).await;
    sink.emit(event(&tenant(), "room-a", 1));
    sink.emit(event(&tenant(), "room-a", 2));
    eventually("seq 2 delivered", || receiver.delivered().len() == 1).await;
    let seqs: Vec<u64> = receiver.requests().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 1, 1, 2]);
    eventually("the delivery counted", || {
        metrics.webhook.delivery_count("acme", "delivered") == 1
    })
    .await;
    assert_eq!(metrics.webhook.delivery_count("acme", "failed"), 1);
    assert_eq!(metrics.webhook.delivery_count("acme", "retried"), 2);
    webhooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unconfigured_tenants_events_are_discarded_and_counted() {
    let receiver = Receiver::start(0, false).await;
    let (webhooks, sink, metrics) = started(settings(), vec![receiver.url()]).await;
    let other = TenantId::new("other");
    for seq in 1..=3 {
        sink.emit(event(&other, "room-x", seq));
    }
    sink.emit(event(&tenant(), "room-a", 1));
    eventually("acme's event", || receiver.delivered().len() == 1).await;
    assert_eq!(metrics.webhook.dropped_count("unconfigured"), 3);
    // Turning webhooks off discards the tenant's later events the same way.
    webhooks
        .configure(&tenant(), Vec::new(), String::new())
        .await
        .unwrap();
    assert!(!webhooks.is_configured(&tenant()));
    sink.emit(event(&tenant(), "room-a", 2));
    eventually("the 4th discard", || {
        metrics.webhook.dropped_count("unconfigured") == 4
    })
    .await;
    assert_eq!(receiver.requests().len(), 1);
    webhooks.shutdown(Duration::from_secs(1)).await;
}

/// The emitter (a media worker) never waits: against a receiver that never answers, ten times
/// the queue's capacity is emitted at once; what does not fit is dropped and counted, and
/// every event is accounted for (queued, pending or dropped).
#[tokio::test]
async fn emitting_never_blocks_and_overflow_is_dropped_and_counted() {
    let receiver = Receiver::start(0, true).await;
    let config = WebhooksConfig {
        queue_capacity: 4,
        max_pending_events: 8,
        timeout_seconds: 5,
        ..settings()
    };
    let (webhooks, sink, metrics) = started(config, vec![receiver.url()]).await;
    // This test's runtime is single-threaded: the dispatcher cannot run during the loop, so
    // exactly `queue_capacity` events fit.
    let began = Instant::now();
    for seq in 1..=40 {
        sink.emit(event(&tenant(), "room-a", seq));
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(metrics.webhook.dropped_count("queue_full"), 36);
    // Then batches the dispatcher takes as they come, until its pending bound is reached.
    for round in 0..10 {
        for seq in 1..=4 {
            sink.emit(event(&tenant(), "room-b", round * 4 + seq));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped = |reason| metrics.webhook.dropped_count(reason);
    eventually("every event accounted for", || {
        let pending = u64::try_from(metrics.webhook.pending.get()).unwrap();
        dropped("queue_full") + dropped("pending_full") + pending == 80
    })
    .await;
    assert_eq!(metrics.webhook.pending.get(), 8);
    assert!(dropped("pending_full") > 0);
    assert_eq!(metrics.webhook.delivery_count("acme", "delivered"), 0);
    // Shutdown is bounded even with deliveries hanging.
    let began = Instant::now();
    webhooks.shutdown(Duration::from_millis(200)).await;
    assert!(began.elapsed() < Duration::from_secs(2));
}

/// One room's stuck receiver does not hold up another room (each room and URL is its own
/// lane).
#[tokio::test]
async fn a_stuck_room_does_not_delay_another() {
    let receiver = Receiver::start(0, false).await;
    receiver.state.lock().unwrap().stall_instance = Some("room-a".into());
    let config = WebhooksConfig {
        timeout_seconds: 30,
        ..settings()
    };
    let (webhooks, sink, _metrics) = started(config, vec![receiver.url()]).await;
    for seq in 1..=5 {
        sink.emit(event(&tenant(), "room-a", seq));
        sink.emit(event(&tenant(), "room-b", seq));
    }
    eventually("room-b's 5 events", || {
        receiver
            .delivered()
            .iter()
            .filter(|r| r.instance == "room-b")
            .count()
            == 5
    })
    .await;
    // room-a's first event is stuck in flight; the rest wait behind it.
    let a: Vec<u64> = receiver
        .requests()
        .iter()
        .filter(|r| r.instance == "room-a")
        .map(|r| r.seq)
        .collect();
    assert_eq!(a, vec![1]);
    webhooks.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn shutdown_delivers_what_was_queued() {
    let receiver = Receiver::start(0, false).await;
    let (webhooks, sink, _metrics) = started(settings(), vec![receiver.url()]).await;
    for seq in 1..=5 {
        sink.emit(event(&tenant(), "room-a", seq));
    }
    webhooks.shutdown(Duration::from_secs(5)).await;
    assert_eq!(receiver.delivered().len(), 5);
    // Afterwards the queue is closed: emitting drops and counts, without blocking.
    sink.emit(event(&tenant(), "room-a", 6));
}

#[tokio::test]
async fn every_url_gets_every_event() {
    let (one, two) = (
        Receiver::start(0, false).await,
        Receiver::start(1, false).await,
    );
    let (webhooks, sink, _metrics) = started(settings(), vec![one.url(), two.url()]).await;
    for seq in 1..=3 {
        sink.emit(event(&tenant(), "room-a", seq));
    }
    eventually("both receivers", || {
        one.delivered().len() == 3 && two.delivered().len() == 3
    })
    .await;
    let ids = |r: &Receiver| r.delivered().into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&one), ids(&two), "the same event ids at every URL");
    webhooks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn configure_refuses_bad_urls_secrets_and_internal_addresses() {
    let strict = WebhooksConfig {
        allow_private_addresses: false,
        ..settings()
    };
    let (webhooks, _sink) = Webhooks::start(&strict, Metrics::new()).unwrap();
    let t = tenant();
    let configure = |urls: &[&str], secret: &str| {
        let webhooks = webhooks.clone();
        let t = t.clone();
        let urls = urls.iter().map(|u| u.to_string()).collect();
        let secret = secret.to_owned();
        async move { webhooks.configure(&t, urls, secret).await }
    };
    // A public address literal needs no DNS and no connection.
    configure(&["https://93.184.216.34/hooks?token=x"], SECRET)
        .await
        .unwrap();
    assert!(webhooks.is_configured(&t));
    for (url, want) in [
        ("ftp://93.184.216.34/", "InvalidUrl"),
        ("/relative", "InvalidUrl"),
        ("https://user:pw@93.184.216.34/", "InvalidUrl"),
        ("http://127.0.0.1:9/hook", "AddressNotAllowed"),
        ("http://localhost:9/hook", "AddressNotAllowed"),
        ("http://[::1]:9/hook", "AddressNotAllowed"),
        ("http://10.0.0.7/hook", "AddressNotAllowed"),
        (
            "http://169.254.169.254/latest/meta-data",
            "AddressNotAllowed",
        ),
        ("http://100.64.1.1/", "AddressNotAllowed"),
        ("http://[::ffff:192.168.0.1]/", "AddressNotAllowed"),
    ] {
        let e = configure(&[url], SECRET).await.unwrap_err();
        assert!(format!("{e:?}").starts_with(want), "{url}: {e:?}");
    }
    let five = ["https://93.184.216.34/a"; 5];
    assert!(matches!(
        configure(&five, SECRET).await,
        Err(WebhookError::TooManyUrls { count: 5 })
    ));
    assert!(matches!(
        configure(
            &["https://93.184.216.34/a", "https://93.184.216.34/a"],
            SECRET
        )
        .await,
        Err(WebhookError::DuplicateUrl { index: 1 })
    ));
    for short in ["", "too-short-0123456789abcdef-0123"] {
        assert!(matches!(
            configure(&["https://93.184.216.34/"], short).await,
            Err(WebhookError::SecretLength)
        ));
    }
    assert!(matches!(
        configure(&["https://93.184.216.34/"], &"s".repeat(257)).await,
        Err(WebhookError::SecretLength)
    ));
    assert!(matches!(
        configure(&["https://93.184.216.34/"], &"s".repeat(40)).await,
        Err(WebhookError::WeakSecret(_))
    ));
    // A refused configuration changes nothing; the error names no secret.
    assert!(webhooks.is_configured(&t));
    let e = configure(&["http://10.0.0.7/"], SECRET).await.unwrap_err();
    assert!(!e.to_string().contains(SECRET));
    // With private addresses allowed, loopback is fine.
    let (lax, _sink) = Webhooks::start(&settings(), Metrics::new()).unwrap();
    lax.configure(&t, vec!["http://127.0.0.1:9/hook".into()], SECRET.into())
        .await
        .unwrap();
    // And a host with webhooks off refuses to be configured.
    let off = WebhooksConfig {
        enabled: false,
        ..settings()
    };
    let (disabled, sink) = Webhooks::start(&off, Metrics::new()).unwrap();
    assert!(sink.is_none());
    assert!(matches!(
        disabled
            .configure(&t, vec!["https://93.184.216.34/".into()], SECRET.into())
            .await,
        Err(WebhookError::Disabled)
    ));
    for w in [webhooks, lax, disabled] {
        w.shutdown(Duration::from_millis(100)).await;
    }
}

/// The delivery-time guard: a URL configured while private addresses were allowed is not
/// called by a dispatcher that does not allow them (the check runs per connection).
#[tokio::test]
async fn delivery_rechecks_the_address() {
    let receiver = Receiver::start(0, false).await;
    let strict = WebhooksConfig {
        allow_private_addresses: false,
        max_attempts: 2,
        ..settings()
    };
    let metrics = Metrics::new();
    let (webhooks, sink) = Webhooks::start(&strict, metrics.clone()).unwrap();
    let sink = sink.unwrap();
    // Configure behind the configure-time check's back, as if the name had resolved
    // elsewhere then (DNS rebinding).
    for url in [
        receiver.url(),
        format!("http://localhost:{}/hook", receiver.addr.port()),
    ] {
        webhooks.inner.registry.set(
            &tenant(),
            Some(Endpoints {
                urls: vec![Endpoint {
                    url: reqwest::Url::parse(&url).unwrap(),
                }],
                secret: Secret::new(SECRET),
            }),
        );
        let before = metrics.webhook.delivery_count("acme", "failed");
        sink.emit(event(&tenant(), &url, 1));
        eventually("given up", || {
            metrics.webhook.delivery_count("acme", "failed") == before + 1
        })
        .await;
    }
    assert!(receiver.requests().is_empty());
    webhooks.shutdown(Duration::from_secs(1)).await;
}
