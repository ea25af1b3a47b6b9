//! Webhooks as the daemon wires them: `[webhooks]` settings reach the service, the dispatcher
//! starts and stops with rtcd, its metrics are exported. (Delivery itself is tested against a
//! real receiver in `rtcd::webhook`'s unit tests; an end-to-end test of events emitted by real
//! calls, with `rtcd_e2e::webhook::WebhookReceiver`, belongs here once the SFU emits them.)

use std::time::{Duration, Instant};

use rtcd::sfu::TenantId;
use rtcd::webhook::WebhookError;
use rtcd_e2e::daemon::{TestRtcd, scrape};
use rtcd_e2e::webhook::WebhookReceiver;

const SECRET: &str = "e2e-webhook-secret-0123456789abcdef";

#[tokio::test]
async fn the_daemon_configures_webhooks_and_refuses_loopback_by_default() {
    let receiver = WebhookReceiver::start(SECRET, 0).await.unwrap();
    let tenant = TenantId::new("acme");

    let strict = TestRtcd::start(&[]).await.unwrap();
    let e = strict
        .rtcd
        .webhooks()
        .configure(&tenant, vec![receiver.url()], SECRET.into())
        .await
        .unwrap_err();
    assert!(matches!(e, WebhookError::AddressNotAllowed { .. }), "{e:?}");
    let metrics = scrape(&format!("{}/metrics", strict.internal))
        .await
        .unwrap();
    assert!(
        metrics.contains("rtcd_webhook_events_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );
    let began = Instant::now();
    strict.stop().await;
    assert!(began.elapsed() < Duration::from_secs(10));

    let lax = TestRtcd::start(&[("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true")])
        .await
        .unwrap();
    let webhooks = lax.rtcd.webhooks().clone();
    webhooks
        .configure(&tenant, vec![receiver.url()], SECRET.into())
        .await
        .unwrap();
    assert!(webhooks.is_configured(&tenant));
    lax.stop().await;

    let off = TestRtcd::start(&[("RTCD_WEBHOOKS_ENABLED", "false")])
        .await
        .unwrap();
    let e = off
        .rtcd
        .webhooks()
        .configure(&tenant, vec![receiver.url()], SECRET.into())
        .await
        .unwrap_err();
    assert!(matches!(e, WebhookError::Disabled), "{e:?}");
    off.stop().await;
    assert!(receiver.requests().is_empty());
}
