//! State of the world: `StreamAggregatedResources`.
//!
//! Every request of a type carries its whole subscription (`resource_names`; empty = the legacy
//! wildcard, as Envoy sends for LDS/CDS), the last accepted `version_info` of the type and the
//! last nonce received for it on this stream. LDS, CDS and component responses are the full set
//! (absence = removal); RDS and EDS responses carry only what changed.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node as CoreNode;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::state::{Kind, UpdateBuilder};
use super::{nack_detail, AdsClient, Client, StreamEnd};

/// What this stream has sent and received for one type.
#[derive(Default)]
struct TypeState {
    /// A request of this type was sent on this stream. Until then an empty name list must not
    /// be sent for a named type: the server would read it as a wildcard.
    sent: bool,
    /// The names last sent.
    names: BTreeSet<String>,
    /// The nonce of the last response of this type on this stream (nonces do not survive a
    /// stream).
    nonce: String,
}

struct Stream {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    /// Taken by the first request: only it carries the node.
    node: Option<CoreNode>,
    types: BTreeMap<Kind, TypeState>,
}

pub(super) async fn run_stream(client: &mut Client, mut grpc: AdsClient) -> StreamEnd {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = Stream {
        tx,
        node: Some(client.node.clone()),
        types: BTreeMap::new(),
    };
    // Queued before the call: the server may wait for the first request before it answers
    // the call's headers.
    for kind in Kind::ALL {
        if kind.is_wildcard() {
            stream.send(client, kind, None);
        } else {
            stream.resubscribe(client, kind);
        }
    }
    let mut inbound = match grpc
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
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
    async fn handle(&mut self, client: &mut Client, responses: Vec<DiscoveryResponse>) {
        tracing::trace!(responses = responses.len(), "xds: responses received");
        let mut checked = Vec::with_capacity(responses.len());
        let mut batch = Vec::with_capacity(responses.len());
        for response in responses {
            let Some(kind) = Kind::from_type_url(&response.type_url) else {
                // As Envoy: a type nobody subscribed to is ignored, not NACKed.
                tracing::warn!(type_url = %response.type_url, "ignoring an ADS response of a type not subscribed");
                continue;
            };
            client.received(kind, &response.nonce);
            let mut update = UpdateBuilder::new(kind.is_wildcard());
            for (position, any) in response.resources.iter().enumerate() {
                update.add(kind, position, None, None, Some(any));
            }
            batch.push((kind, response.version_info.clone(), update.finish()));
            checked.push((kind, response.version_info, response.nonce));
        }
        tracing::debug!(responses = batch.len(), types = ?checked.iter().map(|c| c.0.label()).collect::<Vec<_>>(),
            "xds: responses received and decoded");
        let results = client.apply_all(batch).await;
        for ((kind, version, nonce), result) in checked.into_iter().zip(results) {
            self.types.entry(kind).or_default().nonce = nonce;
            match result {
                Ok(()) => {
                    client.sotw_versions.insert(kind, version);
                    self.send(client, kind, None);
                }
                Err(message) => self.send(client, kind, Some(message)),
            }
        }
        // An accepted root may have changed what its children are subscribed by.
        for named in Kind::NAMED {
            self.resubscribe(client, named);
        }
    }

    /// Re-sends a named type's subscription if its names changed.
    fn resubscribe(&mut self, client: &Client, kind: Kind) {
        let names = client.held.subscription(kind);
        let state = self.types.entry(kind).or_default();
        if (!state.sent && names.is_empty()) || (state.sent && state.names == *names) {
            return;
        }
        self.send(client, kind, None);
    }

    /// Sends the request of `kind`: the current subscription, the last accepted version, the
    /// last nonce, and the NACK's error if any.
    fn send(&mut self, client: &Client, kind: Kind, error: Option<String>) {
        let names = client.held.subscription(kind);
        let state = self.types.entry(kind).or_default();
        let request = DiscoveryRequest {
            version_info: client.sotw_versions.get(&kind).cloned().unwrap_or_default(),
            node: self.node.take(),
            resource_names: names.iter().cloned().collect(),
            type_url: kind.type_url().to_owned(),
            response_nonce: state.nonce.clone(),
            error_detail: error.map(nack_detail),
            ..DiscoveryRequest::default()
        };
        state.sent = true;
        if state.names != *names {
            state.names = names.clone();
        }
        // A closed channel means the stream is gone; its end is reported by the inbound side.
        let _ = self.tx.send(request);
    }
}
