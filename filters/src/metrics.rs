//! Metrics of gRPC APIs served in-process: requests, errors by gRPC code and latency per method.
//!
//! Label sets are fixed when the filter is built (method names are `&'static str` from the
//! service's method table), so recording a call formats no strings and allocates nothing.

use mecha_mesh::histogram::LatencyHistogram as Histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Code;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub api: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub api: &'static str,
    pub method: &'static str,
    pub code: &'static str,
}

/// Handles for one method, taken once at build time.
#[derive(Clone, Debug)]
struct MethodHandles {
    requests: Counter,
    latency: Histogram,
}

/// Per-method metrics of one gRPC API (e.g. Layotto's `Runtime`).
#[derive(Debug)]
pub struct GrpcMetrics {
    api: &'static str,
    methods: &'static [&'static str],
    handles: Vec<MethodHandles>,
    errors: Family<ErrorLabels, Counter>,
}

/// Latency buckets in seconds: 50 µs to ~10 s.
fn buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.5, 14)
}

impl GrpcMetrics {
    /// Registers the families under `registry` and pre-creates one series per method
    /// (the last handle, index `methods.len()`, is `unknown`).
    pub fn register(
        registry: &mut Registry,
        api: &'static str,
        methods: &'static [&'static str],
    ) -> Self {
        let requests = Family::<MethodLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(buckets())) as fn() -> Histogram,
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        let handles = methods
            .iter()
            .copied()
            .chain(std::iter::once("unknown"))
            .map(|method| {
                let l = MethodLabels { api, method };
                MethodHandles {
                    requests: requests.get_or_create(&l).clone(),
                    latency: latency.get_or_create(&l).clone(),
                }
            })
            .collect();
        registry.register(
            "mecha_api_requests",
            "Runtime API calls answered, by API and method",
            requests,
        );
        registry.register(
            "mecha_api_request_duration_seconds",
            "Runtime API call latency (headers in to status out), by API and method",
            latency,
        );
        registry.register(
            "mecha_api_errors",
            "Runtime API calls that ended with a non-OK gRPC status, by code",
            errors.clone(),
        );
        Self {
            api,
            methods,
            handles,
            errors,
        }
    }

    /// Index of `method` in the method table (`methods.len()` = unknown).
    pub fn method_index(&self, method: &str) -> usize {
        self.methods
            .iter()
            .position(|m| *m == method)
            .unwrap_or(self.methods.len())
    }

    /// The index [`method_index`](Self::method_index) gives a method not in the table.
    pub fn unknown_index(&self) -> usize {
        self.methods.len()
    }

    pub fn method_name(&self, method_index: usize) -> &'static str {
        self.methods.get(method_index).copied().unwrap_or("unknown")
    }

    pub fn record(&self, method_index: usize, code: Code, seconds: f64) {
        let idx = method_index.min(self.handles.len().saturating_sub(1));
        if let Some(h) = self.handles.get(idx) {
            h.requests.inc();
            h.latency.observe(seconds);
        }
        if code != Code::Ok {
            let method = self.methods.get(idx).copied().unwrap_or("unknown");
            self.errors
                .get_or_create(&ErrorLabels {
                    api: self.api,
                    method,
                    code: code_name(code),
                })
                .inc();
        }
    }
}

/// The canonical upper-case gRPC code names.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
