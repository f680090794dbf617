//! The registry of named components: built per config update from its component specs, then
//! read by the API adapters (`registry.state("statestore")`).
//!
//! A config update builds the next registry from the previous one ([`Registry::update`]): a
//! component whose spec (and build context) did not change is carried over as the *same*
//! object, so it keeps its data, connections and subscriptions; a changed one is built anew.
//! Once the update is published, [`Registry::retire_superseded`] tells every replaced or removed
//! component's [`Lifecycle`] so long-lived users (subscription streams, AppCallback delivery)
//! end or resubscribe. Components are `Arc`s: in-flight calls on a replaced component finish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::configuration::ConfigStore;
use crate::error::{Error, Result};
use crate::hello::Hello;
use crate::lock::LockStore;
use crate::pubsub::PubSub;
use crate::secrets::SecretStore;
use crate::sequencer::Sequencer;
use crate::spec::{BuildContext, ComponentSpec};
use crate::state::StateStore;
use crate::{memory, redis, Health};

/// Why a component instance stopped being the one config names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// A config update changed its spec: a new instance serves the name now.
    Changed,
    /// A config update removed it.
    Removed,
}

impl Retirement {
    pub fn as_str(self) -> &'static str {
        match self {
            Retirement::Changed => "changed",
            Retirement::Removed => "removed",
        }
    }
}

/// The life of one component instance across config updates: current until retired.
#[derive(Debug)]
pub struct Lifecycle {
    tx: watch::Sender<Option<Retirement>>,
}

impl Lifecycle {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            tx: watch::Sender::new(None),
        })
    }

    /// Marks the instance replaced or removed; every [`RetiredWatch`] wakes.
    pub fn retire(&self, why: Retirement) {
        self.tx.send_replace(Some(why));
    }

    /// `Some` once retired.
    pub fn retired(&self) -> Option<Retirement> {
        *self.tx.borrow()
    }

    pub fn watch(&self) -> RetiredWatch {
        RetiredWatch(self.tx.subscribe())
    }
}

/// Waits for a component instance to be retired.
#[derive(Debug, Clone)]
pub struct RetiredWatch(watch::Receiver<Option<Retirement>>);

impl RetiredWatch {
    /// Resolves when the instance is retired; never, while it stays current.
    pub async fn retired(&mut self) -> Retirement {
        let seen = self.0.wait_for(Option::is_some).await.map(|r| *r);
        match seen {
            Ok(r) => r.unwrap_or(Retirement::Removed),
            // The lifecycle is gone only with its registry: nothing will retire it.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The building block a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    State,
    PubSub,
    Lock,
    Sequencer,
    Configuration,
    Secrets,
    Hello,
}

impl Block {
    pub fn as_str(self) -> &'static str {
        match self {
            Block::State => "state",
            Block::PubSub => "pubsub",
            Block::Lock => "lock",
            Block::Sequencer => "sequencer",
            Block::Configuration => "configuration",
            Block::Secrets => "secret",
            Block::Hello => "hello",
        }
    }
}

/// Every component type this build knows, with its building block.
pub const KNOWN_TYPES: &[(&str, Block)] = &[
    ("state.memory", Block::State),
    ("state.in-memory", Block::State),
    ("state.redis", Block::State),
    ("pubsub.memory", Block::PubSub),
    ("pubsub.in-memory", Block::PubSub),
    ("pubsub.redis", Block::PubSub),
    ("lock.memory", Block::Lock),
    ("lock.in-memory", Block::Lock),
    ("lock.redis", Block::Lock),
    ("sequencer.memory", Block::Sequencer),
    ("sequencer.in-memory", Block::Sequencer),
    ("sequencer.redis", Block::Sequencer),
    ("configuration.memory", Block::Configuration),
    ("configuration.in-memory", Block::Configuration),
    ("configuration.redis", Block::Configuration),
    ("secretstores.local.env", Block::Secrets),
    ("secretstores.local.file", Block::Secrets),
    ("hello.helloworld", Block::Hello),
];

/// Looks up a component type: `None` when this build does not know it.
pub fn block_of(kind: &str) -> Option<Block> {
    KNOWN_TYPES
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, b)| *b)
}

/// A configured component as the admin endpoints report it.
#[derive(Clone)]
pub struct ComponentInfo {
    pub name: String,
    pub kind: String,
    pub block: Block,
    pub spec: ComponentSpec,
    pub lifecycle: Arc<Lifecycle>,
    health: Arc<dyn Health>,
}

impl std::fmt::Debug for ComponentInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentInfo")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Named components by building block.
#[derive(Default)]
pub struct Registry {
    state: BTreeMap<String, Arc<dyn StateStore>>,
    pubsub: BTreeMap<String, Arc<dyn PubSub>>,
    lock: BTreeMap<String, Arc<dyn LockStore>>,
    sequencer: BTreeMap<String, Arc<dyn Sequencer>>,
    configuration: BTreeMap<String, Arc<dyn ConfigStore>>,
    secrets: BTreeMap<String, Arc<dyn SecretStore>>,
    hello: BTreeMap<String, Arc<dyn Hello>>,
    components: Vec<ComponentInfo>,
    ctx: BuildContext,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("components", &self.components)
            .finish()
    }
}

fn lookup<'a, T: ?Sized>(
    map: &'a BTreeMap<String, Arc<T>>,
    block: Block,
    name: &str,
) -> Result<&'a Arc<T>> {
    map.get(name).ok_or_else(|| {
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        Error::unknown_component(block.as_str(), name, &names)
    })
}

// === impl Registry ===

impl Registry {
    /// Builds every component; returns all problems, each prefixed with the spec's path
    /// (`components[2].type: unknown type "state.foo"`). Does no network I/O: backends are
    /// connected on first use, so this also serves `mecha validate`.
    pub fn build(specs: &[ComponentSpec], ctx: &BuildContext) -> Result<Self, Vec<String>> {
        Self::update(None, specs, ctx)
    }

    /// Builds the registry a config update asks for, carrying over from `prev` every component
    /// whose spec and build context are unchanged (the same object: data, connections and
    /// subscriptions kept). Touches nothing in `prev`: call [`Registry::retire_superseded`] once
    /// the result is published.
    pub fn update(
        prev: Option<&Registry>,
        specs: &[ComponentSpec],
        ctx: &BuildContext,
    ) -> Result<Self, Vec<String>> {
        let mut reg = Registry {
            ctx: ctx.clone(),
            ..Registry::default()
        };
        let prev = prev.filter(|p| p.ctx == *ctx);
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            if let Err(e) = reg.add(spec, ctx, prev) {
                let msg = e.to_string();
                if msg.starts_with("metadata.")
                    || msg.starts_with("type:")
                    || msg.starts_with("name:")
                {
                    errors.push(format!("components[{i}].{msg}"));
                } else {
                    errors.push(format!("components[{i}] ({}): {msg}", spec.name));
                }
            }
        }
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(errors)
        }
    }

    /// Tells each component of `old` that `new` no longer holds (replaced or removed) that it
    /// is retired, so its long-lived users end or resubscribe.
    pub fn retire_superseded(old: &Registry, new: &Registry) {
        for c in &old.components {
            match new.find(c.block, &c.name) {
                Some(n) if Arc::ptr_eq(&n.lifecycle, &c.lifecycle) => {}
                Some(_) => c.lifecycle.retire(Retirement::Changed),
                None => c.lifecycle.retire(Retirement::Removed),
            }
        }
    }

    /// The component of `block` named `name`, as the admin endpoints report it.
    pub fn find(&self, block: Block, name: &str) -> Option<&ComponentInfo> {
        self.components
            .iter()
            .find(|c| c.block == block && c.name == name)
    }

    /// Copies `prev`'s instance of an unchanged component into this registry.
    fn carry_over(&mut self, prev: &Registry, info: &ComponentInfo) -> bool {
        fn take<T: ?Sized>(
            from: &BTreeMap<String, Arc<T>>,
            to: &mut BTreeMap<String, Arc<T>>,
            name: &str,
        ) -> bool {
            match from.get(name) {
                Some(c) => {
                    to.insert(name.to_owned(), c.clone());
                    true
                }
                None => false,
            }
        }
        let name = info.name.as_str();
        let found = match info.block {
            Block::State => take(&prev.state, &mut self.state, name),
            Block::PubSub => take(&prev.pubsub, &mut self.pubsub, name),
            Block::Lock => take(&prev.lock, &mut self.lock, name),
            Block::Sequencer => take(&prev.sequencer, &mut self.sequencer, name),
            Block::Configuration => take(&prev.configuration, &mut self.configuration, name),
            Block::Secrets => take(&prev.secrets, &mut self.secrets, name),
            Block::Hello => take(&prev.hello, &mut self.hello, name),
        };
        if found {
            self.components.push(info.clone());
        }
        found
    }

    fn add(
        &mut self,
        spec: &ComponentSpec,
        ctx: &BuildContext,
        prev: Option<&Registry>,
    ) -> Result<()> {
        if spec.name.trim().is_empty() {
            return Err(Error::InvalidArgument("name: must not be empty".to_owned()));
        }
        let Some(block) = block_of(&spec.kind) else {
            let known: Vec<&str> = KNOWN_TYPES.iter().map(|(k, _)| *k).collect();
            return Err(Error::InvalidArgument(format!(
                "type: unknown type {:?} (known: {})",
                spec.kind,
                known.join(", ")
            )));
        };
        if self
            .components
            .iter()
            .any(|c| c.block == block && c.name == spec.name)
        {
            return Err(Error::InvalidArgument(format!(
                "name: {} component {:?} is defined twice",
                block.as_str(),
                spec.name
            )));
        }
        if let Some(p) = prev {
            if let Some(info) = p.find(block, &spec.name).filter(|c| c.spec == *spec) {
                if self.carry_over(p, &info.clone()) {
                    return Ok(());
                }
            }
        }
        let name = spec.name.clone();
        let health: Arc<dyn Health> = match spec.kind.as_str() {
            "state.memory" | "state.in-memory" => {
                let c = Arc::new(memory::MemoryState::new(spec, ctx)?);
                self.state.insert(name, c.clone());
                c
            }
            "state.redis" => {
                let c = Arc::new(redis::RedisState::new(spec, ctx)?);
                self.state.insert(name, c.clone());
                c
            }
            "pubsub.memory" | "pubsub.in-memory" => {
                let c = Arc::new(memory::MemoryPubSub::new(spec, ctx)?);
                self.pubsub.insert(name, c.clone());
                c
            }
            "pubsub.redis" => {
                let c = Arc::new(redis::RedisPubSub::new(spec, ctx)?);
                self.pubsub.insert(name, c.clone());
                c
            }
            "lock.memory" | "lock.in-memory" => {
                let c = Arc::new(memory::MemoryLock::new(spec, ctx)?);
                self.lock.insert(name, c.clone());
                c
            }
            "lock.redis" => {
                let c = Arc::new(redis::RedisLock::new(spec, ctx)?);
                self.lock.insert(name, c.clone());
                c
            }
            "sequencer.memory" | "sequencer.in-memory" => {
                let c = Arc::new(memory::MemorySequencer::new(spec, ctx)?);
                self.sequencer.insert(name, c.clone());
                c
            }
            "sequencer.redis" => {
                let c = Arc::new(redis::RedisSequencer::new(spec, ctx)?);
                self.sequencer.insert(name, c.clone());
                c
            }
            "configuration.memory" | "configuration.in-memory" => {
                let c = Arc::new(memory::MemoryConfigStore::new(spec, ctx)?);
                self.configuration.insert(name, c.clone());
                c
            }
            "configuration.redis" => {
                let c = Arc::new(redis::RedisConfigStore::new(spec, ctx)?);
                self.configuration.insert(name, c.clone());
                c
            }
            "secretstores.local.env" => {
                let c = Arc::new(memory::EnvSecretStore::new(spec, ctx)?);
                self.secrets.insert(name, c.clone());
                c
            }
            "secretstores.local.file" => {
                let c = Arc::new(memory::FileSecretStore::new(spec, ctx)?);
                self.secrets.insert(name, c.clone());
                c
            }
            "hello.helloworld" => {
                let c = Arc::new(memory::HelloWorld::new(spec, ctx)?);
                self.hello.insert(name, c.clone());
                c
            }
            other => {
                return Err(Error::Internal(format!(
                    "type {other:?} is known but has no factory"
                )))
            }
        };
        self.components.push(ComponentInfo {
            name: spec.name.clone(),
            kind: spec.kind.clone(),
            block,
            spec: spec.clone(),
            lifecycle: Lifecycle::new(),
            health,
        });
        Ok(())
    }

    pub fn state(&self, name: &str) -> Result<&Arc<dyn StateStore>> {
        lookup(&self.state, Block::State, name)
    }

    pub fn pubsub(&self, name: &str) -> Result<&Arc<dyn PubSub>> {
        lookup(&self.pubsub, Block::PubSub, name)
    }

    pub fn lock(&self, name: &str) -> Result<&Arc<dyn LockStore>> {
        lookup(&self.lock, Block::Lock, name)
    }

    pub fn sequencer(&self, name: &str) -> Result<&Arc<dyn Sequencer>> {
        lookup(&self.sequencer, Block::Sequencer, name)
    }

    pub fn configuration(&self, name: &str) -> Result<&Arc<dyn ConfigStore>> {
        lookup(&self.configuration, Block::Configuration, name)
    }

    pub fn secrets(&self, name: &str) -> Result<&Arc<dyn SecretStore>> {
        lookup(&self.secrets, Block::Secrets, name)
    }

    pub fn hello(&self, name: &str) -> Result<&Arc<dyn Hello>> {
        lookup(&self.hello, Block::Hello, name)
    }

    pub fn components(&self) -> &[ComponentInfo] {
        &self.components
    }

    /// Pings every component concurrently, each bounded by `timeout`.
    pub async fn health(&self, timeout: Duration) -> Vec<(ComponentInfo, Result<()>)> {
        let checks = self.components.iter().map(|c| async move {
            let res = match tokio::time::timeout(timeout, c.health.ping()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Unavailable(format!(
                    "{} {:?}: health check timed out after {timeout:?}",
                    c.kind, c.name
                ))),
            };
            (c.clone(), res)
        });
        futures::future::join_all(checks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(specs: &[ComponentSpec]) -> Vec<String> {
        Registry::build(specs, &BuildContext::default())
            .err()
            .unwrap_or_default()
    }

    #[test]
    fn unknown_type_is_reported_with_its_path() {
        let errs = errors(&[
            ComponentSpec::new("a", "state.memory"),
            ComponentSpec::new("b", "state.foo"),
        ]);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("components[1].type: unknown type \"state.foo\""),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_names_in_one_block_are_rejected() {
        let errs = errors(&[
            ComponentSpec::new("s", "state.memory"),
            ComponentSpec::new("s", "state.memory"),
        ]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("defined twice"), "{errs:?}");
    }

    #[test]
    fn unknown_name_lists_configured_ones() {
        let reg = Registry::build(
            &[ComponentSpec::new("statestore", "state.memory")],
            &BuildContext::default(),
        )
        .expect("valid");
        let err = reg.state("nope").err().expect("unknown").to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("statestore"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_update_keeps_unchanged_components_and_retires_the_rest() {
        use crate::state::SetRequest;
        let ctx = BuildContext::default();
        let first = Registry::build(
            &[
                ComponentSpec::new("keep", "state.memory"),
                ComponentSpec::new("change", "state.memory"),
                ComponentSpec::new("drop", "lock.memory"),
            ],
            &ctx,
        )
        .expect("valid");
        let store = first.state("keep").expect("configured").clone();
        store
            .set(SetRequest {
                key: "k".to_owned(),
                value: bytes::Bytes::from_static(b"v"),
                ..SetRequest::default()
            })
            .await
            .expect("set");
        let mut changed = first
            .find(Block::State, "change")
            .expect("configured")
            .lifecycle
            .watch();
        let second = Registry::update(
            Some(&first),
            &[
                ComponentSpec::new("keep", "state.memory"),
                ComponentSpec::new("change", "state.memory").with("maxKeys", "10"),
                ComponentSpec::new("new", "lock.memory"),
            ],
            &ctx,
        )
        .expect("valid");
        assert!(
            Arc::ptr_eq(second.state("keep").expect("kept"), &store),
            "the unchanged component is the same object"
        );
        assert!(!Arc::ptr_eq(
            second.state("change").expect("rebuilt"),
            first.state("change").expect("old")
        ));
        Registry::retire_superseded(&first, &second);
        assert_eq!(changed.retired().await, Retirement::Changed);
        let lc = |r: &Registry, b, n| r.find(b, n).map(|c| c.lifecycle.retired());
        assert_eq!(
            lc(&first, Block::Lock, "drop"),
            Some(Some(Retirement::Removed))
        );
        assert_eq!(lc(&first, Block::State, "keep"), Some(None));
        assert_eq!(lc(&second, Block::State, "keep"), Some(None));
        // A different app id rebuilds everything (key prefixes depend on it).
        let other = BuildContext {
            app_id: "other".to_owned(),
        };
        let third = Registry::update(
            Some(&second),
            &[ComponentSpec::new("keep", "state.memory")],
            &other,
        )
        .expect("valid");
        assert!(!Arc::ptr_eq(third.state("keep").expect("rebuilt"), &store));
    }
}
