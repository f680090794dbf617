//! The configuration building block: items per app (and group, label), with change pushes.

use std::collections::HashMap;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::Health;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigItem {
    pub key: String,
    pub content: String,
    pub group: String,
    pub label: String,
    pub tags: HashMap<String, String>,
    pub metadata: HashMap<String, String>,
}

/// Selects items: `keys` empty = every key of the app (and group/label when given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigQuery {
    pub app_id: String,
    pub group: String,
    pub label: String,
    pub keys: Vec<String>,
    pub metadata: HashMap<String, String>,
}

/// One change pushed to a subscriber. A deleted item arrives with empty `content` and
/// metadata `deleted=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub app_id: String,
    pub items: Vec<ConfigItem>,
}

/// A live configuration subscription; dropping it unsubscribes.
pub struct ConfigSubscription {
    pub changes: mpsc::Receiver<ConfigChange>,
    _guard: Box<dyn Send + Sync>,
}

impl ConfigSubscription {
    pub fn new(changes: mpsc::Receiver<ConfigChange>, guard: Box<dyn Send + Sync>) -> Self {
        Self {
            changes,
            _guard: guard,
        }
    }

    pub async fn next(&mut self) -> Option<ConfigChange> {
        self.changes.recv().await
    }
}

impl std::fmt::Debug for ConfigSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSubscription").finish_non_exhaustive()
    }
}

#[async_trait]
pub trait ConfigStore: Health {
    async fn get(&self, query: &ConfigQuery) -> Result<Vec<ConfigItem>>;

    async fn save(
        &self,
        app_id: &str,
        items: Vec<ConfigItem>,
        metadata: &HashMap<String, String>,
    ) -> Result<()>;

    /// Deletes the selected keys (`keys` must not be empty).
    async fn delete(&self, query: &ConfigQuery) -> Result<()>;

    /// Pushes every later change to the selected items (made by anyone sharing the backend).
    async fn subscribe(&self, query: ConfigQuery) -> Result<ConfigSubscription>;
}
