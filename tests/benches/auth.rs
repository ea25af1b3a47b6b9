//! Authentication cost: a cached good key vs the bcrypt path, bearer tokens, and durable
//! registrations, on a real sled store in a temp dir with the production bcrypt cost (10).
//!
//! Run: `cargo bench -p rtcd-e2e --bench auth`. Criterion prints time per operation;
//! operations per second = 1 / time.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rtcd::auth::{AuthService, ClientId, ClientStore, Credentials, Principal, Secret};
use rtcd::config::SecurityConfig;
use rtcd::metrics::Metrics;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn service(dir: &std::path::Path, cache_ttl: u64) -> AuthService {
    let config = SecurityConfig {
        bcrypt_cost: 10,
        auth_cache_ttl_seconds: cache_ttl,
        failed_auth_burst: u32::MAX,
        failed_auth_per_minute: u32::MAX,
        ..SecurityConfig::default()
    };
    AuthService::new(ClientStore::open(dir).unwrap(), config, Metrics::new()).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = Secret::new("bench-key-0123456789abcdef0123456789abcdef");
    let id = ClientId::parse("bench").unwrap();
    let cached = service(&dir.path().join("cached"), 600);
    rt.block_on(cached.register(Some(&Principal::Admin), id.clone(), key.clone(), LOCAL))
        .unwrap();
    let basic = Credentials::Basic {
        user: "bench".into(),
        password: key.clone(),
    };
    rt.block_on(cached.authenticate(&basic, LOCAL)).unwrap();
    let token = rt
        .block_on(cached.login(id.clone(), key.clone(), LOCAL))
        .unwrap()
        .token;
    let bearer = Credentials::Bearer(token);

    let mut group = c.benchmark_group("authenticate");
    group.bench_function("basic_cached", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.authenticate(&basic, LOCAL).await.unwrap() })
    });
    group.bench_function("bearer", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.authenticate(&bearer, LOCAL).await.unwrap() })
    });
    // Cache TTL 0: every verification runs bcrypt (cost 10).
    let uncached = service(&dir.path().join("uncached"), 0);
    rt.block_on(uncached.register(Some(&Principal::Admin), id.clone(), key.clone(), LOCAL))
        .unwrap();
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("basic_bcrypt_cost10", |b| {
        b.to_async(&rt)
            .iter(|| async { uncached.authenticate(&basic, LOCAL).await.unwrap() })
    });
    group.finish();

    let mut group = c.benchmark_group("register");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let counter = AtomicU64::new(0);
    group.bench_function("durable_cost10", |b| {
        b.to_async(&rt).iter(|| async {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let id = ClientId::parse(&format!("reg-{n}")).unwrap();
            uncached
                .register(Some(&Principal::Admin), id, key.clone(), LOCAL)
                .await
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
