//! Cache channels: the last event of each, for new subscribers. Pusher keeps it 30 minutes
//! and loses it on restart; so does this (it is a convenience, history is the durable
//! record). Each node fills its own from one live hub subscription to the cache channels of
//! every app, so every node of a cluster knows the same last events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::event::{EventRef, Filter};
use crate::hub::{Hub, Item};

/// How long a last event is offered (Pusher's TTL).
const TTL: Duration = Duration::from_secs(30 * 60);

/// Most channels remembered; past it the stalest entries go.
const MAX_CHANNELS: usize = 100_000;

/// Herald channel -> its last event and when it came.
type Map = HashMap<Box<str>, (EventRef, Instant)>;

#[derive(Default, Clone)]
pub struct LastEvents {
    map: Arc<Mutex<Map>>,
}

impl LastEvents {
    pub fn get(&self, channel: &str) -> Option<EventRef> {
        let map = self.map.lock().expect("cache channels");
        map.get(channel)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(e, _)| e.clone())
    }

    fn put(&self, event: EventRef) {
        let mut map = self.map.lock().expect("cache channels");
        if map.len() >= MAX_CHANNELS && !map.contains_key(&*event.channel) {
            map.retain(|_, (_, at)| at.elapsed() < TTL);
            if map.len() >= MAX_CHANNELS {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        map.insert(event.channel.clone(), (event, Instant::now()));
    }

    pub fn start(&self, hub: Arc<Hub>, shutdown: CancellationToken) {
        let cache = self.clone();
        tokio::spawn(async move {
            let filter = Filter::parse([
                "pusher/*/cache-*",
                "pusher/*/private-cache-*",
                "pusher/*/private-encrypted-cache-*",
                "pusher/*/presence-cache-*",
            ])
            .expect("valid patterns");
            while !shutdown.is_cancelled() {
                let mut sub = hub.subscribe(filter.clone(), None, CancellationToken::new());
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = sub.next() => match item {
                            Ok(Item::Event(e)) => cache.put(e),
                            Ok(Item::Reset { .. }) => {}
                            // Fell behind: subscribe again (a missed last event is a miss).
                            Err(_) => break,
                        }
                    }
                }
            }
        });
    }
}
