//! Wire message ↔ building-block type conversions. Pure functions, no I/O; every rule the
//! adapter applies to a field lives here so it is tested in one place.

use bytes::Bytes;
use mecha_capabilities::configuration::{ConfigItem, ConfigQuery};
use mecha_capabilities::lock::LockStatus;
use mecha_capabilities::pubsub::{Message, Outcome};
use mecha_capabilities::sequencer::Increment;
use mecha_capabilities::state::{
    BulkGetItem, Concurrency, Consistency, DeleteRequest, SetRequest, StateOptions, TransactionOp,
};
use mecha_proto::layotto as pb;
use pb::state_options::{StateConcurrency, StateConsistency};
use pb::topic_event_response::TopicEventResponseStatus;
use tonic::Status;

/// CloudEvents `specversion` of every event we deliver.
pub const CLOUD_EVENT_SPEC_VERSION: &str = "1.0";
/// CloudEvents `type` of every event we deliver (Dapr's; see the crate docs for Layotto's).
pub const CLOUD_EVENT_TYPE: &str = "com.dapr.event.sent";
/// `data_content_type` of a published event that names none (Dapr's and Layotto's default).
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain";

// === ETags and options ===

/// `Etag{value}` → `Some(value)`; an absent or empty ETag means "no ETag".
pub fn etag(e: Option<pb::Etag>) -> Option<String> {
    e.map(|e| e.value).filter(|v| !v.is_empty())
}

/// Unknown enum numbers (a newer client) read as "unspecified", as proto3 open enums do.
pub fn concurrency(raw: i32) -> Concurrency {
    match StateConcurrency::try_from(raw) {
        Ok(StateConcurrency::ConcurrencyFirstWrite) => Concurrency::FirstWrite,
        Ok(StateConcurrency::ConcurrencyLastWrite) => Concurrency::LastWrite,
        _ => Concurrency::Unspecified,
    }
}

pub fn consistency(raw: i32) -> Consistency {
    match StateConsistency::try_from(raw) {
        Ok(StateConsistency::ConsistencyEventual) => Consistency::Eventual,
        Ok(StateConsistency::ConsistencyStrong) => Consistency::Strong,
        _ => Consistency::Unspecified,
    }
}

pub fn state_options(o: Option<pb::StateOptions>) -> StateOptions {
    match o {
        Some(o) => StateOptions {
            concurrency: concurrency(o.concurrency),
            consistency: consistency(o.consistency),
        },
        None => StateOptions::default(),
    }
}

// === state ===

pub fn set_request(item: pb::StateItem) -> SetRequest {
    SetRequest {
        key: item.key,
        value: Bytes::from(item.value),
        etag: etag(item.etag),
        metadata: item.metadata,
        options: state_options(item.options),
    }
}

pub fn delete_request(item: pb::StateItem) -> DeleteRequest {
    DeleteRequest {
        key: item.key,
        etag: etag(item.etag),
        metadata: item.metadata,
        options: state_options(item.options),
    }
}

/// One transaction operation; `index` only serves the error message.
pub fn transaction_op(
    store: &str,
    index: usize,
    op: pb::TransactionalStateOperation,
) -> Result<TransactionOp, Status> {
    let Some(item) = op.request else {
        return Err(Status::invalid_argument(format!(
            "state store {store:?}: operations[{index}] ({:?}) has no request",
            op.operation_type
        )));
    };
    if op.operation_type.eq_ignore_ascii_case("upsert") {
        Ok(TransactionOp::Upsert(set_request(item)))
    } else if op.operation_type.eq_ignore_ascii_case("delete") {
        Ok(TransactionOp::Delete(delete_request(item)))
    } else {
        Err(Status::invalid_argument(format!(
            "state store {store:?}: operations[{index}] has unsupported operationType {:?} \
             (expected \"upsert\" or \"delete\")",
            op.operation_type
        )))
    }
}

pub fn bulk_state_item(item: BulkGetItem) -> pb::BulkStateItem {
    let mut out = pb::BulkStateItem {
        key: item.key,
        error: item.error.unwrap_or_default(),
        ..Default::default()
    };
    if let Some(v) = item.value {
        out.data = Vec::from(v.data);
        out.etag = v.etag.unwrap_or_default();
        out.metadata = v.metadata;
    }
    out
}

// === lock / sequencer ===

pub fn unlock_status(s: LockStatus) -> pb::unlock_response::Status {
    use pb::unlock_response::Status as S;
    match s {
        LockStatus::Success => S::Success,
        LockStatus::LockUnexist => S::LockUnexist,
        LockStatus::LockBelongToOthers => S::LockBelongToOthers,
    }
}

pub fn keep_alive_status(s: LockStatus) -> pb::lock_keep_alive_response::Status {
    use pb::lock_keep_alive_response::Status as S;
    match s {
        LockStatus::Success => S::Success,
        LockStatus::LockUnexist => S::LockUnexist,
        LockStatus::LockBelongToOthers => S::LockBelongToOthers,
    }
}

pub fn increment(options: Option<pb::SequencerOptions>) -> Increment {
    use pb::sequencer_options::AutoIncrement;
    match options.map(|o| AutoIncrement::try_from(o.increment)) {
        Some(Ok(AutoIncrement::Strong)) => Increment::Strong,
        _ => Increment::Weak,
    }
}

// === configuration ===

pub fn config_item(i: pb::ConfigurationItem) -> ConfigItem {
    ConfigItem {
        key: i.key,
        content: i.content,
        group: i.group,
        label: i.label,
        tags: i.tags,
        metadata: i.metadata,
    }
}

pub fn configuration_item(i: ConfigItem) -> pb::ConfigurationItem {
    pb::ConfigurationItem {
        key: i.key,
        content: i.content,
        group: i.group,
        label: i.label,
        tags: i.tags,
        metadata: i.metadata,
    }
}

/// The app id a configuration call addresses: the request's, else the sidecar's.
pub fn app_id_or(requested: String, sidecar: &str) -> String {
    if requested.is_empty() {
        sidecar.to_owned()
    } else {
        requested
    }
}

pub fn config_query(
    app_id: String,
    group: String,
    label: String,
    keys: Vec<String>,
    metadata: std::collections::HashMap<String, String>,
) -> ConfigQuery {
    ConfigQuery {
        app_id,
        group,
        label,
        keys,
        metadata,
    }
}

// === pub/sub ===

/// The envelope a subscriber receives for `msg` (CloudEvents attributes on the wire message).
/// Moves `data` and `metadata` out of `msg` (the `Delivery` keeps only what acking needs).
pub fn topic_event(source: &str, pubsub_name: &str, msg: &mut Message) -> pb::TopicEventRequest {
    pb::TopicEventRequest {
        id: msg.id.clone(),
        source: source.to_owned(),
        r#type: CLOUD_EVENT_TYPE.to_owned(),
        spec_version: CLOUD_EVENT_SPEC_VERSION.to_owned(),
        data_content_type: if msg.content_type.is_empty() {
            DEFAULT_CONTENT_TYPE.to_owned()
        } else {
            msg.content_type.clone()
        },
        data: Vec::from(std::mem::take(&mut msg.data)),
        topic: msg.topic.clone(),
        pubsub_name: pubsub_name.to_owned(),
        metadata: std::mem::take(&mut msg.metadata),
    }
}

/// The app's verdict. An absent status is proto3's default, SUCCESS; a number this build does
/// not know is RETRY (Layotto: "consider unknown status as error and retry").
pub fn outcome(status: Option<pb::TopicEventResponse>) -> Outcome {
    match status.map(|s| TopicEventResponseStatus::try_from(s.status)) {
        None | Some(Ok(TopicEventResponseStatus::Success)) => Outcome::Success,
        Some(Ok(TopicEventResponseStatus::Drop)) => Outcome::Drop,
        Some(Ok(TopicEventResponseStatus::Retry)) | Some(Err(_)) => Outcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mecha_capabilities::state::StateValue;

    use super::*;

    #[test]
    fn etag_empty_or_absent_is_none() {
        assert_eq!(etag(None), None);
        assert_eq!(
            etag(Some(pb::Etag {
                value: String::new()
            })),
            None
        );
        assert_eq!(etag(Some(pb::Etag { value: "3".into() })), Some("3".into()));
    }

    #[test]
    fn options_map_and_unknown_numbers_are_unspecified() {
        let o = state_options(Some(pb::StateOptions {
            concurrency: 1,
            consistency: 2,
        }));
        assert_eq!(o.concurrency, Concurrency::FirstWrite);
        assert_eq!(o.consistency, Consistency::Strong);
        let o = state_options(Some(pb::StateOptions {
            concurrency: 2,
            consistency: 1,
        }));
        assert_eq!(o.concurrency, Concurrency::LastWrite);
        assert_eq!(o.consistency, Consistency::Eventual);
        let o = state_options(Some(pb::StateOptions {
            concurrency: 99,
            consistency: -1,
        }));
        assert_eq!(o, StateOptions::default());
        assert_eq!(state_options(None), StateOptions::default());
    }

    #[test]
    fn state_item_becomes_set_and_delete_requests() {
        let item = pb::StateItem {
            key: "k".into(),
            value: b"v".to_vec(),
            etag: Some(pb::Etag { value: "7".into() }),
            metadata: HashMap::from([("ttlInSeconds".into(), "5".into())]),
            options: Some(pb::StateOptions {
                concurrency: 1,
                consistency: 0,
            }),
        };
        let set = set_request(item.clone());
        assert_eq!(set.key, "k");
        assert_eq!(&set.value[..], b"v");
        assert_eq!(set.etag.as_deref(), Some("7"));
        assert_eq!(
            set.metadata.get("ttlInSeconds").map(String::as_str),
            Some("5")
        );
        assert_eq!(set.options.concurrency, Concurrency::FirstWrite);
        let del = delete_request(item);
        assert_eq!((del.key.as_str(), del.etag.as_deref()), ("k", Some("7")));
    }

    #[test]
    fn transaction_operation_types() {
        let op = |t: &str| pb::TransactionalStateOperation {
            operation_type: t.into(),
            request: Some(pb::StateItem {
                key: "k".into(),
                ..Default::default()
            }),
        };
        assert!(matches!(
            transaction_op("s", 0, op("upsert")),
            Ok(TransactionOp::Upsert(_))
        ));
        assert!(matches!(
            transaction_op("s", 0, op("delete")),
            Ok(TransactionOp::Delete(_))
        ));
        let err = transaction_op("s", 3, op("merge")).expect_err("merge is not an operation");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("\"merge\"") && err.message().contains("operations[3]"));
        let missing = pb::TransactionalStateOperation {
            operation_type: "upsert".into(),
            request: None,
        };
        let err = transaction_op("s", 1, missing).expect_err("no request");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn bulk_items_carry_value_or_error() {
        let found = bulk_state_item(BulkGetItem {
            key: "a".into(),
            value: Some(StateValue {
                data: Bytes::from_static(b"1"),
                etag: Some("e".into()),
                metadata: HashMap::new(),
            }),
            error: None,
        });
        assert_eq!(
            (
                found.data.as_slice(),
                found.etag.as_str(),
                found.error.as_str()
            ),
            (&b"1"[..], "e", "")
        );
        let missing = bulk_state_item(BulkGetItem {
            key: "b".into(),
            value: None,
            error: None,
        });
        assert!(missing.data.is_empty() && missing.etag.is_empty() && missing.error.is_empty());
        let failed = bulk_state_item(BulkGetItem {
            key: "c".into(),
            value: None,
            error: Some("boom".into()),
        });
        assert_eq!(failed.error, "boom");
    }

    #[test]
    fn lock_statuses_and_increment() {
        use pb::unlock_response::Status as U;
        assert_eq!(unlock_status(LockStatus::Success), U::Success);
        assert_eq!(unlock_status(LockStatus::LockUnexist), U::LockUnexist);
        assert_eq!(
            unlock_status(LockStatus::LockBelongToOthers),
            U::LockBelongToOthers
        );
        use pb::lock_keep_alive_response::Status as K;
        assert_eq!(keep_alive_status(LockStatus::LockUnexist), K::LockUnexist);
        assert_eq!(increment(None), Increment::Weak);
        assert_eq!(
            increment(Some(pb::SequencerOptions { increment: 1 })),
            Increment::Strong
        );
        assert_eq!(
            increment(Some(pb::SequencerOptions { increment: 0 })),
            Increment::Weak
        );
        assert_eq!(
            increment(Some(pb::SequencerOptions { increment: 42 })),
            Increment::Weak
        );
    }

    #[test]
    fn topic_event_envelope_and_outcomes() {
        let mut msg = Message {
            id: "id1".into(),
            topic: "orders".into(),
            data: Bytes::from_static(b"hi"),
            content_type: String::new(),
            metadata: HashMap::from([("m".into(), "v".into())]),
        };
        let ev = topic_event("app1", "pubsub", &mut msg);
        assert_eq!(ev.id, "id1");
        assert_eq!(ev.source, "app1");
        assert_eq!(ev.r#type, CLOUD_EVENT_TYPE);
        assert_eq!(ev.spec_version, "1.0");
        assert_eq!(ev.data_content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(ev.data, b"hi");
        assert_eq!(
            (ev.topic.as_str(), ev.pubsub_name.as_str()),
            ("orders", "pubsub")
        );
        assert_eq!(ev.metadata.get("m").map(String::as_str), Some("v"));

        let st = |s: i32| Some(pb::TopicEventResponse { status: s });
        assert_eq!(outcome(None), Outcome::Success);
        assert_eq!(outcome(st(0)), Outcome::Success);
        assert_eq!(outcome(st(1)), Outcome::Retry);
        assert_eq!(outcome(st(2)), Outcome::Drop);
        assert_eq!(outcome(st(9)), Outcome::Retry);
    }

    #[test]
    fn configuration_items_round_trip_and_app_id_defaults() {
        let wire = pb::ConfigurationItem {
            key: "k".into(),
            content: "c".into(),
            group: "g".into(),
            label: "l".into(),
            tags: HashMap::from([("t".into(), "1".into())]),
            metadata: HashMap::new(),
        };
        assert_eq!(configuration_item(config_item(wire.clone())), wire);
        assert_eq!(app_id_or(String::new(), "side"), "side");
        assert_eq!(app_id_or("mine".into(), "side"), "mine");
    }
}
