//! Incremental: `DeltaAggregatedResources`.
//!
//! The first request of a wildcard type has no names (the protocol's implicit wildcard) and,
//! on a reconnect, `initial_resource_versions` with every resource held of the type; named
//! types subscribe their names with the versions held of those. Responses carry changed
//! resources (name, version, payload) and `removed_resources`; ACK = the nonce, NACK = the
//! nonce and `error_detail`. Subscription changes are spontaneous requests without a nonce.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node as CoreNode;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::state::{Kind, UpdateBuilder};
use super::{nack_detail, AdsClient, Client, StreamEnd};

struct Stream {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    /// Taken by the first request: only it carries the node.
    node: Option<CoreNode>,
    /// Named types: the names subscribed on this stream (absent = no request sent yet, and an
    /// empty subscribe list must not be sent first: it would be read as a wildcard).
    subscribed: BTreeMap<Kind, BTreeSet<String>>,
}

pub(super) async fn run_stream(client: &mut Client, mut grpc: AdsClient) -> StreamEnd {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = Stream {
        tx,
        node: Some(client.node.clone()),
        subscribed: BTreeMap::new(),
    };
    // Queued before the call: the server may wait for the first request before it answers
    // the call's headers.
    for kind in Kind::ALL {
        if kind.is_wildcard() {
            let request = DeltaDiscoveryRequest {
                initial_resource_versions: client
                    .held
                    .resource_versions(kind)
                    .into_iter()
                    .collect(),
                ..stream.request(kind)
            };
            stream.send(request);
        } else {
            stream.resubscribe(client, kind);
        }
    }
    let mut inbound = match grpc
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return StreamEnd::from_status(&status, false),
    };
    let (mut delivered, mut ended) = (false, None);
    loop {
        match super::next_responses(&mut inbound, delivered, &mut ended).await {
            Ok(responses) => {
                delivered = true;
                stream.handle(client, responses).await;
            }
            Err(end) => return end,
        }
    }
}

impl Stream {
    /// Checks the responses that arrived together and ACKs or NACKs each, in order.
    async fn handle(&mut self, client: &mut Client, responses: Vec<DeltaDiscoveryResponse>) {
        let mut checked = Vec::with_capacity(responses.len());
        let mut batch = Vec::with_capacity(responses.len());
        for response in responses {
            let Some(kind) = Kind::from_type_url(&response.type_url) else {
                // As Envoy: a type nobody subscribed to is ignored, not NACKed.
                tracing::warn!(type_url = %response.type_url, "ignoring an ADS response of a type not subscribed");
                continue;
            };
            client.received(kind, &response.nonce);
            let mut update = UpdateBuilder::new(false);
            for (position, r) in response.resources.iter().enumerate() {
                update.add(
                    kind,
                    position,
                    Some(&r.name),
                    Some(&r.version),
                    r.resource.as_ref(),
                );
            }
            for name in &response.removed_resources {
                update.remove(name);
            }
            for name in &response.removed_resource_names {
                update.remove(&name.name);
            }
            batch.push((kind, response.system_version_info, update.finish()));
            checked.push((kind, response.nonce));
        }
        let results = client.apply_all(batch).await;
        for ((kind, nonce), result) in checked.into_iter().zip(results) {
            let request = DeltaDiscoveryRequest {
                response_nonce: nonce,
                error_detail: result.err().map(nack_detail),
                ..self.request(kind)
            };
            self.send(request);
        }
        for named in Kind::NAMED {
            self.resubscribe(client, named);
        }
    }

    /// Sends the change of a named type's subscription, if any.
    fn resubscribe(&mut self, client: &Client, kind: Kind) {
        let names = client.held.subscription(kind);
        let (subscribe, unsubscribe, initial): (Vec<String>, Vec<String>, _) =
            match self.subscribed.get(&kind) {
                None if names.is_empty() => return,
                None => {
                    let held = client.held.resource_versions(kind);
                    let initial = held
                        .into_iter()
                        .filter(|(name, _)| names.contains(name))
                        .collect();
                    (names.iter().cloned().collect(), Vec::new(), initial)
                }
                Some(old) if old == names => return,
                Some(old) => (
                    names.difference(old).cloned().collect(),
                    old.difference(names).cloned().collect(),
                    Default::default(),
                ),
            };
        let request = DeltaDiscoveryRequest {
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: initial,
            ..self.request(kind)
        };
        self.subscribed.insert(kind, names.clone());
        self.send(request);
    }

    /// A request of `kind`; the first of the stream carries the node.
    fn request(&mut self, kind: Kind) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: self.node.take(),
            type_url: kind.type_url().to_owned(),
            ..DeltaDiscoveryRequest::default()
        }
    }

    fn send(&self, request: DeltaDiscoveryRequest) {
        // A closed channel means the stream is gone; its end is reported by the inbound side.
        let _ = self.tx.send(request);
    }
}
