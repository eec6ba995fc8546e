//! Single-flight within one host: when several steps need the same cache key
//! at once, the first (the leader) computes it and the others wait, bounded,
//! for its result. A leader that ends without a result lets the waiters go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

/// `None` while the leader works; then `Some(result)`, `Some(None)` if it
/// produced nothing.
type Slot = watch::Sender<Option<Option<Value>>>;

#[derive(Default)]
pub struct SingleFlight {
    inflight: Arc<Mutex<HashMap<String, Slot>>>,
}

pub enum Flight {
    /// Compute the value, then `Leader::finish` it.
    Leader(Leader),
    /// Someone else is computing it.
    Follower(watch::Receiver<Option<Option<Value>>>),
}

/// Publishes the leader's result; dropping it unfinished releases the waiters
/// with nothing.
pub struct Leader {
    key: String,
    inflight: Arc<Mutex<HashMap<String, Slot>>>,
}

impl SingleFlight {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn join(&self, key: &str) -> Flight {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = map.get(key) {
            return Flight::Follower(slot.subscribe());
        }
        map.insert(key.to_owned(), watch::channel(None).0);
        Flight::Leader(Leader {
            key: key.to_owned(),
            inflight: self.inflight.clone(),
        })
    }
}

impl Leader {
    pub fn finish(self, value: Option<Value>) {
        self.publish(value);
    }

    fn publish(&self, value: Option<Value>) {
        let slot = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        if let Some(slot) = slot {
            slot.send_replace(Some(value));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.publish(None);
    }
}

/// Waits up to `limit` for the leader; `None` when it produced nothing or
/// took too long (the caller then computes the value itself).
pub async fn wait(
    mut rx: watch::Receiver<Option<Option<Value>>>,
    limit: Duration,
) -> Option<Value> {
    match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
        Ok(Ok(v)) => v.clone().flatten(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let sf = SingleFlight::new();
        let Flight::Leader(leader) = sf.join("k") else {
            panic!("first is leader")
        };
        let Flight::Follower(rx) = sf.join("k") else {
            panic!("second follows")
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        leader.finish(Some(json!(42)));
        assert_eq!(waiter.await.unwrap(), Some(json!(42)));
        // Finished: the next caller leads again.
        assert!(matches!(sf.join("k"), Flight::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let sf = SingleFlight::new();
        let leader = sf.join("k");
        let Flight::Follower(rx) = sf.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(wait(rx, Duration::from_secs(5)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn followers_stop_waiting_at_the_limit() {
        let sf = SingleFlight::new();
        let _leader = sf.join("k");
        let Flight::Follower(rx) = sf.join("k") else {
            panic!()
        };
        assert_eq!(wait(rx, Duration::from_millis(100)).await, None);
    }
}
