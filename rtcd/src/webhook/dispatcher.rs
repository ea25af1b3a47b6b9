//! The dispatcher: one task that takes room events off the SFU's queue and owns every
//! pending delivery, plus one short-lived task per delivery in flight.
//!
//! Deliveries are grouped in lanes, one per (tenant, room instance, URL). A lane has at most
//! one delivery task at a time, which tries one event until 2xx or `max_attempts`; only then
//! does the lane's next event start. That is what keeps a room's events in `seq` order at
//! each URL, retries included. Lanes exist only while they hold events, so their number is
//! bounded by `max_pending_events`. The dispatcher's state has one owner (this task, no
//! locks); delivery tasks report back through the `JoinSet` they were spawned into.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::address::{self, GuardedResolver};
use super::{Endpoints, Registry, payload, redacted, signature};
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::sfu::events::RoomEvent;
use crate::sfu::{CallId, TenantId};

/// A spawned dispatcher: cancel to start its drain, await (bounded) to let it finish.
pub(super) struct Running {
    pub(super) cancel: CancellationToken,
    pub(super) task: JoinHandle<()>,
}

/// What every delivery task needs.
struct Context {
    client: reqwest::Client,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    concurrency: Semaphore,
    max_pending: usize,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    allow_private: bool,
}

/// One event, encoded once for all its URLs and attempts.
struct Prepared {
    id: String,
    body: Bytes,
    call: CallId,
    seq: u64,
    accepted: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LaneKey {
    tenant: TenantId,
    room_instance: Arc<str>,
    url: Arc<str>,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Arc<Prepared>>,
    busy: bool,
}

/// How a delivery task ended.
enum Outcome {
    Delivered,
    GaveUp {
        attempts: u32,
        error: String,
    },
    /// The tenant's settings no longer list the URL: nothing to deliver to.
    Unconfigured,
}

struct Done {
    outcome: Outcome,
    event: Arc<Prepared>,
}

/// Builds the HTTP client and spawns the dispatcher on the current runtime.
pub(super) fn spawn(
    rx: mpsc::Receiver<RoomEvent>,
    config: &WebhooksConfig,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, reqwest::Error> {
    let timeout = Duration::from_secs(config.timeout_seconds);
    let client = reqwest::Client::builder()
        .user_agent(concat!("rtcd/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect could lead anywhere, including inside the operator's network; a
        // receiver must answer at the configured URL. No system proxy either: the address
        // checked is the one connected to.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: config.allow_private_addresses,
        }))
        .build()?;
    let context = Arc::new(Context {
        client,
        registry,
        metrics,
        concurrency: Semaphore::new(config.max_concurrency),
        max_pending: config.max_pending_events,
        max_attempts: config.max_attempts.max(1),
        initial_backoff: Duration::from_millis(config.initial_backoff_ms),
        max_backoff: Duration::from_secs(config.max_backoff_seconds),
        allow_private: config.allow_private_addresses,
    });
    let dispatcher = Dispatcher {
        rx,
        context,
        lanes: HashMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
        pending: 0,
        failing: HashSet::new(),
    };
    Ok(tokio::spawn(dispatcher.run(cancel)))
}

struct Dispatcher {
    rx: mpsc::Receiver<RoomEvent>,
    context: Arc<Context>,
    lanes: HashMap<LaneKey, Lane>,
    tasks: JoinSet<Done>,
    /// Which lane each delivery task serves (also known when a task panicked).
    running: HashMap<tokio::task::Id, LaneKey>,
    /// Deliveries queued in lanes or in flight.
    pending: usize,
    /// (tenant, URL) whose last delivery was given up: WARN once, until one succeeds again.
    failing: HashSet<(TenantId, Arc<str>)>,
}

impl Dispatcher {
    async fn run(mut self, cancel: CancellationToken) {
        let mut open = true;
        let mut draining = false;
        loop {
            if !open && self.tasks.is_empty() {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled(), if !draining => {
                    // Take nothing new; what is already queued is still received below.
                    draining = true;
                    self.rx.close();
                }
                event = self.rx.recv(), if open => match event {
                    Some(event) => self.accept(event),
                    None => open = false,
                },
                Some(done) = self.tasks.join_next_with_id() => self.finish(done),
                else => break,
            }
        }
        tracing::debug!("webhook dispatcher stopped");
    }

    fn accept(&mut self, event: RoomEvent) {
        let context = self.context.clone();
        let metrics = &context.metrics.webhook;
        let Some(endpoints) = self.context.registry.get(&event.tenant) else {
            metrics.dropped("unconfigured");
            tracing::trace!(client_id = %event.tenant, room = %event.call, seq = event.seq, "room event dropped: no webhooks configured");
            return;
        };
        let id = payload::new_event_id();
        let prepared = Arc::new(Prepared {
            body: Bytes::from(payload::encode(&id, &event)),
            id,
            call: event.call,
            seq: event.seq,
            accepted: Instant::now(),
        });
        let room_instance: Arc<str> = event.room_instance.into();
        for endpoint in &endpoints.urls {
            if self.pending >= self.context.max_pending {
                metrics.dropped("pending_full");
                tracing::debug!(client_id = %event.tenant, room = %prepared.call, seq = prepared.seq, "room event dropped: webhooks.max_pending_events reached");
                continue;
            }
            let key = LaneKey {
                tenant: event.tenant.clone(),
                room_instance: room_instance.clone(),
                url: endpoint.url.as_str().into(),
            };
            self.pending += 1;
            self.lanes
                .entry(key.clone())
                .or_default()
                .queue
                .push_back(prepared.clone());
            self.start(key);
        }
        metrics.pending.set(gauge(self.pending));
    }

    /// Starts the lane's next delivery unless one is running; forgets the lane when empty.
    fn start(&mut self, key: LaneKey) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        if lane.busy {
            return;
        }
        let Some(event) = lane.queue.pop_front() else {
            self.lanes.remove(&key);
            return;
        };
        lane.busy = true;
        let handle = self
            .tasks
            .spawn(deliver(self.context.clone(), key.clone(), event));
        self.running.insert(handle.id(), key);
    }

    fn finish(&mut self, done: Result<(tokio::task::Id, Done), JoinError>) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some(key) = self.running.remove(&id) else {
            return;
        };
        self.pending = self.pending.saturating_sub(1);
        self.context
            .metrics
            .webhook
            .pending
            .set(gauge(self.pending));
        match done {
            Ok((_, done)) => self.report(&key, done),
            Err(e) => {
                tracing::error!(client_id = %key.tenant, error = %e, "webhook delivery task failed")
            }
        }
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.busy = false;
        }
        self.start(key);
    }

    fn report(&mut self, key: &LaneKey, done: Done) {
        let Done { outcome, event } = done;
        let failing = (key.tenant.clone(), key.url.clone());
        match outcome {
            Outcome::Delivered => {
                if self.failing.remove(&failing) {
                    tracing::info!(client_id = %key.tenant, url = %redacted(&key.url), "webhook endpoint accepts events again");
                }
            }
            Outcome::GaveUp { attempts, error } => {
                if self.failing.insert(failing) {
                    tracing::warn!(
                        client_id = %key.tenant,
                        room = %event.call,
                        room_instance = %key.room_instance,
                        url = %redacted(&key.url),
                        event_id = %event.id,
                        seq = event.seq,
                        attempts,
                        error = %error,
                        "webhook event given up; later failures at this URL are logged at debug until it accepts one"
                    );
                } else {
                    tracing::debug!(client_id = %key.tenant, room = %event.call, url = %redacted(&key.url), event_id = %event.id, seq = event.seq, error = %error, "webhook event given up");
                }
            }
            Outcome::Unconfigured => {
                self.failing.remove(&failing);
                self.context.metrics.webhook.dropped("unconfigured");
            }
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Tries one event at one URL until 2xx or `max_attempts`.
async fn deliver(context: Arc<Context>, key: LaneKey, event: Arc<Prepared>) -> Done {
    let metrics = &context.metrics.webhook;
    let client_id = key.tenant.as_str();
    let mut error = String::new();
    for attempt in 1..=context.max_attempts {
        // Looked up per attempt: a rotated secret signs the next attempt, a removed URL
        // ends the delivery.
        let Some(endpoints) = context.registry.get(&key.tenant) else {
            return Done {
                outcome: Outcome::Unconfigured,
                event,
            };
        };
        if !endpoints.urls.iter().any(|e| e.url.as_str() == &*key.url) {
            return Done {
                outcome: Outcome::Unconfigured,
                event,
            };
        }
        let result = {
            // The semaphore is never closed; without a permit the attempt still goes.
            let _permit = context.concurrency.acquire().await.ok();
            attempt_once(&context, &key.url, &endpoints, &event).await
        };
        match result {
            Ok(()) => {
                metrics.delivery(client_id, "delivered");
                metrics
                    .delivery_seconds
                    .observe(event.accepted.elapsed().as_secs_f64());
                return Done {
                    outcome: Outcome::Delivered,
                    event,
                };
            }
            Err(e) => error = e,
        }
        if attempt < context.max_attempts {
            metrics.delivery(client_id, "retried");
            let wait = backoff(&context, attempt);
            tracing::debug!(client_id, room = %event.call, url = %redacted(&key.url), event_id = %event.id, seq = event.seq, attempt, error = %error, ?wait, "webhook attempt failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
    metrics.delivery(client_id, "failed");
    Done {
        outcome: Outcome::GaveUp {
            attempts: context.max_attempts,
            error,
        },
        event,
    }
}

/// Wait before the attempt after `failures` failed ones: the initial backoff doubled per
/// failure, capped, and randomised over its upper half so that receivers coming back are not
/// hit by every room at once.
fn backoff(context: &Context, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    let base = context
        .initial_backoff
        .saturating_mul(factor)
        .min(context.max_backoff);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// One signed POST; `Err` says why it failed (no URL in it: reqwest's errors name the URL,
/// whose query may hold a token).
async fn attempt_once(
    context: &Context,
    url: &str,
    endpoints: &Endpoints,
    event: &Prepared,
) -> Result<(), String> {
    let url = reqwest::Url::parse(url).map_err(|_| "invalid URL".to_owned())?;
    // Host names are checked by the resolver as they are resolved; literal addresses never
    // reach it, so they are checked here.
    if let Some(ip) = url.host_str().and_then(super::ip_literal)
        && !address::allowed(ip, context.allow_private)
    {
        return Err("the URL's address is not allowed".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let signature = signature::sign(endpoints.secret.expose().as_bytes(), now, &event.body);
    let response = context
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature::SIGNATURE_HEADER, signature)
        .header(signature::EVENT_ID_HEADER, &event.id)
        .body(event.body.clone())
        .send()
        .await
        .map_err(describe)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
