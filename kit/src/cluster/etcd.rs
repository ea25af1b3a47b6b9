//! [`Store`] on etcd's v3 gRPC API (KV, Lease and Watch), over the workspace's own tonic.
//!
//! A small client of our own rather than the `etcd-client` crate: that crate generates its
//! code with the system `protoc` at build time, which the workspace never needs
//! (stack.md §2); `proto/etcd/` holds the part of etcd's API used here, compiled with protox.
//!
//! Several endpoints are members of one cluster: a call goes to the member that last answered
//! and moves on to the next when one is unreachable or has no leader, all within one deadline.
//! Watches ask for a member with a leader (etcd's `hasleader` metadata), so a member cut off
//! from the others ends the watch instead of silently delivering nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{
    Change, Created, Entry, LeaseId, Listing, Revision, Settings, Store, StoreError, StoreFuture,
    WATCH_BUFFER, Watch, ttl_seconds,
};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb as rpc;
use pb::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::etcdserverpb::kv_client::KvClient;
use pb::etcdserverpb::lease_client::LeaseClient;
use pb::etcdserverpb::request_op::Request;
use pb::etcdserverpb::response_op::Response;
use pb::etcdserverpb::watch_client::WatchClient;
use pb::mvccpb;

/// How many keys one page of [`Store::list`] reads (etcd caps a response at 1.5 MiB).
const LIST_PAGE: i64 = 500;

/// The pause between two rounds of a call over every member (all refused or leaderless).
const ROUND_PAUSE: Duration = Duration::from_millis(50);

/// One member of the cluster.
struct Member {
    url: String,
    channel: Channel,
}

/// The etcd cluster store. Cheap to share (`Arc<dyn Store>`); channels connect lazily, so
/// [`Etcd::connect`] does no IO and a cluster that is down at start is reported by the first
/// call, not by the constructor.
pub struct Etcd {
    members: Vec<Member>,
    /// The member that answered last: calls go there first.
    current: AtomicUsize,
    prefix: String,
    timeout: Duration,
    /// Every call's wall time, failover and retries included (the daemons' metrics).
    round_trips: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Etcd {
    /// Observes every call's wall time (seconds, failover and retries included) in `histogram`.
    pub fn with_round_trips(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Self {
        self.round_trips = Some(histogram);
        self
    }

    /// A client for the cluster `settings` names (validated with [`Settings::validate`]).
    pub fn connect(settings: &Settings) -> Result<Self, StoreError> {
        let tls = if settings
            .etcd_endpoints
            .iter()
            .any(|u| u.starts_with("https://"))
        {
            let mut tls = ClientTlsConfig::new();
            tls = if settings.tls_ca_file.is_empty() {
                tls.with_webpki_roots()
            } else {
                tls.ca_certificate(Certificate::from_pem(read(&settings.tls_ca_file)?))
            };
            if !settings.tls_cert_file.is_empty() {
                tls = tls.identity(Identity::from_pem(
                    read(&settings.tls_cert_file)?,
                    read(&settings.tls_key_file)?,
                ));
            }
            Some(tls)
        } else {
            None
        };
        let mut members = Vec::new();
        for url in &settings.etcd_endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| StoreError::Refused(format!("etcd endpoint {url}: {e}")))?
                .connect_timeout(settings.request_timeout())
                .tcp_nodelay(true)
                // A peer that vanished (a partition, a dead host) is noticed in seconds, which
                // ends the watches on it so their owners move to another member.
                .http2_keep_alive_interval(Duration::from_secs(3))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| StoreError::Refused(format!("etcd endpoint {url}: {e}")))?;
            }
            members.push(Member {
                url: url.clone(),
                channel: endpoint.connect_lazy(),
            });
        }
        if members.is_empty() {
            return Err(StoreError::Refused("no etcd endpoints".into()));
        }
        Ok(Self {
            members,
            current: AtomicUsize::new(0),
            prefix: settings.key_prefix.clone(),
            timeout: settings.request_timeout(),
            round_trips: None,
        })
    }

    /// Runs `op` on a member, the last one that answered first, moving on while members are
    /// unreachable or leaderless, and going round them again until the request deadline: an
    /// election (a second or two) is waited out rather than reported, so a caller sees
    /// [`StoreError::Unavailable`] only when the cluster stayed without an answer that long.
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        let result = self.call_members(what, op).await;
        if let Some(h) = &self.round_trips {
            h.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// [`Etcd::call`] without the timing.
    async fn call_members<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.members.len();
        // Each member gets its share of the deadline (at least 100 ms), so one that hangs
        // (a partition drops packets rather than refusing them) leaves time for the others.
        let share =
            (self.timeout / u32::try_from(n).unwrap_or(u32::MAX)).max(Duration::from_millis(100));
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut failures = Vec::new();
        let mut first = self.current.load(Ordering::Relaxed);
        loop {
            failures.clear();
            for i in 0..n {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(StoreError::Unavailable(format!(
                        "{what}: no answer within {:?} ({})",
                        self.timeout,
                        failures.join("; ")
                    )));
                }
                let at = (first + i) % n;
                let member = &self.members[at];
                let attempt = share.min(left);
                match tokio::time::timeout(attempt, op(member.channel.clone())).await {
                    Ok(Ok(answer)) => {
                        self.current.store(at, Ordering::Relaxed);
                        return Ok(answer);
                    }
                    Ok(Err(status)) if retryable(&status) => {
                        failures.push(format!("{}: {}", member.url, status.message()));
                    }
                    Ok(Err(status)) => return Err(refusal(what, &status)),
                    Err(_) => {
                        failures.push(format!("{}: no answer within {attempt:?}", member.url))
                    }
                }
            }
            // Every member failed at once (refused, or no leader yet): again shortly, from the
            // next member.
            first = (first + 1) % n;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(ROUND_PAUSE.min(left)).await;
        }
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// A key as the store's users see it (the prefix stripped); etcd keys under our prefix
    /// are ours, written as UTF-8.
    fn entry(&self, kv: mvccpb::KeyValue) -> Entry {
        Entry {
            key: self.relative(&kv.key),
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
        }
    }

    fn relative(&self, key: &[u8]) -> String {
        let key = key.strip_prefix(self.prefix.as_bytes()).unwrap_or(key);
        String::from_utf8_lossy(key).into_owned()
    }

    async fn list_pages(&self, prefix: &str) -> Result<Listing, StoreError> {
        let start = self.full_key(prefix);
        let end = prefix_end(&start);
        let mut entries = Vec::new();
        let mut from = start;
        let mut revision = 0;
        loop {
            let request = rpc::RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: LIST_PAGE,
                // Later pages are read at the first page's revision: one consistent cut.
                revision,
                serializable: false,
            };
            let page = self
                .call("list", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).range(request).await }
                })
                .await?
                .into_inner();
            if revision == 0 {
                revision = header_revision(page.header.as_ref());
            }
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            entries.extend(page.kvs.into_iter().map(|kv| self.entry(kv)));
            if !more {
                return Ok(Listing { entries, revision });
            }
        }
    }

    async fn open_watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        let key = self.full_key(prefix);
        let create = rpc::WatchRequest {
            request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
                rpc::WatchCreateRequest {
                    range_end: prefix_end(&key),
                    key,
                    start_revision: from,
                    progress_notify: true,
                    prev_kv: false,
                },
            )),
        };
        let (requests, mut responses, first) = self
            .call("watch", |ch| {
                let create = create.clone();
                async move {
                    // The request side stays open for the watch's life: closing it ends the
                    // watch on the server.
                    let (requests, rx) = tokio::sync::mpsc::channel::<rpc::WatchRequest>(1);
                    requests
                        .send(create)
                        .await
                        .map_err(|_| tonic::Status::internal("watch request channel closed"))?;
                    let mut request =
                        tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                    request.metadata_mut().insert(
                        "hasleader",
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    let mut responses = WatchClient::new(ch).watch(request).await?.into_inner();
                    // The first answer says whether the watch was created (a compacted start
                    // revision comes as its own answer, handled with the changes below).
                    match responses.message().await? {
                        Some(first) => Ok((requests, responses, first)),
                        None => Err(tonic::Status::unavailable("watch stream closed")),
                    }
                }
            })
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            // Held until the watch ends: dropping it would end the watch on the server.
            let _requests = requests;
            let mut pending = Some(Ok(Some(first)));
            loop {
                let next = match pending.take() {
                    Some(first) => first,
                    None => tokio::select! {
                        next = responses.message() => next,
                        () = tx.closed() => return,
                    },
                };
                let batch = match next {
                    Ok(Some(r)) if r.compact_revision > 0 => Err(StoreError::Compacted {
                        requested: from,
                        oldest: r.compact_revision,
                    }),
                    Ok(Some(r)) if r.canceled => Err(StoreError::Unavailable(format!(
                        "etcd ended the watch: {}",
                        r.cancel_reason
                    ))),
                    // The creation notice itself carries nothing to deliver.
                    Ok(Some(r)) if r.created && r.events.is_empty() => continue,
                    Ok(Some(r)) => Ok(r
                        .events
                        .into_iter()
                        .filter_map(|e| change(&prefix, e))
                        .collect()),
                    Ok(None) => Err(StoreError::Unavailable("etcd closed the watch".into())),
                    Err(status) => Err(StoreError::Unavailable(format!(
                        "watch stream broke: {}",
                        status.message()
                    ))),
                };
                let end = batch.is_err();
                if tx.send(batch).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

impl Store for Etcd {
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Entry>> {
        Box::pin(async move {
            let request = rpc::RangeRequest {
                key: self.full_key(key),
                ..Default::default()
            };
            let answer = self
                .call("get", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).range(request).await }
                })
                .await?
                .into_inner();
            Ok(answer.kvs.into_iter().next().map(|kv| self.entry(kv)))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Listing> {
        Box::pin(self.list_pages(prefix))
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreFuture<'a, Revision> {
        Box::pin(async move {
            let request = rpc::PutRequest {
                key: self.full_key(key),
                value,
                lease: lease.map_or(0, |l| l.0),
                prev_kv: false,
            };
            let answer = self
                .call("put", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).put(request).await }
                })
                .await
                .map_err(|e| lease_gone(e, lease))?
                .into_inner();
            Ok(header_revision(answer.header.as_ref()))
        })
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> StoreFuture<'a, Created> {
        Box::pin(async move {
            let full = self.full_key(key);
            let request = rpc::TxnRequest {
                // create_revision 0: the key does not exist.
                compare: vec![rpc::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Create as i32,
                    key: full.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                }],
                success: vec![rpc::RequestOp {
                    request: Some(Request::RequestPut(rpc::PutRequest {
                        key: full.clone(),
                        value,
                        lease: lease.map_or(0, |l| l.0),
                        prev_kv: false,
                    })),
                }],
                failure: vec![rpc::RequestOp {
                    request: Some(Request::RequestRange(rpc::RangeRequest {
                        key: full,
                        ..Default::default()
                    })),
                }],
            };
            let answer = self
                .call("create", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).txn(request).await }
                })
                .await
                .map_err(|e| lease_gone(e, lease))?
                .into_inner();
            if answer.succeeded {
                return Ok(Created::Won(header_revision(answer.header.as_ref())));
            }
            let holder = answer
                .responses
                .into_iter()
                .find_map(|r| match r.response {
                    Some(Response::ResponseRange(range)) => range.kvs.into_iter().next(),
                    _ => None,
                })
                .ok_or_else(|| {
                    StoreError::Unavailable(
                        "create: the key existed but its read came back empty".into(),
                    )
                })?;
            Ok(Created::Taken(self.entry(holder)))
        })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        mod_revision: Revision,
    ) -> StoreFuture<'a, Option<Revision>> {
        Box::pin(async move {
            let full = self.full_key(key);
            let request = rpc::TxnRequest {
                compare: vec![rpc::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: full.clone(),
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                }],
                success: vec![rpc::RequestOp {
                    request: Some(Request::RequestPut(rpc::PutRequest {
                        key: full,
                        value,
                        lease: 0,
                        prev_kv: false,
                    })),
                }],
                failure: Vec::new(),
            };
            let answer = self
                .call("put_if", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).txn(request).await }
                })
                .await?
                .into_inner();
            Ok(answer
                .succeeded
                .then(|| header_revision(answer.header.as_ref())))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let request = rpc::DeleteRangeRequest {
                key: self.full_key(key),
                ..Default::default()
            };
            let answer = self
                .call("delete", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).delete_range(request).await }
                })
                .await?
                .into_inner();
            Ok(answer.deleted > 0)
        })
    }

    fn delete_if<'a>(&'a self, key: &'a str, mod_revision: Revision) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let full = self.full_key(key);
            let request = rpc::TxnRequest {
                compare: vec![rpc::Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: full.clone(),
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                }],
                success: vec![rpc::RequestOp {
                    request: Some(Request::RequestDeleteRange(rpc::DeleteRangeRequest {
                        key: full,
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            let answer = self
                .call("delete_if", |ch| {
                    let request = request.clone();
                    async move { KvClient::new(ch).txn(request).await }
                })
                .await?
                .into_inner();
            Ok(answer.succeeded)
        })
    }

    fn grant(&self, ttl: Duration) -> StoreFuture<'_, LeaseId> {
        Box::pin(async move {
            let request = rpc::LeaseGrantRequest {
                ttl: ttl_seconds(ttl),
                id: 0,
            };
            let answer = self
                .call("grant", |ch| async move {
                    LeaseClient::new(ch).lease_grant(request).await
                })
                .await?
                .into_inner();
            if !answer.error.is_empty() {
                return Err(StoreError::Refused(format!("grant: {}", answer.error)));
            }
            Ok(LeaseId(answer.id))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> StoreFuture<'_, Duration> {
        Box::pin(async move {
            // One request on a stream of its own: renewals are seconds apart, and a fresh
            // stream per renewal follows the call's failover to another member for free.
            let ttl = self
                .call("keep_alive", |ch| async move {
                    let request = rpc::LeaseKeepAliveRequest { id: lease.0 };
                    let mut answers = LeaseClient::new(ch)
                        .lease_keep_alive(tokio_stream::once(request))
                        .await?
                        .into_inner();
                    match answers.message().await? {
                        Some(answer) => Ok(answer.ttl),
                        None => Err(tonic::Status::unavailable("keep-alive stream closed")),
                    }
                })
                .await?;
            if ttl <= 0 {
                return Err(StoreError::LeaseExpired(lease.0));
            }
            Ok(Duration::from_secs(ttl.unsigned_abs()))
        })
    }

    fn revoke(&self, lease: LeaseId) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let revoked = self
                .call("revoke", |ch| async move {
                    LeaseClient::new(ch)
                        .lease_revoke(rpc::LeaseRevokeRequest { id: lease.0 })
                        .await
                })
                .await;
            match revoked {
                Ok(_) => Ok(()),
                // Already expired: what revoking wanted.
                Err(e) if is_lease_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str, from: Revision) -> StoreFuture<'a, Watch> {
        Box::pin(self.open_watch(prefix, from))
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn header_revision(header: Option<&rpc::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision)
}

/// A watch event as a [`Change`] (the prefix stripped); none for an event without a key.
fn change(prefix: &str, event: mvccpb::Event) -> Option<Change> {
    let kv = event.kv?;
    let key = kv.key.strip_prefix(prefix.as_bytes()).unwrap_or(&kv.key);
    let key = String::from_utf8_lossy(key).into_owned();
    Some(if event.r#type == mvccpb::event::EventType::Delete as i32 {
        Change::Delete {
            key,
            revision: kv.mod_revision,
        }
    } else {
        Change::Put(Entry {
            key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
        })
    })
}

/// Whether another member (or a later try) may answer: unreachable, leaderless, overloaded.
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    ) || status.message().contains("no leader")
        || status.message().contains("leader changed")
}

fn refusal(what: &str, status: &tonic::Status) -> StoreError {
    StoreError::Refused(format!(
        "{what}: {} ({:?})",
        status.message(),
        status.code()
    ))
}

fn is_lease_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::Refused(m) if m.contains("lease not found"))
}

/// A write refused because its lease is gone reads as [`StoreError::LeaseExpired`].
fn lease_gone(e: StoreError, lease: Option<LeaseId>) -> StoreError {
    match lease {
        Some(l) if is_lease_not_found(&e) => StoreError::LeaseExpired(l.0),
        _ => e,
    }
}

fn read(path: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Refused(format!("cannot read {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_plus_one() {
        assert_eq!(prefix_end(b"/rtcd/hosts/"), b"/rtcd/hosts0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn leaderless_and_unreachable_members_are_retried_refusals_are_not() {
        assert!(retryable(&tonic::Status::unavailable(
            "etcdserver: no leader"
        )));
        assert!(retryable(&tonic::Status::unknown(
            "etcdserver: leader changed"
        )));
        assert!(!retryable(&tonic::Status::permission_denied(
            "etcdserver: permission denied"
        )));
        assert!(!retryable(&tonic::Status::not_found(
            "etcdserver: requested lease not found"
        )));
    }
}
