//! API adapters: wire messages in, building-block calls out.
//!
//! The capability layer (`mecha-capabilities`) knows state, pub/sub, locks, sequencers,
//! configuration, secrets, hello and service invocation as protocol-neutral traits behind a [`Registry`] of named
//! components. This crate maps a public API onto them, so a second API (Dapr's, next) is a
//! second adapter over the same components:
//!
//! - [`layotto`]: Layotto's `spec.proto.runtime.v1.Runtime` gRPC service ([`layotto::server`]
//!   is what the capability filter mounts under [`layotto::SERVICE_PREFIX`]);
//!   `InvokeService` goes to the `ServiceInvoker` it is given (the mesh's);
//! - [`callback`]: push delivery of pub/sub events to an app implementing Layotto's
//!   `AppCallback` service, over the transport it is given (the mesh client's channel);
//! - [`status`]: the one mapping from building-block errors to gRPC statuses.
//!
//! # Mapping rules
//!
//! - **Components** are looked up by the request's store name (`store_name`, `pubsub_name`,
//!   `storeName`, `service_name`); an unknown name is INVALID_ARGUMENT whose message names it
//!   and lists the configured ones (the registry's error, unchanged).
//! - **Errors** go through [`status::to_status`] only: ETag mismatch → ABORTED, malformed ETag →
//!   INVALID_ARGUMENT, backend unreachable → UNAVAILABLE, … The message is the component's,
//!   which names the component, key and address.
//! - **Validation the adapter does itself** (INVALID_ARGUMENT): empty `resource_id` /
//!   `lock_owner`, `expire <= 0` (TryLock, LockKeepAlive), empty sequencer key, empty topic,
//!   an `operationType` other than `upsert`/`delete`, a SubscribeTopicEvents stream that does
//!   not start with `initial_request`. Everything else (empty state key, bad `ttlInSeconds`) is
//!   the component's call, so every API adapter gets the same answer.
//! - **ETags**: an absent or empty `Etag{value}` means "no ETag"; a response without one
//!   carries `""`. **Enums** with numbers this build does not know read as UNSPECIFIED
//!   (state options) or WEAK (sequencer) — proto3 enums are open.
//! - **Absence**: GetState of a missing key answers empty `data` and `etag` (Dapr and Layotto),
//!   GetBulkState reports it as an item with empty data, not an error.
//! - **App id**: configuration calls with an empty `app_id` address the sidecar's app id; it is
//!   also the `source` of every delivered event.
//! - **Events** carry CloudEvents attributes: `spec_version` `1.0`, `type`
//!   `com.dapr.event.sent`, `data_content_type` from the publisher (default `text/plain`, as
//!   Dapr's and Layotto's envelopes do). Layotto itself fills `type`/`source` with
//!   `com.runtime.event.sent`/`runtime`; we follow Dapr's type and name the app as source.
//! - **Not built yet**: InvokeService (needs the mesh router), the file APIs and InvokeBinding
//!   answer UNIMPLEMENTED naming what is missing.
//!
//! No method unwraps anything a client sends: malformed or missing fields are a status.
//!
//! [`Registry`]: mecha_capabilities::Registry

#![forbid(unsafe_code)]

pub mod callback;
pub mod layotto;
pub mod status;
