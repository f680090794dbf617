//! `configuration.memory`: items keyed by (app id, group, label, key), with change pushes.
//!
//! Queries select by app id, then by group and label when those are non-empty, then by keys
//! when the list is non-empty. A subscriber receives every later save or delete its query
//! selects; a deleted item arrives with empty `content` and metadata `deleted=true`.
//!
//! Slow subscribers never block `save`: each subscriber has a pending set holding the *latest*
//! state of every changed item it has not received yet, and a forwarder task (spawned by
//! `subscribe`) drains that set into the subscription's channel. A subscriber that falls behind
//! therefore receives fewer, merged changes, never a stale final value, and memory per
//! subscriber is bounded by the number of distinct items.
//!
//! Bounded: metadata `maxKeys` (default 100 000 items over all apps) and `maxBytes` (default
//! 64 MiB: app id, group, label, key, content, tags and metadata of every item)
//! ([`super::Limits`]). A save that would cross a bound fails with RESOURCE_EXHAUSTED naming the
//! store and changes nothing; deletes free room.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use crate::configuration::{
    ConfigChange, ConfigItem, ConfigQuery, ConfigStore, ConfigSubscription,
};
use crate::error::{Error, Result};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

use super::{Limits, Usage, DEFAULT_MAX_BYTES, DEFAULT_MAX_KEYS};

/// Metadata marking a pushed item as deleted.
pub const DELETED_METADATA: &str = "deleted";

/// Changes handed to a subscriber ahead of it reading them; more wait merged in its pending set.
const SUBSCRIBER_CHANNEL: usize = 16;

/// (group, label, key) inside one app.
type ItemId = (String, String, String);

#[derive(Debug)]
pub struct MemoryConfigStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `configuration store "<name>"`: the prefix of every error message.
    label: String,
    limits: Limits,
    state: RwLock<State>,
    next_sub: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Items per app id, ordered so `get` answers deterministically.
    apps: HashMap<String, BTreeMap<ItemId, ConfigItem>>,
    subscribers: Vec<Subscriber>,
    /// What `apps` holds.
    usage: Usage,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    query: ConfigQuery,
    pending: Arc<Pending>,
}

/// Changes not yet handed to one subscriber: the latest state per item.
#[derive(Debug, Default)]
struct Pending {
    items: Mutex<BTreeMap<ItemId, ConfigItem>>,
    notify: Notify,
}

struct Unsubscribe {
    shared: Weak<Shared>,
    id: u64,
    forwarder: AbortHandle,
}

/// What an item of `app_id` counts against `maxBytes`.
fn size_of(app_id: &str, item: &ConfigItem) -> usize {
    let map = |m: &HashMap<String, String>| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    app_id.len()
        + item.group.len()
        + item.label.len()
        + item.key.len()
        + item.content.len()
        + map(&item.tags)
        + map(&item.metadata)
}

fn id_of(item: &ConfigItem) -> ItemId {
    (item.group.clone(), item.label.clone(), item.key.clone())
}

/// Whether `query` selects `item` of `app_id`.
fn selects(query: &ConfigQuery, app_id: &str, item: &ConfigItem) -> bool {
    query.app_id == app_id
        && (query.group.is_empty() || query.group == item.group)
        && (query.label.is_empty() || query.label == item.label)
        && (query.keys.is_empty() || query.keys.contains(&item.key))
}

// === impl MemoryConfigStore ===

impl MemoryConfigStore {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                label: format!("configuration store {:?}", spec.name),
                limits: Limits::from_spec(spec, DEFAULT_MAX_KEYS, DEFAULT_MAX_BYTES)?,
                state: RwLock::default(),
                next_sub: AtomicU64::new(0),
            }),
        })
    }

    fn check_app(&self, app_id: &str) -> Result<()> {
        if app_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: app id is empty",
                self.shared.label
            )));
        }
        Ok(())
    }
}

impl State {
    /// Queues `changed` items of `app_id` for every subscriber selecting them.
    fn notify(&self, app_id: &str, changed: &[ConfigItem]) {
        for sub in &self.subscribers {
            let mut woke = false;
            {
                let mut pending = sub.pending.items.lock();
                for item in changed.iter().filter(|i| selects(&sub.query, app_id, i)) {
                    pending.insert(id_of(item), item.clone());
                    woke = true;
                }
            }
            if woke {
                sub.pending.notify.notify_one();
            }
        }
    }
}

#[async_trait]
impl Health for MemoryConfigStore {}

#[async_trait]
impl ConfigStore for MemoryConfigStore {
    async fn get(&self, query: &ConfigQuery) -> Result<Vec<ConfigItem>> {
        self.check_app(&query.app_id)?;
        let state = self.shared.state.read();
        Ok(state
            .apps
            .get(&query.app_id)
            .map(|items| {
                items
                    .values()
                    .filter(|i| selects(query, &query.app_id, i))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn save(
        &self,
        app_id: &str,
        items: Vec<ConfigItem>,
        _metadata: &HashMap<String, String>,
    ) -> Result<()> {
        self.check_app(app_id)?;
        // Validate everything first: a save is all-or-nothing.
        if items.iter().any(|i| i.key.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "{}: an item of app {app_id:?} has an empty key",
                self.shared.label
            )));
        }
        let mut state = self.shared.state.write();
        let before = state.usage;
        let mut after = before;
        {
            // Size of each item as earlier items of the batch left it.
            let mut sizes: HashMap<ItemId, usize> = HashMap::new();
            let existing = state.apps.get(app_id);
            for item in &items {
                let id = id_of(item);
                let old = match sizes.get(&id) {
                    Some(size) => Some(*size),
                    None => existing
                        .and_then(|a| a.get(&id))
                        .map(|i| size_of(app_id, i)),
                };
                if let Some(b) = old {
                    after.remove(b);
                }
                let new = size_of(app_id, item);
                after.add(new);
                sizes.insert(id, new);
            }
        }
        self.shared
            .limits
            .check(&self.shared.label, before, after)?;
        state.usage = after;
        let app = state.apps.entry(app_id.to_owned()).or_default();
        for item in &items {
            app.insert(id_of(item), item.clone());
        }
        state.notify(app_id, &items);
        Ok(())
    }

    async fn delete(&self, query: &ConfigQuery) -> Result<()> {
        self.check_app(&query.app_id)?;
        if query.keys.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: delete for app {:?} names no keys",
                self.shared.label, query.app_id
            )));
        }
        let mut state = self.shared.state.write();
        let state = &mut *state;
        let Some(app) = state.apps.get_mut(&query.app_id) else {
            return Ok(());
        };
        let gone: Vec<ItemId> = app
            .iter()
            .filter(|(_, i)| selects(query, &query.app_id, i))
            .map(|(id, _)| id.clone())
            .collect();
        let mut deleted = Vec::with_capacity(gone.len());
        for id in gone {
            if let Some(item) = app.remove(&id) {
                state.usage.remove(size_of(&query.app_id, &item));
                deleted.push(ConfigItem {
                    key: item.key,
                    group: item.group,
                    label: item.label,
                    metadata: HashMap::from([(DELETED_METADATA.to_owned(), "true".to_owned())]),
                    ..ConfigItem::default()
                });
            }
        }
        if app.is_empty() {
            state.apps.remove(&query.app_id);
        }
        state.notify(&query.app_id, &deleted);
        Ok(())
    }

    async fn subscribe(&self, query: ConfigQuery) -> Result<ConfigSubscription> {
        self.check_app(&query.app_id)?;
        let shared = &self.shared;
        let pending = Arc::new(Pending::default());
        let id = shared.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CHANNEL);
        let task = tokio::spawn(forward(query.app_id.clone(), pending.clone(), tx));
        // Registered before returning: a change saved after `subscribe` returns is pushed.
        shared
            .state
            .write()
            .subscribers
            .push(Subscriber { id, query, pending });
        let guard = Unsubscribe {
            shared: Arc::downgrade(shared),
            id,
            forwarder: task.abort_handle(),
        };
        Ok(ConfigSubscription::new(rx, Box::new(guard)))
    }
}

/// Moves pending changes into the subscriber's channel, one merged change per wake-up.
async fn forward(app_id: String, pending: Arc<Pending>, tx: mpsc::Sender<ConfigChange>) {
    loop {
        pending.notify.notified().await;
        let items: Vec<ConfigItem> = std::mem::take(&mut *pending.items.lock())
            .into_values()
            .collect();
        if items.is_empty() {
            continue;
        }
        if tx
            .send(ConfigChange {
                app_id: app_id.clone(),
                items,
            })
            .await
            .is_err()
        {
            return; // the subscriber is gone
        }
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.state.write().subscribers.retain(|s| s.id != self.id);
        }
        self.forwarder.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    fn store() -> MemoryConfigStore {
        MemoryConfigStore::new(
            &ComponentSpec::new("cfg", "configuration.memory"),
            &BuildContext::default(),
        )
        .unwrap()
    }

    fn item(key: &str, content: &str) -> ConfigItem {
        ConfigItem {
            key: key.into(),
            content: content.into(),
            ..Default::default()
        }
    }

    fn query(app: &str, keys: &[&str]) -> ConfigQuery {
        ConfigQuery {
            app_id: app.into(),
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn slow_subscriber_does_not_block_save_and_gets_latest_values() {
        let s = store();
        let mut sub = s.subscribe(query("app", &[])).await.unwrap();
        // Far more saves than the channel holds, with nobody reading.
        for n in 0..(SUBSCRIBER_CHANNEL * 10) {
            s.save("app", vec![item("k", &n.to_string())], &HashMap::new())
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        let last = (SUBSCRIBER_CHANNEL * 10 - 1).to_string();
        let mut seen = String::new();
        while seen != last {
            let change = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("the latest value arrives")
                .expect("open");
            seen = change.items.last().unwrap().content.clone();
        }
    }

    #[tokio::test]
    async fn empty_app_and_keyless_delete_are_rejected() {
        let s = store();
        let err = s.get(&query("", &[])).await.unwrap_err().to_string();
        assert!(err.contains("\"cfg\"") && err.contains("app id"), "{err}");
        assert!(s
            .save("", vec![item("k", "v")], &HashMap::new())
            .await
            .is_err());
        assert!(s
            .save("app", vec![item("", "v")], &HashMap::new())
            .await
            .is_err());
        assert!(s.delete(&query("app", &[])).await.is_err());
        assert!(s.subscribe(query("", &[])).await.is_err());
    }

    #[tokio::test]
    async fn bounds_refuse_growth_and_deletes_free_room() {
        let s = MemoryConfigStore::new(
            &ComponentSpec::new("cfg", "configuration.memory")
                .with("maxKeys", "2")
                .with("maxBytes", "100"),
            &BuildContext::default(),
        )
        .unwrap();
        let m = HashMap::new();
        s.save("app", vec![item("a", "1"), item("b", "1")], &m)
            .await
            .unwrap();
        let err = s.save("app", vec![item("c", "1")], &m).await.unwrap_err();
        assert!(
            matches!(&err, Error::ResourceExhausted(msg) if msg.contains("\"cfg\"") && msg.contains("maxKeys=2")),
            "{err:?}"
        );
        // The refused save changed nothing; an update of a known item is fine.
        assert_eq!(s.get(&query("app", &[])).await.unwrap().len(), 2);
        s.save("app", vec![item("a", "2")], &m).await.unwrap();
        s.delete(&query("app", &["a"])).await.unwrap();
        s.save("app", vec![item("c", "1")], &m).await.unwrap();
        // "app" + "c" + "1" and "app" + "b" + "1".
        assert_eq!(s.shared.state.read().usage, Usage { keys: 2, bytes: 10 });
        let big = "x".repeat(100);
        let err = s.save("app", vec![item("b", &big)], &m).await.unwrap_err();
        assert!(err.to_string().contains("maxBytes=100"), "{err}");
    }

    #[tokio::test]
    async fn unsubscribe_unregisters() {
        let s = store();
        let sub = s.subscribe(query("app", &[])).await.unwrap();
        assert_eq!(s.shared.state.read().subscribers.len(), 1);
        drop(sub);
        assert!(s.shared.state.read().subscribers.is_empty());
    }
}
