//! The single-node queue's claiming: the tasks live in the embedded `WebhookStore`; one node
//! only needs to remember what it has in flight.

use std::collections::HashMap;

use super::embedded::{Step, WebhookStore};
use super::Want;
use crate::webhook::model::Task;

/// The single-node claim: a scan of the in-memory due index that seeks past busy endpoints.
pub(super) fn claim(
    store: &WebhookStore,
    now_ms: u64,
    wants: &HashMap<String, Want>,
    total: usize,
    busy: impl Fn(&str, u64) -> bool,
) -> Vec<(String, Task)> {
    let mut taken: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut saturated = 0;
    store.scan_due(now_ms, |id, task, is_head| {
        if out.len() >= total || saturated >= wants.len() {
            return Step::Stop;
        }
        let Some((key, want)) = wants.get_key_value(id) else {
            return Step::SkipEndpoint;
        };
        let n = taken.entry(key.as_str()).or_default();
        if *n >= want.capacity {
            saturated += 1;
            return Step::SkipEndpoint;
        }
        if busy(id, task.seq) {
            return Step::Next;
        }
        // Ordered endpoints send only their head, retried until it resolves.
        if want.ordered && !is_head {
            return Step::SkipEndpoint;
        }
        *n += 1;
        out.push((id.to_string(), task));
        Step::Next
    });
    out
}
