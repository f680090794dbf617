//! The hello building block (Layotto's `SayHello`): a greeting, used to check the sidecar
//! answers end to end.

use async_trait::async_trait;

use crate::error::Result;
use crate::Health;

#[async_trait]
pub trait Hello: Health {
    async fn say_hello(&self, name: &str) -> Result<String>;
}
