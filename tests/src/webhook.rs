//! A webhook receiver for end-to-end tests: a real HTTP server on 127.0.0.1 that checks every
//! request as `docs/webhooks.md` tells receivers to (the `Rtcd-Signature` over the raw body,
//! `Rtcd-Event-Id`, content type) and records the events, optionally answering 500 to the
//! first requests to exercise retries.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtcd::webhook::signature;
use warp::Filter as _;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body, parsed.
    pub event: serde_json::Value,
    /// What the receiver answered (200 or 500).
    pub status: u16,
}

impl Received {
    /// `type`.
    pub fn kind(&self) -> &str {
        self.event["type"].as_str().unwrap_or_default()
    }

    /// `room.instance`.
    pub fn room_instance(&self) -> &str {
        self.event["room"]["instance"].as_str().unwrap_or_default()
    }

    /// `seq`.
    pub fn seq(&self) -> u64 {
        self.event["seq"].as_u64().unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    fail_first: usize,
    requests: Vec<Received>,
    bad: Vec<String>,
}

/// The running receiver; it stops with the test's runtime.
pub struct WebhookReceiver {
    addr: SocketAddr,
    secret: String,
    state: Arc<Mutex<State>>,
}

impl WebhookReceiver {
    /// Starts a receiver that verifies with `secret` and answers 500 to the first
    /// `fail_first` well-signed requests, 200 to the others (401 to badly signed ones).
    pub async fn start(secret: &str, fail_first: usize) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            fail_first,
            ..State::default()
        }));
        let (shared, key) = (state.clone(), secret.to_owned());
        let routes = warp::post()
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let status = handle(&shared, &key, &headers, &body);
                warp::reply::with_status(
                    "",
                    warp::http::StatusCode::from_u16(status)
                        .unwrap_or(warp::http::StatusCode::INTERNAL_SERVER_ERROR),
                )
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        Ok(Self {
            addr,
            secret: secret.to_owned(),
            state,
        })
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The secret it verifies with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Every well-signed request so far, in arrival order (panics if any request was badly
    /// signed or lacked a header).
    pub fn requests(&self) -> Vec<Received> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            state.bad.is_empty(),
            "bad webhook requests: {:?}",
            state.bad
        );
        state.requests.clone()
    }

    /// The requests answered 200, in arrival order.
    pub fn delivered(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Waits until `n` events were answered 200 (or fails after `timeout`).
    pub async fn wait_delivered(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            if delivered.len() >= n {
                return delivered;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} webhook events after {timeout:?}: {delivered:?}",
                delivered.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn handle(state: &Mutex<State>, secret: &str, headers: &warp::http::HeaderMap, body: &[u8]) -> u16 {
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if let Err(e) = verify(&header(signature::SIGNATURE_HEADER), body, secret, now) {
        state.bad.push(format!("signature: {e}"));
        return 401;
    }
    let event: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            state.bad.push(format!("body: {e}"));
            return 400;
        }
    };
    if header(signature::EVENT_ID_HEADER) != event["id"].as_str().unwrap_or_default()
        || header("content-type") != "application/json"
    {
        state.bad.push(format!("headers: {headers:?}"));
    }
    let status = if state.requests.len() < state.fail_first {
        500
    } else {
        200
    };
    state.requests.push(Received { event, status });
    status
}

/// Checks `Rtcd-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` the way
/// docs/webhooks.md tells a platform to, written here from the document rather than with
/// rtcd's own `verify`, so a bug shared by rtcd's signing and checking cannot pass unseen:
/// the timestamp within 5 minutes, the MAC compared in constant time.
pub fn verify(header: &str, body: &[u8], secret: &str, now: i64) -> Result<(), String> {
    use hmac::Mac as _;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(format!("no t= or v1= in {header:?}"));
    };
    let ts: i64 = t.parse().map_err(|_| format!("bad timestamp {t:?}"))?;
    if (now - ts).abs() > 300 {
        return Err(format!("timestamp {ts} is {} s off", now - ts));
    }
    let mac_bytes: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| {
            v1.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or_else(|| format!("v1 is not hex: {v1:?}"))?;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&mac_bytes)
        .map_err(|_| "the MAC does not match".to_owned())
}
