//! Patterned subscriptions, indexed so an event meets only the ones that can match it.
//!
//! Every pattern is `literal prefix` + `*...`; a channel can match it only if it starts with
//! that prefix. The index is a byte trie over those prefixes (and over the exact channels of
//! the same subscriptions): walking an event's channel down the trie collects exactly the
//! subscriptions with a prefix of it, which the full `Filter::matches` then decides. With
//! 10,000 subscriptions on `user:{i}:*`, an event on `orders` meets none of them, where a
//! list would test all 10,000. Hand-written: a radix tree crate would do, but the trie is a
//! few dozen lines and its lookup (collect along one path) is the one operation we need.

use std::sync::Arc;

use super::Sink;
use crate::event::Filter;

#[derive(Default)]
pub(super) struct PatternIndex {
    root: Node,
    len: usize,
}

#[derive(Default)]
struct Node {
    /// Sorted by byte.
    next: Vec<(u8, Node)>,
    sinks: Vec<Arc<Sink>>,
}

/// The trie keys of a filter: each pattern's text before its first `*`, and its channels.
fn keys(filter: &Filter) -> Vec<&str> {
    let mut keys: Vec<&str> = filter
        .patterns()
        .map(|p| p.as_str().split('*').next().unwrap_or(""))
        .chain(filter.channels())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl PatternIndex {
    pub(super) fn insert(&mut self, sink: Arc<Sink>) {
        for key in keys(&sink.filter) {
            let mut node = &mut self.root;
            for &b in key.as_bytes() {
                let at = match node.next.binary_search_by_key(&b, |(k, _)| *k) {
                    Ok(i) => i,
                    Err(i) => {
                        node.next.insert(i, (b, Node::default()));
                        i
                    }
                };
                node = &mut node.next[at].1;
            }
            node.sinks.push(sink.clone());
        }
        self.len += 1;
    }

    pub(super) fn remove(&mut self, id: u64, filter: &Filter) {
        let mut found = false;
        for key in keys(filter) {
            found |= remove_at(&mut self.root, key.as_bytes(), id);
        }
        if found {
            self.len -= 1;
        }
    }

    /// Subscriptions that may match `channel` (each once); the caller checks the filter.
    pub(super) fn candidates(&self, channel: &str, out: &mut Vec<Arc<Sink>>) {
        out.clear();
        let mut node = &self.root;
        out.extend(node.sinks.iter().cloned());
        for &b in channel.as_bytes() {
            match node.next.binary_search_by_key(&b, |(k, _)| *k) {
                Ok(i) => node = &node.next[i].1,
                Err(_) => break,
            }
            out.extend(node.sinks.iter().cloned());
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|s| s.id);
            out.dedup_by_key(|s| s.id);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn drain(&mut self) -> Vec<Arc<Sink>> {
        let mut all = Vec::new();
        collect(std::mem::take(&mut self.root), &mut all);
        self.len = 0;
        all.sort_unstable_by_key(|s| s.id);
        all.dedup_by_key(|s| s.id);
        all
    }
}

/// Removes `id` under `key`; prunes nodes left empty. Returns whether it was there.
fn remove_at(node: &mut Node, key: &[u8], id: u64) -> bool {
    let Some((&b, rest)) = key.split_first() else {
        let before = node.sinks.len();
        node.sinks.retain(|s| s.id != id);
        return node.sinks.len() < before;
    };
    let Ok(i) = node.next.binary_search_by_key(&b, |(k, _)| *k) else {
        return false;
    };
    let found = remove_at(&mut node.next[i].1, rest, id);
    let child = &node.next[i].1;
    if child.sinks.is_empty() && child.next.is_empty() {
        node.next.remove(i);
    }
    found
}

fn collect(node: Node, out: &mut Vec<Arc<Sink>>) {
    out.extend(node.sinks);
    for (_, child) in node.next {
        collect(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn sink(id: u64, names: &[String]) -> Arc<Sink> {
        let filter = Arc::new(Filter::parse(names.iter().map(String::as_str)).unwrap());
        Arc::new(Sink::new(id, filter, CancellationToken::new(), 1))
    }

    proptest::proptest! {
        /// The index plus the filter check finds exactly the subscriptions a scan of every
        /// one finds, before and after removals.
        #[test]
        fn finds_what_a_full_scan_finds(
            filters in proptest::collection::vec(proptest::collection::vec("[ab:*]{1,6}", 1..4), 1..30),
            channels in proptest::collection::vec("[ab:]{1,8}", 1..20),
            removed in proptest::collection::vec(proptest::num::usize::ANY, 0..10),
        ) {
            let sinks: Vec<Arc<Sink>> = filters.iter().enumerate().map(|(i, f)| sink(i as u64, f)).collect();
            let mut index = PatternIndex::default();
            for s in &sinks {
                index.insert(s.clone());
            }
            let mut live: Vec<Arc<Sink>> = sinks.clone();
            for r in removed {
                if live.is_empty() { break; }
                let s = live.remove(r % live.len());
                index.remove(s.id, &s.filter);
            }
            proptest::prop_assert_eq!(index.len(), live.len());
            let mut out = Vec::new();
            for c in &channels {
                index.candidates(c, &mut out);
                let mut found: Vec<u64> = out.iter().filter(|s| s.filter.matches(c)).map(|s| s.id).collect();
                found.sort_unstable();
                let mut naive: Vec<u64> = live.iter().filter(|s| s.filter.matches(c)).map(|s| s.id).collect();
                naive.sort_unstable();
                proptest::prop_assert_eq!(found, naive, "channel {}", c);
            }
        }
    }
}
