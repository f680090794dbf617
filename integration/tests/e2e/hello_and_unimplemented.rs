//! SayHello; InvokeService to an app the sidecar does not know (NOT_FOUND naming it); and the
//! methods this build answers UNIMPLEMENTED with a message: the file APIs and InvokeBinding
//! (no components yet).

use std::collections::HashMap;

use mecha_integration::pb::{
    CommonInvokeRequest, DelFileRequest, FileRequest, GetFileMetaRequest, GetFileRequest,
    InvokeBindingRequest, InvokeServiceRequest, ListFileRequest, PutFileRequest, SayHelloRequest,
};
use mecha_integration::{describe, within, Sidecar, TEST_COMPONENTS};
use tonic::Code;

#[tokio::test]
async fn say_hello() {
    let sc = Sidecar::builder()
        .components(TEST_COMPONENTS)
        .extra_components(
            "  - name: hi
    type: hello.helloworld
    metadata:
      hello: Hi
",
        )
        .start()
        .await;
    let mut rt = sc.client().await;

    let r = within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            service_name: "helloworld".into(),
            name: "mecha".into(),
            data: None,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SayHello: {}", describe(&s)))
    .into_inner();
    assert_eq!(r.hello, "greetings, mecha");

    // No service name: the default `helloworld`; no name: just the greeting; data is echoed.
    let any = prost_types::Any {
        type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
        value: vec![10, 2, b'h', b'i'],
    };
    let r = within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            service_name: String::new(),
            name: String::new(),
            data: Some(any.clone()),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SayHello: {}", describe(&s)))
    .into_inner();
    assert_eq!(r.hello, "greetings");
    assert_eq!(r.data, Some(any));

    // A second hello component with its own greeting.
    let r = within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            service_name: "hi".into(),
            name: "Layotto".into(),
            data: None,
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SayHello: {}", describe(&s)))
    .into_inner();
    assert_eq!(r.hello, "Hi, Layotto");

    // Unknown component: INVALID_ARGUMENT naming it and listing the configured ones.
    let err = within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            service_name: "nobody".into(),
            name: "x".into(),
            data: None,
        }),
    )
    .await
    .expect_err("unknown hello service");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", describe(&err));
    for name in ["nobody", "helloworld", "hi"] {
        assert!(err.message().contains(name), "{name}: {}", describe(&err));
    }
}

fn assert_unimplemented(what: &str, result: Result<(), tonic::Status>, mentions: &str) {
    let err = result.expect_err(what);
    assert_eq!(
        err.code(),
        Code::Unimplemented,
        "{what}: {}",
        describe(&err)
    );
    assert!(
        !err.message().is_empty() && err.message().contains(mentions),
        "{what}: the message says why: {}",
        describe(&err)
    );
}

fn file_request() -> FileRequest {
    FileRequest {
        store_name: "files".into(),
        name: "a.txt".into(),
        metadata: HashMap::new(),
    }
}

#[tokio::test]
async fn unimplemented_methods_say_why() {
    let sc = Sidecar::start().await;
    let mut rt = sc.client().await;

    let r = within(
        "InvokeService",
        rt.invoke_service(InvokeServiceRequest {
            id: "other-app".into(),
            message: Some(CommonInvokeRequest {
                method: "hello".into(),
                ..Default::default()
            }),
        }),
    )
    .await;
    let err = r.expect_err("no apps are configured");
    assert_eq!(err.code(), Code::NotFound, "{}", describe(&err));
    assert!(
        err.message().contains("\"other-app\"") && err.message().contains("known: none"),
        "names the app and the known ones: {}",
        describe(&err)
    );

    // Server streaming: the status arrives instead of the stream (trailers-only) or on it.
    let r = match within(
        "GetFile",
        rt.get_file(GetFileRequest {
            store_name: "files".into(),
            name: "a.txt".into(),
            metadata: HashMap::new(),
        }),
    )
    .await
    {
        Err(s) => Err(s),
        Ok(resp) => within("GetFile stream", resp.into_inner().message())
            .await
            .map(|_| ()),
    };
    assert_unimplemented("GetFile", r, "files");

    // Client streaming.
    let chunk = PutFileRequest {
        store_name: "files".into(),
        name: "a.txt".into(),
        data: b"content".to_vec(),
        metadata: HashMap::new(),
    };
    let r = within(
        "PutFile",
        rt.put_file(futures::stream::iter(vec![chunk.clone(), chunk])),
    )
    .await;
    assert_unimplemented("PutFile", r.map(|_| ()), "files");

    let r = within(
        "ListFile",
        rt.list_file(ListFileRequest {
            request: Some(file_request()),
            ..Default::default()
        }),
    )
    .await;
    assert_unimplemented("ListFile", r.map(|_| ()), "files");

    let r = within(
        "DelFile",
        rt.del_file(DelFileRequest {
            request: Some(file_request()),
        }),
    )
    .await;
    assert_unimplemented("DelFile", r.map(|_| ()), "files");

    let r = within(
        "GetFileMeta",
        rt.get_file_meta(GetFileMetaRequest {
            request: Some(file_request()),
        }),
    )
    .await;
    assert_unimplemented("GetFileMeta", r.map(|_| ()), "files");

    let r = within(
        "InvokeBinding",
        rt.invoke_binding(InvokeBindingRequest {
            name: "mq".into(),
            data: b"x".to_vec(),
            metadata: HashMap::new(),
            operation: "create".into(),
        }),
    )
    .await;
    assert_unimplemented("InvokeBinding", r.map(|_| ()), "mq");

    // The sidecar still serves afterwards.
    within(
        "SayHello",
        rt.say_hello(SayHelloRequest {
            name: "still here".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("SayHello: {}", describe(&s)));
}
