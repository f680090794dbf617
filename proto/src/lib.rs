//! Wire types for Mecha's public APIs, generated at build time from the `.proto` files under
//! `proto/proto/` (no hand-written logic lives here).
//!
//! - [`runtime::v1`]: Layotto's `spec.proto.runtime.v1` API — the `Runtime` service the sidecar
//!   serves, the `AppCallback` service the app implements, and the `Lifecycle` service
//!   (dynamic component configuration).
//! - [`config::v1`]: Mecha's own xDS resource types (`mecha.config.v1.Component`: a runtime
//!   component delivered on the ADS stream).

pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("spec.proto.runtime.v1");
    }
}

pub mod config {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("mecha.config.v1");
    }
}

pub use runtime::v1 as layotto;
