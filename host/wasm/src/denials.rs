//! Capabilities a plugin reached for and was refused during one step. The
//! sandbox, the `wasi:http` gate and the blob access record them here; the run reads them to
//! report a step that failed after a refusal as `capability_denied`.
//! Invariant: at most `MAX_DENIALS` distinct entries per step.

use std::sync::{Arc, Mutex, PoisonError};

/// Denials kept per step; more are counted only by the first ones' presence.
const MAX_DENIALS: usize = 16;

/// A capability a plugin reached for and was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `filesystem`, `environment`, `socket`, `http` or `blobs`.
    pub capability: &'static str,
    pub detail: String,
}

/// The denials of one step; clones share the list.
#[derive(Clone, Debug, Default)]
pub struct Denials(Arc<Mutex<Vec<Denial>>>);

impl Denials {
    pub fn record(&self, capability: &'static str, detail: String) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() < MAX_DENIALS && !list.iter().any(|d| d.detail == detail) {
            list.push(Denial { capability, detail });
        }
    }

    pub fn list(&self) -> Vec<Denial> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
