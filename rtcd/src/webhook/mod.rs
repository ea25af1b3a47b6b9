//! Webhooks: room events ([`crate::sfu::events`]) POSTed, signed, to the URLs each tenant
//! configured (`docs/webhooks.md` is the receiver's guide).
//!
//! # Who sends, and how often
//!
//! A room lives on exactly one rtcd host, and that host's SFU emits its events, so every event
//! has exactly one sender however many proxy replicas run. Delivery is at least once: an event
//! is retried (exponential backoff with jitter) until its URL answers 2xx or
//! `webhooks.max_attempts` is spent, and per (tenant, room instance, URL) strictly in `seq`
//! order: the room's next event waits until the previous one was delivered or given up on.
//!
//! # What is bounded
//!
//! * The SFU's queue to the dispatcher (`webhooks.queue_capacity`): full = the event is
//!   dropped and counted (`queue_full`); media and signaling never wait.
//! * Deliveries waiting or in flight (`webhooks.max_pending_events`, event x URL): beyond it
//!   new ones are dropped and counted (`pending_full`).
//! * Requests in flight (`webhooks.max_concurrency`), one per room and URL at most.
//!
//! # Secrets and addresses
//!
//! Settings ([`Webhooks::configure`], called by the `Rooms` gRPC service for its proxy) live
//! in memory only: the signing secret never reaches disk or a log, and log lines name a URL
//! without its query. URLs must not reach internal addresses ([`address`]) unless the operator
//! allows it; this is checked when configured and on every connection.
//!
//! # Layout
//!
//! * this module: [`Webhooks`] (the handle: settings registry, start, shutdown) and
//!   [`WebhookError`];
//! * `dispatcher`: the task that owns the per-room queues and runs the deliveries;
//! * [`payload`]: the JSON body; [`signature`]: the `Rtcd-Signature` header and `verify`;
//! * [`address`]: the SSRF guard and the guarded DNS resolver.

pub mod address;
mod dispatcher;
pub mod payload;
pub mod signature;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rtcd_kit::secret::Secret;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WebhooksConfig;
use crate::metrics::Metrics;
use crate::sfu::TenantId;
use crate::sfu::events::RoomEventSink;

/// URLs one tenant may configure.
pub const MAX_URLS: usize = 4;
/// Shortest signing secret accepted, in bytes (as for client keys).
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest signing secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 256;
/// Longest URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a tenant's webhook settings were refused. Every variant is the caller's to fix
/// (`INVALID_ARGUMENT`) except [`WebhookError::Disabled`], which is the operator's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// This host does not deliver webhooks (`[webhooks] enabled = false`).
    #[error("webhooks are disabled on this media server")]
    Disabled,
    /// More than [`MAX_URLS`] URLs.
    #[error("at most {MAX_URLS} webhook URLs, got {count}")]
    TooManyUrls {
        /// How many were sent.
        count: usize,
    },
    /// A URL is not an absolute http(s) URL with a host (or carries credentials, or is too
    /// long).
    #[error("webhook URL #{index} is not acceptable: {reason}")]
    InvalidUrl {
        /// Its position in the request (0-based).
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The same URL twice.
    #[error("webhook URL #{index} repeats an earlier one")]
    DuplicateUrl {
        /// Its position in the request (0-based).
        index: usize,
    },
    /// The URL's host name does not resolve (checked so that a typo fails now, not at the
    /// first event).
    #[error("webhook URL #{index}: host {host} does not resolve")]
    Unresolvable {
        /// Its position in the request (0-based).
        index: usize,
        /// The host name.
        host: String,
    },
    /// The URL names, or resolves to, a loopback, private, link-local or otherwise internal
    /// address, and `[webhooks] allow_private_addresses` is off.
    #[error(
        "webhook URL #{index}: {host} is a private, loopback or link-local address, which this media server does not call"
    )]
    AddressNotAllowed {
        /// Its position in the request (0-based).
        index: usize,
        /// The host as written.
        host: String,
    },
    /// The secret is shorter than [`MIN_SECRET_BYTES`] or longer than [`MAX_SECRET_BYTES`].
    #[error("the webhook secret must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")]
    SecretLength,
    /// The secret is a known placeholder or one character repeated.
    #[error("the webhook secret {0}")]
    WeakSecret(String),
}

/// One configured URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    url: reqwest::Url,
}

/// A tenant's settings.
#[derive(Debug)]
struct Endpoints {
    urls: Vec<Endpoint>,
    secret: Secret,
}

/// Settings per tenant, read by every delivery attempt (so a new secret signs the next
/// attempt, and a removed URL gets nothing more).
#[derive(Debug, Default)]
struct Registry {
    tenants: RwLock<HashMap<TenantId, Arc<Endpoints>>>,
}

impl Registry {
    fn get(&self, tenant: &TenantId) -> Option<Arc<Endpoints>> {
        self.tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned()
    }

    fn set(&self, tenant: &TenantId, endpoints: Option<Endpoints>) {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        match endpoints {
            Some(e) => tenants.insert(tenant.clone(), Arc::new(e)),
            None => tenants.remove(tenant),
        };
    }
}

/// The webhook service: cheap to clone; the `Rooms` gRPC service calls
/// [`Webhooks::configure`], the composition root [`Webhooks::start`]s and
/// [`Webhooks::shutdown`]s it.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    settings: WebhooksConfig,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    dispatcher: Mutex<Option<dispatcher::Running>>,
}

impl std::fmt::Debug for Webhooks {
    /// Hand-written: names the configured tenants, never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("enabled", &self.inner.settings.enabled)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Builds the service and, when `[webhooks] enabled`, spawns the dispatcher (needs a tokio
    /// runtime) and returns the sink the SFU emits into (`Sfu::new`'s last argument). Fails
    /// only if the HTTP client cannot be built (TLS backend).
    pub fn start(
        config: &WebhooksConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Option<RoomEventSink>), reqwest::Error> {
        let registry = Arc::new(Registry::default());
        let mut running = None;
        let mut sink = None;
        if config.enabled {
            // Bounded by `queue_capacity`; overflow policy: the sink drops and counts.
            let (tx, rx) = mpsc::channel(config.queue_capacity);
            let dropped = metrics
                .webhook
                .events_dropped
                .get_or_create(&crate::metrics::WebhookDropLabels {
                    reason: "queue_full",
                })
                .clone();
            sink = Some(RoomEventSink::new(tx, dropped));
            let cancel = CancellationToken::new();
            let task = dispatcher::spawn(
                rx,
                config,
                registry.clone(),
                metrics.clone(),
                cancel.clone(),
            )?;
            running = Some(dispatcher::Running { cancel, task });
        }
        let webhooks = Self {
            inner: Arc::new(Inner {
                settings: config.clone(),
                registry,
                metrics,
                dispatcher: Mutex::new(running),
            }),
        };
        Ok((webhooks, sink))
    }

    /// Sets (replaces) `tenant`'s webhook URLs and signing secret; empty `urls` turns its
    /// webhooks off. Idempotent (every proxy replica sends the same settings). Checks the
    /// URLs (http(s), at most [`MAX_URLS`], no credentials) and their addresses (resolving
    /// host names, bounded by `webhooks.timeout_seconds`) before anything changes.
    pub async fn configure(
        &self,
        tenant: &TenantId,
        urls: Vec<String>,
        secret: String,
    ) -> Result<(), WebhookError> {
        let settings = &self.inner.settings;
        if !settings.enabled {
            return Err(WebhookError::Disabled);
        }
        if urls.is_empty() {
            self.inner.registry.set(tenant, None);
            tracing::info!(client_id = %tenant, "webhooks turned off");
            return Ok(());
        }
        if urls.len() > MAX_URLS {
            return Err(WebhookError::TooManyUrls { count: urls.len() });
        }
        let secret = Secret::new(secret);
        let len = secret.expose().len();
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&len) {
            return Err(WebhookError::SecretLength);
        }
        if let Some(why) = rtcd_kit::secret::weakness(secret.expose().as_bytes(), MIN_SECRET_BYTES)
        {
            return Err(WebhookError::WeakSecret(why));
        }
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(urls.len());
        for (index, raw) in urls.iter().enumerate() {
            let url = parse_url(index, raw)?;
            if endpoints.iter().any(|e| e.url == url) {
                return Err(WebhookError::DuplicateUrl { index });
            }
            self.check_address(index, &url).await?;
            endpoints.push(Endpoint { url });
        }
        let count = endpoints.len();
        self.inner.registry.set(
            tenant,
            Some(Endpoints {
                urls: endpoints,
                secret,
            }),
        );
        tracing::info!(client_id = %tenant, urls = count, "webhooks configured");
        Ok(())
    }

    /// Whether `tenant` has webhook URLs on this host.
    pub fn is_configured(&self, tenant: &TenantId) -> bool {
        self.inner.registry.get(tenant).is_some()
    }

    /// Stops the dispatcher: no new events are taken (the SFU should have drained first), the
    /// queued and pending ones keep being delivered for up to `grace`, then whatever is left
    /// is abandoned (logged with its count). A second call does nothing.
    pub async fn shutdown(&self, grace: Duration) {
        let running = self
            .inner
            .dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(dispatcher::Running { cancel, mut task }) = running else {
            return;
        };
        cancel.cancel();
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let left = self.inner.metrics.webhook.pending.get();
            tracing::warn!(
                undelivered = left,
                "webhook deliveries still pending at shutdown were abandoned"
            );
        }
    }

    async fn check_address(&self, index: usize, url: &reqwest::Url) -> Result<(), WebhookError> {
        let settings = &self.inner.settings;
        if settings.allow_private_addresses {
            return Ok(());
        }
        // `parse_url` made sure there is a host.
        let host = url.host_str().unwrap_or_default();
        let refused = || WebhookError::AddressNotAllowed {
            index,
            host: host.to_owned(),
        };
        if let Some(ip) = ip_literal(host) {
            return if address::is_public(ip) {
                Ok(())
            } else {
                Err(refused())
            };
        }
        let unresolvable = || WebhookError::Unresolvable {
            index,
            host: host.to_owned(),
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((host, port));
        let addrs: Vec<_> =
            match tokio::time::timeout(Duration::from_secs(settings.timeout_seconds), lookup).await
            {
                Ok(Ok(addrs)) => addrs.collect(),
                _ => return Err(unresolvable()),
            };
        if addrs.is_empty() {
            return Err(unresolvable());
        }
        if addrs.iter().any(|a| !address::is_public(a.ip())) {
            return Err(refused());
        }
        Ok(())
    }
}

fn parse_url(index: usize, raw: &str) -> Result<reqwest::Url, WebhookError> {
    let invalid = |reason| WebhookError::InvalidUrl { index, reason };
    if raw.len() > MAX_URL_BYTES {
        return Err(invalid("longer than 2048 bytes"));
    }
    let url = reqwest::Url::parse(raw).map_err(|_| invalid("not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http and https are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the URL are not accepted"));
    }
    Ok(url)
}

/// The IP address a URL host names literally (`[v6]` included), if it does.
fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// A URL as logs show it: scheme, host, port and path; no query, which may carry a token.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "<invalid>".into(),
    }
}
