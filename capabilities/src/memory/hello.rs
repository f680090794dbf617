//! `hello.helloworld`: Layotto's helloworld. Metadata `hello` is the greeting (default
//! `greetings`); `say_hello(name)` answers `"<greeting>, <name>"`, or just the greeting when the
//! name is empty — exactly what Layotto's `components/hello/helloworld` returns.

use async_trait::async_trait;

use crate::error::Result;
use crate::hello::Hello;
use crate::spec::{BuildContext, ComponentSpec};
use crate::Health;

#[derive(Debug)]
pub struct HelloWorld {
    greeting: String,
}

impl HelloWorld {
    pub fn new(spec: &ComponentSpec, _ctx: &BuildContext) -> Result<Self> {
        Ok(Self {
            greeting: spec.meta_string_or("hello", "greetings"),
        })
    }
}

#[async_trait]
impl Health for HelloWorld {}

#[async_trait]
impl Hello for HelloWorld {
    async fn say_hello(&self, name: &str) -> Result<String> {
        if name.is_empty() {
            return Ok(self.greeting.clone());
        }
        Ok(format!("{}, {name}", self.greeting))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn greets_like_layotto() {
        let ctx = BuildContext::default();
        let h =
            HelloWorld::new(&ComponentSpec::new("helloworld", "hello.helloworld"), &ctx).unwrap();
        assert_eq!(h.say_hello("").await.unwrap(), "greetings");
        assert_eq!(h.say_hello("Layotto").await.unwrap(), "greetings, Layotto");
        let h = HelloWorld::new(
            &ComponentSpec::new("h", "hello.helloworld").with("hello", "Hi"),
            &ctx,
        )
        .unwrap();
        assert_eq!(h.say_hello("Layotto").await.unwrap(), "Hi, Layotto");
    }
}
