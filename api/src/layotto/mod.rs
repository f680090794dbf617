//! Layotto's `spec.proto.runtime.v1.Runtime` service over the building blocks.
//!
//! [`LayottoRuntime`] implements the tonic-generated [`Runtime`] trait: each method looks its
//! component up in the [`Registry`] by the request's store name, converts the wire message with
//! [`convert`], calls the building block and converts the answer back. [`server`] wraps it in the
//! generated [`RuntimeServer`] with message limits and gzip, ready for the capability filter.

pub mod convert;
mod streams;

use std::collections::HashMap;
use std::sync::Arc;

use mecha_capabilities::lock::LockRequest;
use mecha_capabilities::pubsub::PublishRequest;
use mecha_capabilities::state::TransactionOp;
use mecha_capabilities::Registry;
use mecha_proto::layotto as pb;
use mecha_proto::layotto::runtime_server::{Runtime, RuntimeServer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status, Streaming};

use crate::status::StatusExt;

/// Path prefix of every method of the service (`/spec.proto.runtime.v1.Runtime/GetState`).
pub const SERVICE_PREFIX: &str = "/spec.proto.runtime.v1.Runtime/";

/// Every method of the service, as named on the wire, in the `.proto`'s order.
pub const METHODS: &[&str] = &[
    "SayHello",
    "InvokeService",
    "GetConfiguration",
    "SaveConfiguration",
    "DeleteConfiguration",
    "SubscribeConfiguration",
    "TryLock",
    "Unlock",
    "LockKeepAlive",
    "GetNextId",
    "GetState",
    "GetBulkState",
    "SaveState",
    "DeleteState",
    "DeleteBulkState",
    "ExecuteStateTransaction",
    "PublishEvent",
    "SubscribeTopicEvents",
    "GetFile",
    "PutFile",
    "ListFile",
    "DelFile",
    "GetFileMeta",
    "InvokeBinding",
    "GetSecret",
    "GetBulkSecret",
];

/// Methods whose request is a client stream (the bridge must not wait for a single message).
pub const STREAMING_REQUEST_METHODS: &[&str] =
    &["SubscribeTopicEvents", "SubscribeConfiguration", "PutFile"];

/// The hello component `SayHello` addresses when the request names none.
pub const DEFAULT_HELLO: &str = "helloworld";

/// The generated service over `registry`, limited to `max_message` bytes per message each way
/// (larger → RESOURCE_EXHAUSTED), accepting gzip and answering gzip to clients that accept it.
pub fn server(
    registry: Arc<Registry>,
    app_id: &str,
    max_message: usize,
) -> RuntimeServer<LayottoRuntime> {
    RuntimeServer::new(LayottoRuntime::new(registry, app_id))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
}

/// The Layotto API adapter: the registry of one config Snapshot plus the sidecar's app id
/// (default configuration app id; `source` of delivered events).
#[derive(Debug, Clone)]
pub struct LayottoRuntime {
    registry: Arc<Registry>,
    app_id: Arc<str>,
}

// === impl LayottoRuntime ===

impl LayottoRuntime {
    pub fn new(registry: Arc<Registry>, app_id: &str) -> Self {
        Self {
            registry,
            app_id: Arc::from(app_id),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }
}

fn not_empty(value: &str, what: &str, store: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{what} is empty (store {store:?})"
        )));
    }
    Ok(())
}

fn lock_request(
    store: &str,
    resource_id: String,
    lock_owner: String,
    expire: i32,
) -> Result<LockRequest, Status> {
    not_empty(&resource_id, "resource_id", store)?;
    not_empty(&lock_owner, "lock_owner", store)?;
    if expire <= 0 {
        return Err(Status::invalid_argument(format!(
            "expire must be a positive number of seconds, got {expire} (lock store {store:?}, \
             resource {resource_id:?})"
        )));
    }
    Ok(LockRequest {
        resource_id,
        owner: lock_owner,
        expire_secs: expire,
    })
}

fn no_file_store(store: &str) -> Status {
    Status::unimplemented(format!(
        "file store {store:?} is not configured (no file components in this build)"
    ))
}

#[tonic::async_trait]
impl Runtime for LayottoRuntime {
    // --- hello ---

    async fn say_hello(
        &self,
        request: Request<pb::SayHelloRequest>,
    ) -> Result<Response<pb::SayHelloResponse>, Status> {
        let req = request.into_inner();
        let name = if req.service_name.is_empty() {
            DEFAULT_HELLO
        } else {
            &req.service_name
        };
        let hello = self
            .registry
            .hello(name)
            .status()?
            .say_hello(&req.name)
            .await
            .status()?;
        // Layotto echoes `data` back.
        Ok(Response::new(pb::SayHelloResponse {
            hello,
            data: req.data,
        }))
    }

    /// Service invocation is routed through the mesh router, which this build does not have
    /// yet; the method answers UNIMPLEMENTED until it does.
    async fn invoke_service(
        &self,
        _request: Request<pb::InvokeServiceRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        Err(Status::unimplemented(
            "InvokeService needs the mesh router: not available yet",
        ))
    }

    // --- configuration ---

    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Result<Response<pb::GetConfigurationResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.configuration(&req.store_name).status()?;
        let query = convert::config_query(
            convert::app_id_or(req.app_id, &self.app_id),
            req.group,
            req.label,
            req.keys,
            req.metadata,
        );
        let items = store.get(&query).await.status()?;
        Ok(Response::new(pb::GetConfigurationResponse {
            items: items.into_iter().map(convert::configuration_item).collect(),
        }))
    }

    async fn save_configuration(
        &self,
        request: Request<pb::SaveConfigurationRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let store = self.registry.configuration(&req.store_name).status()?;
        let app_id = convert::app_id_or(req.app_id, &self.app_id);
        let items = req.items.into_iter().map(convert::config_item).collect();
        store.save(&app_id, items, &req.metadata).await.status()?;
        Ok(Response::new(()))
    }

    async fn delete_configuration(
        &self,
        request: Request<pb::DeleteConfigurationRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let store = self.registry.configuration(&req.store_name).status()?;
        let query = convert::config_query(
            convert::app_id_or(req.app_id, &self.app_id),
            req.group,
            req.label,
            req.keys,
            req.metadata,
        );
        store.delete(&query).await.status()?;
        Ok(Response::new(()))
    }

    type SubscribeConfigurationStream =
        ReceiverStream<Result<pb::SubscribeConfigurationResponse, Status>>;

    async fn subscribe_configuration(
        &self,
        request: Request<Streaming<pb::SubscribeConfigurationRequest>>,
    ) -> Result<Response<Self::SubscribeConfigurationStream>, Status> {
        let stream = streams::subscribe_configuration(
            self.registry.clone(),
            self.app_id.clone(),
            request.into_inner(),
        );
        Ok(Response::new(stream))
    }

    // --- lock ---

    async fn try_lock(
        &self,
        request: Request<pb::TryLockRequest>,
    ) -> Result<Response<pb::TryLockResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.lock(&req.store_name).status()?;
        let lock = lock_request(&req.store_name, req.resource_id, req.lock_owner, req.expire)?;
        let success = store.try_lock(lock).await.status()?;
        Ok(Response::new(pb::TryLockResponse { success }))
    }

    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.lock(&req.store_name).status()?;
        not_empty(&req.resource_id, "resource_id", &req.store_name)?;
        not_empty(&req.lock_owner, "lock_owner", &req.store_name)?;
        let status = store
            .unlock(&req.resource_id, &req.lock_owner)
            .await
            .status()?;
        Ok(Response::new(pb::UnlockResponse {
            status: convert::unlock_status(status) as i32,
        }))
    }

    async fn lock_keep_alive(
        &self,
        request: Request<pb::LockKeepAliveRequest>,
    ) -> Result<Response<pb::LockKeepAliveResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.lock(&req.store_name).status()?;
        let lock = lock_request(&req.store_name, req.resource_id, req.lock_owner, req.expire)?;
        let status = store.keep_alive(lock).await.status()?;
        Ok(Response::new(pb::LockKeepAliveResponse {
            status: convert::keep_alive_status(status) as i32,
        }))
    }

    // --- sequencer ---

    async fn get_next_id(
        &self,
        request: Request<pb::GetNextIdRequest>,
    ) -> Result<Response<pb::GetNextIdResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.sequencer(&req.store_name).status()?;
        not_empty(&req.key, "key", &req.store_name)?;
        let next_id = store
            .next_id(&req.key, convert::increment(req.options), &req.metadata)
            .await
            .status()?;
        Ok(Response::new(pb::GetNextIdResponse { next_id }))
    }

    // --- state ---

    /// A missing key answers empty `data` and `etag` (Dapr and Layotto), not NOT_FOUND.
    /// `consistency` is accepted; the state trait has no read-consistency knob (memory is
    /// always strong, Redis reads the primary).
    async fn get_state(
        &self,
        request: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.state(&req.store_name).status()?;
        let value = store.get(&req.key, &req.metadata).await.status()?;
        let resp = match value {
            Some(v) => pb::GetStateResponse {
                data: Vec::from(v.data),
                etag: v.etag.unwrap_or_default(),
                metadata: v.metadata,
            },
            None => pb::GetStateResponse::default(),
        };
        Ok(Response::new(resp))
    }

    /// Delegates to the store's `bulk_get` (Redis answers with one MGET/pipeline, memory reads
    /// in-process), so `parallelism` has nothing to bound and is ignored. A key that fails
    /// is reported in its item's `error`; the call itself fails only if the store does.
    async fn get_bulk_state(
        &self,
        request: Request<pb::GetBulkStateRequest>,
    ) -> Result<Response<pb::GetBulkStateResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.state(&req.store_name).status()?;
        if req.keys.is_empty() {
            return Ok(Response::new(pb::GetBulkStateResponse::default()));
        }
        let items = store.bulk_get(&req.keys, &req.metadata).await.status()?;
        Ok(Response::new(pb::GetBulkStateResponse {
            items: items.into_iter().map(convert::bulk_state_item).collect(),
        }))
    }

    async fn save_state(
        &self,
        request: Request<pb::SaveStateRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let store = self.registry.state(&req.store_name).status()?;
        let mut items: Vec<_> = req.states.into_iter().map(convert::set_request).collect();
        match items.len() {
            0 => {}
            1 => {
                if let Some(item) = items.pop() {
                    store.set(item).await.status()?;
                }
            }
            _ => store.bulk_set(items).await.status()?,
        }
        Ok(Response::new(()))
    }

    async fn delete_state(
        &self,
        request: Request<pb::DeleteStateRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let store = self.registry.state(&req.store_name).status()?;
        let del = mecha_capabilities::state::DeleteRequest {
            key: req.key,
            etag: convert::etag(req.etag),
            metadata: req.metadata,
            options: convert::state_options(req.options),
        };
        store.delete(del).await.status()?;
        Ok(Response::new(()))
    }

    async fn delete_bulk_state(
        &self,
        request: Request<pb::DeleteBulkStateRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let store = self.registry.state(&req.store_name).status()?;
        if req.states.is_empty() {
            return Ok(Response::new(()));
        }
        let items = req
            .states
            .into_iter()
            .map(convert::delete_request)
            .collect();
        store.bulk_delete(items).await.status()?;
        Ok(Response::new(()))
    }

    async fn execute_state_transaction(
        &self,
        request: Request<pb::ExecuteStateTransactionRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let store = self.registry.state(&req.store_name).status()?;
        if !store.features().transactional {
            return Err(Status::unimplemented(format!(
                "state store {:?} does not support transactions",
                req.store_name
            )));
        }
        let ops = req
            .operations
            .into_iter()
            .enumerate()
            .map(|(i, op)| convert::transaction_op(&req.store_name, i, op))
            .collect::<Result<Vec<TransactionOp>, Status>>()?;
        store.transact(ops, &req.metadata).await.status()?;
        Ok(Response::new(()))
    }

    // --- pub/sub ---

    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let pubsub = self.registry.pubsub(&req.pubsub_name).status()?;
        if req.topic.is_empty() {
            return Err(Status::invalid_argument(format!(
                "topic is empty (pubsub {:?})",
                req.pubsub_name
            )));
        }
        let content_type = if req.data_content_type.is_empty() {
            convert::DEFAULT_CONTENT_TYPE.to_owned()
        } else {
            req.data_content_type
        };
        pubsub
            .publish(PublishRequest {
                topic: req.topic,
                data: req.data.into(),
                content_type,
                metadata: req.metadata,
            })
            .await
            .status()?;
        Ok(Response::new(()))
    }

    type SubscribeTopicEventsStream =
        ReceiverStream<Result<pb::SubscribeTopicEventsResponse, Status>>;

    async fn subscribe_topic_events(
        &self,
        request: Request<Streaming<pb::SubscribeTopicEventsRequest>>,
    ) -> Result<Response<Self::SubscribeTopicEventsStream>, Status> {
        let stream = streams::subscribe_topic_events(
            self.registry.clone(),
            self.app_id.clone(),
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    // --- files (no building block yet) ---

    type GetFileStream = futures::stream::Empty<Result<pb::GetFileResponse, Status>>;

    async fn get_file(
        &self,
        request: Request<pb::GetFileRequest>,
    ) -> Result<Response<Self::GetFileStream>, Status> {
        Err(no_file_store(&request.get_ref().store_name))
    }

    async fn put_file(
        &self,
        request: Request<Streaming<pb::PutFileRequest>>,
    ) -> Result<Response<()>, Status> {
        // The store is named in the first message; read it so the error can name it.
        let first = request.into_inner().message().await?;
        Err(no_file_store(
            first.as_ref().map_or("", |m| m.store_name.as_str()),
        ))
    }

    async fn list_file(
        &self,
        request: Request<pb::ListFileRequest>,
    ) -> Result<Response<pb::ListFileResp>, Status> {
        Err(no_file_store(
            request
                .get_ref()
                .request
                .as_ref()
                .map_or("", |r| r.store_name.as_str()),
        ))
    }

    async fn del_file(&self, request: Request<pb::DelFileRequest>) -> Result<Response<()>, Status> {
        Err(no_file_store(
            request
                .get_ref()
                .request
                .as_ref()
                .map_or("", |r| r.store_name.as_str()),
        ))
    }

    async fn get_file_meta(
        &self,
        request: Request<pb::GetFileMetaRequest>,
    ) -> Result<Response<pb::GetFileMetaResponse>, Status> {
        Err(no_file_store(
            request
                .get_ref()
                .request
                .as_ref()
                .map_or("", |r| r.store_name.as_str()),
        ))
    }

    // --- bindings (no building block yet) ---

    async fn invoke_binding(
        &self,
        request: Request<pb::InvokeBindingRequest>,
    ) -> Result<Response<pb::InvokeBindingResponse>, Status> {
        Err(Status::unimplemented(format!(
            "binding {:?} is not configured (no binding components in this build)",
            request.get_ref().name
        )))
    }

    // --- secrets ---

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.secrets(&req.store_name).status()?;
        let data = store.get(&req.key, &req.metadata).await.status()?;
        Ok(Response::new(pb::GetSecretResponse { data }))
    }

    async fn get_bulk_secret(
        &self,
        request: Request<pb::GetBulkSecretRequest>,
    ) -> Result<Response<pb::GetBulkSecretResponse>, Status> {
        let req = request.into_inner();
        let store = self.registry.secrets(&req.store_name).status()?;
        let all = store.bulk_get(&req.metadata).await.status()?;
        let data: HashMap<String, pb::SecretResponse> = all
            .into_iter()
            .map(|(k, secrets)| (k, pb::SecretResponse { secrets }))
            .collect();
        Ok(Response::new(pb::GetBulkSecretResponse { data }))
    }
}

#[cfg(test)]
pub(crate) mod tests;
