//! Target "janus": Janus VideoRoom through its WebSocket API (work in progress on branch `janus`).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::peer::{PeerConfig, PeerOutcome};
use super::stats::Counters;

/// One participant in Janus VideoRoom room `call`.
pub async fn participant(
    _ws_url: String,
    _call: usize,
    _index: usize,
    _config: PeerConfig,
    counters: Arc<Counters>,
    _stop: CancellationToken,
) -> PeerOutcome {
    counters
        .failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PeerOutcome {
        join_time: None,
        loss: Default::default(),
        error: Some("the Janus target is not built yet".into()),
    }
}
