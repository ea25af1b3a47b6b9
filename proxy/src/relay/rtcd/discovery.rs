//! Host discovery and health: resolving `rtcd.url` into hosts, connecting to each, probing
//! `/readyz` and the load, logging in, and pushing the tenant's webhook settings.

use super::*;

impl RtcdRelay {
    pub(super) async fn refresh_hosts(&self, discoveries: &[Discovery]) {
        let mut found: Vec<(String, &Discovery, IpAddr)> = Vec::new();
        for d in discoveries {
            let addrs: Vec<IpAddr> = match d.host_name.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => {
                    match tokio::net::lookup_host((d.host_name.as_str(), d.grpc_port)).await {
                        Ok(addrs) => {
                            let addrs: Vec<IpAddr> = addrs
                                .map(|a| a.ip())
                                .collect::<BTreeSet<_>>()
                                .into_iter()
                                .collect();
                            *d.last
                                .lock()
                                .expect("resolution cache lock is never poisoned") = addrs.clone();
                            addrs
                        }
                        Err(e) => {
                            // Keep the last known hosts: a DNS hiccup must not empty the pool.
                            tracing::warn!(host = %d.host_name, error = %e, "cannot resolve rtcd hosts");
                            d.last
                                .lock()
                                .expect("resolution cache lock is never poisoned")
                                .clone()
                        }
                    }
                }
            };
            for ip in addrs {
                found.push((SocketAddr::new(ip, d.grpc_port).to_string(), d, ip));
            }
        }
        self.adopt_hosts(&found);
    }

    /// Makes `found` (host key, how to reach it, its address) the candidate hosts: channels
    /// for new ones, dropped for those gone; hosts that stay keep their health.
    pub(super) fn adopt_hosts(&self, found: &[(String, &Discovery, IpAddr)]) {
        {
            let mut channels = self
                .channels
                .lock()
                .expect("channel map lock is never poisoned");
            channels.retain(|key, _| found.iter().any(|(k, _, _)| k == key));
            for (key, d, ip) in found {
                if channels.contains_key(key) {
                    continue;
                }
                match self.connect(d, *ip) {
                    Ok(host) => {
                        channels.insert(key.clone(), Arc::new(host));
                    }
                    Err(e) => tracing::warn!(host = %key, error = %e, "cannot set up rtcd host"),
                }
            }
        }
        self.hosts
            .set_hosts(found.iter().map(|(k, _, _)| k.clone()));
    }

    /// The hosts announced in the cluster store's copy `replica`, reached with `template`'s
    /// scheme and TLS server name at the address and ports each announces; a draining host
    /// is unready at once, and each one's load is its announced load.
    pub(super) fn adopt_announcements(&self, replica: &Replica, template: &Discovery) {
        let mut announced = Vec::new();
        for entry in replica.entries(HOSTS_PREFIX) {
            match HostAnnouncement::from_value(&entry.value) {
                Ok(a) => announced.push(a),
                // Another version's or a foreign key: not a host this proxy can use.
                Err(e) => tracing::warn!(
                    key = entry.key,
                    error = e,
                    "unreadable rtcd host announcement ignored"
                ),
            }
        }
        let ways: Vec<Discovery> = announced
            .iter()
            .map(|a| Discovery {
                https: template.https,
                host_name: a.address.to_string(),
                server_name: template.server_name.clone(),
                grpc_port: a.grpc_port,
                api_port: a.api_port,
                last: Mutex::new(Vec::new()),
            })
            .collect();
        let found: Vec<(String, &Discovery, IpAddr)> = announced
            .iter()
            .zip(&ways)
            .map(|(a, d)| (a.host_key(), d, a.address))
            .collect();
        self.adopt_hosts(&found);
        for (a, (key, _, _)) in announced.iter().zip(&found) {
            if a.draining && self.hosts.set_health(key, HostHealth::Unready) {
                tracing::info!(host = %key, "rtcd host announced it is draining");
            }
            let load = if self.cpu_weighted {
                a.load
            } else {
                a.media_load
            };
            self.hosts.set_load(key, load);
        }
    }

    /// The channel (connected lazily) and API client for the host at `ip`.
    pub(super) fn connect(&self, d: &Discovery, ip: IpAddr) -> Result<Host, String> {
        let literal = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let scheme = if d.https { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{literal}:{}", d.grpc_port))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(4))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(5));
        let api = if d.https {
            let mut tls = ClientTlsConfig::new().domain_name(d.server_name.clone());
            match &self.tls.ca_pem {
                Some(ca) => {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
                    let cert = reqwest::Certificate::from_pem(ca).map_err(|e| e.to_string())?;
                    http = http
                        .add_root_certificate(cert)
                        .tls_built_in_root_certs(false);
                }
                None => tls = tls.with_webpki_roots(),
            }
            if let Some((cert, key)) = &self.tls.client {
                tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
                let mut pem = cert.clone();
                pem.extend_from_slice(key);
                http = http.identity(reqwest::Identity::from_pem(&pem).map_err(|e| e.to_string())?);
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
            // Certificates name the service, so the API is addressed by that name, pinned to
            // this host's address.
            http = http.resolve(&d.server_name, SocketAddr::new(ip, d.api_port));
            format!("https://{}:{}", d.server_name, d.api_port)
        } else {
            format!("http://{literal}:{}", d.api_port)
        };
        Ok(Host {
            channel: endpoint.connect_lazy(),
            api,
            http: http.build().map_err(|e| e.to_string())?,
        })
    }

    /// Probes every host's `/readyz` concurrently and records the results.
    pub(super) async fn probe(&self) {
        let hosts: Vec<(String, Arc<Host>)> = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        let probes = hosts.into_iter().map(|(key, host)| async move {
            let ready = host
                .http
                .get(format!("{}/readyz", host.api))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            let load = if ready {
                system_load(&host, self.cpu_weighted).await
            } else {
                None
            };
            (
                key,
                if ready {
                    HostHealth::Ready
                } else {
                    HostHealth::Unready
                },
                load,
            )
        });
        for (key, health, load) in futures_util::future::join_all(probes).await {
            if let Some(load) = load
                && self.hosts.set_load(&key, load)
            {
                tracing::debug!(host = %key, load, level = crate::placement::level_of(load), "rtcd host load level changed");
            }
            if self.hosts.set_health(&key, health) {
                tracing::info!(host = %key, ?health, "rtcd host health changed");
                if health == HostHealth::Ready {
                    // A host that comes (back) up may be a restarted rtcd, which keeps webhook
                    // settings in memory only.
                    self.push_webhooks(&key).await;
                }
            }
        }
    }

    /// A bearer token for `host`, logging in if there is none, it is near expiry, or `renew`.
    pub(super) async fn token(
        &self,
        key: &str,
        host: &Host,
        renew: bool,
    ) -> Result<String, RelayError> {
        let (token, fresh) = self.login(key, host, renew).await?;
        if fresh {
            // Every login may follow an rtcd restart, and rtcd keeps webhook settings in
            // memory only: send them before any session of ours can produce an event there.
            self.send_webhooks(key, host, &token).await;
        }
        Ok(token)
    }

    /// The cached bearer token for `host`, or a new one from `POST /login` (then `true`).
    pub(super) async fn login(
        &self,
        key: &str,
        host: &Host,
        renew: bool,
    ) -> Result<(String, bool), RelayError> {
        let api = host.api.as_str();
        let mut logins = self.logins.lock().await;
        if !renew
            && let Some(login) = logins.get(key)
            && login.renew_at > Instant::now()
        {
            return Ok((login.token.clone(), false));
        }
        let response = host
            .http
            .post(format!("{api}/login"))
            .json(&serde_json::json!({"clientID": self.client_id, "authKey": self.auth_key}))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    suspect(&self.hosts, key, "its HTTP API does not answer");
                }
                RelayError::Unavailable(format!("media server login failed: {e}"))
            })?;
        let status = response.status();
        if !status.is_success() {
            tracing::error!(host = %api, %status, "rtcd refused this proxy's credentials (is rtcd.client_id registered on every rtcd host?)");
            return Err(RelayError::Unavailable(format!(
                "media server login refused ({status})"
            )));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| RelayError::Unavailable(format!("media server login: {e}")))?;
        let token = body["bearerToken"]
            .as_str()
            .ok_or_else(|| RelayError::Unavailable("media server login: no bearerToken".into()))?
            .to_owned();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lifetime = Duration::from_secs(
            body["expiresAt"]
                .as_u64()
                .unwrap_or(now_unix + 300)
                .saturating_sub(now_unix),
        );
        let renew_at = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
        logins.insert(
            key.to_owned(),
            Login {
                token: token.clone(),
                renew_at,
            },
        );
        Ok((token, true))
    }

    /// Sends `[webhooks]` to the host at `key` (logging in if needed).
    pub(super) async fn push_webhooks(&self, key: &str) {
        if self.webhooks_request().is_none() {
            return;
        }
        let host = self
            .channels
            .lock()
            .expect("channel map lock is never poisoned")
            .get(key)
            .cloned();
        if let Some(host) = host
            && let Ok((token, _)) = self.login(key, &host, false).await
        {
            self.send_webhooks(key, &host, &token).await;
        }
    }

    pub(super) fn webhooks_request(&self) -> Option<pb::ConfigureWebhooksRequest> {
        self.webhooks
            .lock()
            .expect("webhook settings lock is never poisoned")
            .clone()
    }

    pub(super) async fn send_webhooks(&self, key: &str, host: &Host, token: &str) {
        let Some(request) = self.webhooks_request() else {
            return;
        };
        let mut client = RoomsClient::new(host.channel.clone());
        match client.configure_webhooks(authed(token, request)).await {
            Ok(_) => tracing::debug!(host = %key, "webhook settings sent"),
            // The secret is never in the status text: rtcd's messages name the URL or rule.
            Err(status) => {
                tracing::warn!(host = %key, code = ?status.code(), error = %status.message(), "rtcd refused this proxy's [webhooks] settings; room events from it are not delivered")
            }
        }
    }
}

/// The load a host's placement weight comes from, from its `/system`: its share of capacity in
/// use, its share of its forwarding budget, and (with `cpu`) its CPU use; forwarding and CPU
/// alone never count as full (below 1.0): they shrink a host's share of new rooms, only
/// capacity closes it to them. `None` when it
/// cannot be read, which keeps the previous level.
pub(super) async fn system_load(host: &Host, cpu: bool) -> Option<f64> {
    let body: serde_json::Value = host
        .http
        .get(format!("{}/system", host.api))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let read = |key| body.get(key).and_then(serde_json::Value::as_f64);
    let capacity = read("capacity_used").unwrap_or(0.0);
    let cpu_load = if cpu {
        read("cpu_load").unwrap_or(0.0).min(0.99)
    } else {
        0.0
    };
    // The host's forwarding budget, when its operator set one: like CPU, it weights placement
    // but never closes the host.
    let forwarding = read("forwarding_used").unwrap_or(0.0).min(0.99);
    Some(capacity.max(cpu_load).max(forwarding))
}

/// Marks a host that failed at the transport level unready until its next good probe.
pub(super) fn suspect(hosts: &HostSet, key: &str, why: &str) {
    if hosts.set_health(key, HostHealth::Unready) {
        tracing::info!(host = %key, why, "rtcd host unreachable; new rooms go elsewhere until it answers /readyz again");
    }
}

/// One entry of `rtcd.url`.
pub(super) struct Discovery {
    pub(super) https: bool,
    pub(super) host_name: String,
    pub(super) server_name: String,
    pub(super) grpc_port: u16,
    pub(super) api_port: u16,
    /// The last successful resolution, kept when DNS fails.
    pub(super) last: Mutex<Vec<IpAddr>>,
}
