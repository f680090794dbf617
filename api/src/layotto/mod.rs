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

use mecha_capabilities::invoke::{InvokeError, InvokeRequest, InvokeResponse, ServiceInvoker};
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
    invoker: Option<Arc<dyn ServiceInvoker>>,
) -> RuntimeServer<LayottoRuntime> {
    RuntimeServer::new(LayottoRuntime::new(registry, app_id).with_invoker(invoker))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
}

/// The Layotto API adapter: the registry of one config Snapshot plus the sidecar's app id
/// (default configuration app id; `source` of delivered events).
#[derive(Clone)]
pub struct LayottoRuntime {
    registry: Arc<Registry>,
    app_id: Arc<str>,
    /// Service invocation (the mesh); `None`: InvokeService is UNIMPLEMENTED.
    invoker: Option<Arc<dyn ServiceInvoker>>,
}

impl std::fmt::Debug for LayottoRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayottoRuntime")
            .field("registry", &self.registry)
            .field("app_id", &self.app_id)
            .field("invoker", &self.invoker.is_some())
            .finish()
    }
}

// === impl LayottoRuntime ===

impl LayottoRuntime {
    pub fn new(registry: Arc<Registry>, app_id: &str) -> Self {
        Self {
            registry,
            app_id: Arc::from(app_id),
            invoker: None,
        }
    }

    pub fn with_invoker(mut self, invoker: Option<Arc<dyn ServiceInvoker>>) -> Self {
        self.invoker = invoker;
        self
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }
}

/// The gRPC status of an invocation that got no answer from the callee.
fn invoke_error_status(e: &InvokeError) -> Status {
    let msg = e.to_string();
    match e {
        InvokeError::UnknownApp { .. } => Status::not_found(msg),
        InvokeError::InvalidArgument(_) => Status::invalid_argument(msg),
        InvokeError::Unavailable { .. } => Status::unavailable(msg),
        InvokeError::DeadlineExceeded { .. } => Status::deadline_exceeded(msg),
        InvokeError::ResourceExhausted { .. } => Status::resource_exhausted(msg),
    }
}

/// Most bytes of a failed callee's body quoted in the error message.
const QUOTED_BODY: usize = 256;

/// The error status for a callee's non-2xx answer: the code by [`grpc_code_for_http`], a
/// message naming the app, the method and the HTTP status (with the start of the body), and
/// the status in the `mecha-http-status` metadata.
pub fn invoke_status(app: &str, method: &str, resp: &InvokeResponse) -> Status {
    let body = String::from_utf8_lossy(&resp.data[..resp.data.len().min(QUOTED_BODY)]);
    let body = body.trim();
    let mut msg = format!(
        "app {app:?} method {method:?} answered HTTP {}",
        resp.status
    );
    if !body.is_empty() {
        msg.push_str(": ");
        msg.push_str(body);
    }
    let mut status = Status::new(grpc_code_for_http(resp.status), msg);
    status
        .metadata_mut()
        .insert("mecha-http-status", resp.status.into());
    status
}

/// The gRPC status for a callee's non-2xx HTTP answer (Dapr's mapping, after
/// grpc-gateway's): 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
/// 404 NOT_FOUND, 409 ABORTED, 412 FAILED_PRECONDITION, 416 OUT_OF_RANGE,
/// 429 RESOURCE_EXHAUSTED, 499 CANCELLED, 501 UNIMPLEMENTED, 503 UNAVAILABLE,
/// 504 DEADLINE_EXCEEDED, any other 5xx INTERNAL, any other status UNKNOWN.
pub fn grpc_code_for_http(status: u16) -> tonic::Code {
    use tonic::Code;
    match status {
        200..=299 => Code::Ok,
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        412 => Code::FailedPrecondition,
        416 => Code::OutOfRange,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
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

    /// Calls `id`'s `message.method` through the mesh: `http_extension` gives the verb
    /// (POST when NONE) and query, `data.value` the body. The callee's body comes back in
    /// `data.value` (`type_url` empty) with its content type; a non-2xx answer is an error
    /// status ([`invoke_status`]).
    async fn invoke_service(
        &self,
        request: Request<pb::InvokeServiceRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        let Some(invoker) = &self.invoker else {
            return Err(Status::unimplemented(
                "InvokeService: this sidecar has no mesh to invoke through",
            ));
        };
        let (metadata, _, req) = request.into_parts();
        let Some(message) = req.message else {
            return Err(Status::invalid_argument(format!(
                "message is missing (invoking app {:?})",
                req.id
            )));
        };
        let (verb, query) = match &message.http_extension {
            Some(ext) => {
                let verb = pb::http_extension::Verb::try_from(ext.verb).map_err(|_| {
                    Status::invalid_argument(format!(
                        "http_extension.verb {} is not a known verb (invoking app {:?})",
                        ext.verb, req.id
                    ))
                })?;
                let verb = match verb {
                    pb::http_extension::Verb::None => "POST",
                    v => v.as_str_name(),
                };
                (verb.to_owned(), ext.querystring.clone())
            }
            None => ("POST".to_owned(), String::new()),
        };
        let deadline = metadata
            .get("grpc-timeout")
            .and_then(|v| mecha_capabilities::invoke::parse_grpc_timeout(v.as_bytes()));
        let metadata = metadata
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let app = req.id;
        let method = message.method;
        let resp = invoker
            .invoke(InvokeRequest {
                app_id: app.clone(),
                method: method.clone(),
                verb,
                query,
                content_type: message.content_type,
                data: message.data.map(|d| d.value.into()).unwrap_or_default(),
                metadata,
                deadline,
            })
            .await
            .map_err(|e| invoke_error_status(&e))?;
        if !(200..300).contains(&resp.status) {
            return Err(invoke_status(&app, &method, &resp));
        }
        Ok(Response::new(pb::InvokeResponse {
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: resp.data.to_vec(),
            }),
            content_type: resp.content_type,
        }))
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
