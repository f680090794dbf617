//! The secrets building block: read-only named secrets, each a map of string pairs.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::Health;

pub type SecretMap = HashMap<String, String>;

#[async_trait]
pub trait SecretStore: Health {
    /// A missing secret is [`crate::Error::NotFound`] naming the key and store.
    async fn get(&self, key: &str, metadata: &HashMap<String, String>) -> Result<SecretMap>;

    async fn bulk_get(
        &self,
        metadata: &HashMap<String, String>,
    ) -> Result<HashMap<String, SecretMap>>;
}
