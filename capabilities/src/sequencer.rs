//! The sequencer building block: ids per key, strictly increasing.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::Health;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Increment {
    /// Increasing per sidecar; a component may hand out ids from reserved segments.
    #[default]
    Weak,
    /// Strictly increasing across every sidecar sharing the backend.
    Strong,
}

#[async_trait]
pub trait Sequencer: Health {
    async fn next_id(
        &self,
        key: &str,
        increment: Increment,
        metadata: &HashMap<String, String>,
    ) -> Result<i64>;
}
