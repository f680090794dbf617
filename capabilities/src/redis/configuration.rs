//! `configuration.redis`: an app's items in one hash, with changes pushed to every subscriber,
//! whichever sidecar made them.
//!
//! Layout (`<p>` is the `keyPrefix`, as for state):
//! - `<p>config||<app id>`: hash; field `<group>||<label>||<key>`, value JSON
//!   `{content, tags, metadata}`. One hash per app (rather than one per group/label) keeps every
//!   read and write a single-key operation: atomic, no key listing, and it still answers a
//!   query that leaves group or label empty (= any).
//! - `<p>config-rev||<app id>`: the app's revision, incremented by every change.
//! - `<p>config-changes||<app id>`: pub/sub channel. Save and delete are Lua scripts that write,
//!   bump the revision and PUBLISH `<revision> <JSON notice>` atomically.
//!
//! A subscription listens on the channel; it takes a snapshot (revision + items) after
//! subscribing and skips notices it already holds. When its connection drops it reconnects,
//! takes a new snapshot and pushes the difference, so changes made meanwhile are not lost; a gap
//! in revisions (a missed notice) triggers the same resync.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::backend::{as_int, into_items, into_string, Backend};
use super::settings::Settings;
use crate::configuration::{
    ConfigChange, ConfigItem, ConfigQuery, ConfigStore, ConfigSubscription,
};
use crate::error::{Error, Result};
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

static SAVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/config_save.lua")));
static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/config_delete.lua")));

const SEP: &str = "||";
/// How often an idle subscription checks that its connection is alive.
const PING_EVERY: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
const CHANGES_BUFFER: usize = 64;

/// An item as stored in the hash.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tags: HashMap<String, String>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Notice {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    items: Vec<NoticeItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deleted: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NoticeItem {
    field: String,
    value: Stored,
}

/// The Redis configuration store.
#[derive(Debug, Clone)]
pub struct RedisConfigStore {
    backend: Arc<Backend>,
}

/// The keys of one app.
struct AppKeys {
    app: String,
    hash: String,
    rev: String,
    channel: String,
}

impl RedisConfigStore {
    /// Parses the metadata; connects on first use.
    pub fn new(spec: &ComponentSpec, ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            backend: Arc::new(Backend::new(Settings::from_spec(spec, ctx)?)?),
        })
    }

    fn keys(&self, app_id: &str) -> Result<AppKeys> {
        let app = app_id;
        if app.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: configuration app id is empty",
                self.backend.label()
            )));
        }
        let s = &self.backend.s;
        Ok(AppKeys {
            app: app.to_owned(),
            hash: s.key(&format!("config{SEP}{app}")),
            rev: s.key(&format!("config-rev{SEP}{app}")),
            channel: s.key(&format!("config-changes{SEP}{app}")),
        })
    }

    async fn hgetall(&self, keys: &AppKeys) -> Result<Vec<(String, Stored)>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(&keys.hash);
        let v: Value = self
            .backend
            .call("read configuration of app", &keys.app, |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(parse_hash(v))
    }
}

fn field(group: &str, label: &str, key: &str) -> String {
    format!("{group}{SEP}{label}{SEP}{key}")
}

/// `(group, label, key)` of a hash field.
fn split_field(field: &str) -> Option<(&str, &str, &str)> {
    let mut parts = field.splitn(3, SEP);
    Some((parts.next()?, parts.next()?, parts.next()?))
}

fn selects(q: &ConfigQuery, group: &str, label: &str, key: &str) -> bool {
    (q.group.is_empty() || q.group == group)
        && (q.label.is_empty() || q.label == label)
        && (q.keys.is_empty() || q.keys.iter().any(|k| k == key))
}

fn to_item(field: &str, stored: Stored) -> Option<ConfigItem> {
    let (group, label, key) = split_field(field)?;
    Some(ConfigItem {
        key: key.to_owned(),
        content: stored.content,
        group: group.to_owned(),
        label: label.to_owned(),
        tags: stored.tags,
        metadata: stored.metadata,
    })
}

fn deleted_item(field: &str) -> Option<ConfigItem> {
    let (group, label, key) = split_field(field)?;
    Some(ConfigItem {
        key: key.to_owned(),
        group: group.to_owned(),
        label: label.to_owned(),
        metadata: HashMap::from([("deleted".to_owned(), "true".to_owned())]),
        ..ConfigItem::default()
    })
}

/// An `HGETALL` reply (RESP2 flat array or RESP3 map) as `(field, item)`; unreadable values are
/// skipped with a warning rather than failing the whole read.
fn parse_hash(v: Value) -> Vec<(String, Stored)> {
    let mut out = Vec::new();
    let mut it = into_items(v).unwrap_or_default().into_iter();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        let (Some(f), Some(v)) = (into_string(f), into_string(v)) else {
            continue;
        };
        match serde_json::from_str::<Stored>(&v) {
            Ok(s) => out.push((f, s)),
            Err(e) => {
                tracing::warn!(field = %f, error = %e, "configuration item is not valid JSON; skipped")
            }
        }
    }
    out
}

fn sorted(mut items: Vec<ConfigItem>) -> Vec<ConfigItem> {
    items.sort_by(|a, b| (&a.group, &a.label, &a.key).cmp(&(&b.group, &b.label, &b.key)));
    items
}

#[async_trait]
impl Health for RedisConfigStore {
    async fn ping(&self) -> Result<()> {
        self.backend.ping().await
    }
}

#[async_trait]
impl ConfigStore for RedisConfigStore {
    async fn get(&self, query: &ConfigQuery) -> Result<Vec<ConfigItem>> {
        let keys = self.keys(&query.app_id)?;
        let items = self
            .hgetall(&keys)
            .await?
            .into_iter()
            .filter_map(|(f, s)| to_item(&f, s))
            .filter(|i| selects(query, &i.group, &i.label, &i.key))
            .collect();
        Ok(sorted(items))
    }

    async fn save(
        &self,
        app_id: &str,
        items: Vec<ConfigItem>,
        _metadata: &HashMap<String, String>,
    ) -> Result<()> {
        let keys = self.keys(app_id)?;
        if items.is_empty() {
            return Ok(());
        }
        let mut notice = Notice::default();
        for item in items {
            if item.key.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{}: configuration item of app {:?} has an empty key",
                    self.backend.label(),
                    keys.app
                )));
            }
            if item.group.contains(SEP) || item.label.contains(SEP) {
                return Err(Error::InvalidArgument(format!(
                    "{}: configuration item {:?}: group and label must not contain {SEP:?}",
                    self.backend.label(),
                    item.key
                )));
            }
            notice.items.push(NoticeItem {
                field: field(&item.group, &item.label, &item.key),
                value: Stored {
                    content: item.content,
                    tags: item.tags,
                    metadata: item.metadata,
                },
            });
        }
        let notice_json =
            serde_json::to_string(&notice).map_err(|e| self.encode_err(&keys.app, &e))?;
        let mut inv = SAVE.prepare_invoke();
        inv.key(&keys.hash)
            .key(&keys.rev)
            .arg(&keys.channel)
            .arg(&notice_json);
        for it in &notice.items {
            let value =
                serde_json::to_string(&it.value).map_err(|e| self.encode_err(&keys.app, &e))?;
            inv.arg(&it.field).arg(value);
        }
        let _rev: i64 = self
            .backend
            .call("save configuration of app", &keys.app, |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, query: &ConfigQuery) -> Result<()> {
        let keys = self.keys(&query.app_id)?;
        if query.keys.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: deleting configuration of app {:?} needs at least one key",
                self.backend.label(),
                keys.app
            )));
        }
        let fields: Vec<String> = if !query.group.is_empty() && !query.label.is_empty() {
            query
                .keys
                .iter()
                .map(|k| field(&query.group, &query.label, k))
                .collect()
        } else {
            // Group or label left open: find the matching fields first. An item created
            // between this read and the delete is not deleted, as if it came just after.
            self.hgetall(&keys)
                .await?
                .into_iter()
                .map(|(f, _)| f)
                .filter(|f| split_field(f).is_some_and(|(g, l, k)| selects(query, g, l, k)))
                .collect()
        };
        if fields.is_empty() {
            return Ok(());
        }
        let mut inv = DELETE.prepare_invoke();
        inv.key(&keys.hash).key(&keys.rev).arg(&keys.channel);
        for f in &fields {
            inv.arg(f);
        }
        let _deleted: i64 = self
            .backend
            .call("delete configuration of app", &keys.app, |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    async fn subscribe(&self, mut query: ConfigQuery) -> Result<ConfigSubscription> {
        let keys = self.keys(&query.app_id)?;
        query.app_id = keys.app.clone();
        let (tx, rx) = mpsc::channel(CHANGES_BUFFER);
        let mut watch = Watch {
            backend: self.backend.clone(),
            client: self.backend.pubsub_client()?,
            keys,
            query,
            tx,
            rev: 0,
            cache: HashMap::new(),
        };
        // Subscribe before the snapshot: a change made after this call returns is pushed.
        let (sink, stream) = watch.connect().await?;
        let (rev, items) = watch.snapshot().await?;
        watch.rev = rev;
        watch.cache = items;
        let task = tokio::spawn(watch.run(sink, stream));
        Ok(ConfigSubscription::new(rx, Box::new(AbortOnDrop(task))))
    }
}

impl RedisConfigStore {
    fn encode_err(&self, app: &str, e: &serde_json::Error) -> Error {
        Error::Internal(format!(
            "{}: configuration of app {app:?} cannot be encoded: {e}",
            self.backend.label()
        ))
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One subscription's listener.
struct Watch {
    backend: Arc<Backend>,
    client: redis::Client,
    keys: AppKeys,
    query: ConfigQuery,
    tx: mpsc::Sender<ConfigChange>,
    /// The revision the subscriber has seen up to.
    rev: i64,
    /// The selected items as the subscriber last saw them, by field.
    cache: HashMap<String, ConfigItem>,
}

impl Watch {
    async fn connect(&self) -> Result<(PubSubSink, PubSubStream)> {
        let s = &self.backend.s;
        let deadline = s.dial_timeout + s.timeout;
        let attempt = async {
            let (mut sink, stream) = self.client.get_async_pubsub().await?.split();
            sink.subscribe(&self.keys.channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.backend.map_err(&e, "subscribe to configuration of app", &self.keys.app)),
            Err(_) => Err(Error::Unavailable(format!(
                "{}: redis at {} did not answer within {deadline:?} (subscribe to configuration of app {:?})",
                s.label, s.addr, self.keys.app
            ))),
        }
    }

    /// The revision and the selected items, read atomically.
    async fn snapshot(&self) -> Result<(i64, HashMap<String, ConfigItem>)> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(&self.keys.rev)
            .cmd("HGETALL")
            .arg(&self.keys.hash);
        let (rev, hash): (Value, Value) = self
            .backend
            .call("read configuration of app", &self.keys.app, |mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        let items = parse_hash(hash)
            .into_iter()
            .filter_map(|(f, s)| Some((f.clone(), to_item(&f, s)?)))
            .filter(|(_, i)| selects(&self.query, &i.group, &i.label, &i.key))
            .collect();
        Ok((as_int(&rev).unwrap_or(0), items))
    }

    async fn run(mut self, mut sink: PubSubSink, mut stream: PubSubStream) {
        loop {
            // Live: apply notices; ping now and then so a dead connection is noticed.
            #[allow(
                clippy::disallowed_methods,
                reason = "PING_EVERY is a non-zero constant"
            )]
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            if !self.on_notice(msg.get_payload_bytes()).await {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        let alive = tokio::time::timeout(self.backend.s.timeout, sink.ping::<Value>()).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::warn!(app = %self.keys.app, "configuration subscription lost its connection; reconnecting");
            // Reconnect, then push what changed while disconnected.
            let mut pause = RETRY_MIN;
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                if self.tx.is_closed() {
                    return;
                }
                let Ok((new_sink, new_stream)) = self.connect().await else {
                    continue;
                };
                match self.resync().await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => continue,
                }
                (sink, stream) = (new_sink, new_stream);
                tracing::info!(app = %self.keys.app, "configuration subscription reconnected");
                break;
            }
        }
    }

    /// Applies one notice; `false` when the subscriber is gone.
    async fn on_notice(&mut self, payload: &[u8]) -> bool {
        let text = String::from_utf8_lossy(payload);
        let Some((rev, body)) = text.split_once(' ') else {
            return true;
        };
        let Ok(rev) = rev.parse::<i64>() else {
            return true;
        };
        if rev <= self.rev {
            return true;
        }
        if rev != self.rev + 1 {
            // A notice went missing: read the truth instead.
            return self.resync().await.unwrap_or(true);
        }
        self.rev = rev;
        let notice: Notice = match serde_json::from_str(body) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(app = %self.keys.app, error = %e, "unreadable configuration notice; resyncing");
                return self.resync().await.unwrap_or(true);
            }
        };
        let mut changed = Vec::new();
        for NoticeItem { field, value } in notice.items {
            let Some(item) = to_item(&field, value) else {
                continue;
            };
            if selects(&self.query, &item.group, &item.label, &item.key) {
                self.cache.insert(field, item.clone());
                changed.push(item);
            }
        }
        for field in notice.deleted {
            let Some(item) = deleted_item(&field) else {
                continue;
            };
            if selects(&self.query, &item.group, &item.label, &item.key) {
                self.cache.remove(&field);
                changed.push(item);
            }
        }
        self.push(changed).await
    }

    /// Takes a snapshot and pushes the difference from what the subscriber has seen.
    /// `Ok(false)` when the subscriber is gone.
    async fn resync(&mut self) -> Result<bool> {
        let (rev, items) = self.snapshot().await?;
        // A lower revision means Redis lost its data (restarted without persistence): the
        // snapshot is still the truth to diff against.
        if rev == self.rev {
            return Ok(true);
        }
        let mut changed: Vec<ConfigItem> = items
            .iter()
            .filter(|(f, i)| self.cache.get(*f) != Some(*i))
            .map(|(_, i)| i.clone())
            .collect();
        changed.extend(
            self.cache
                .keys()
                .filter(|f| !items.contains_key(*f))
                .filter_map(|f| deleted_item(f)),
        );
        self.rev = rev;
        self.cache = items;
        Ok(self.push(sorted(changed)).await)
    }

    async fn push(&self, items: Vec<ConfigItem>) -> bool {
        if items.is_empty() {
            return true;
        }
        let change = ConfigChange {
            app_id: self.keys.app.clone(),
            items,
        };
        self.tx.send(change).await.is_ok()
    }
}
