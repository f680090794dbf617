//! Filter configs: which type an `Any` holds (through TypedStruct wrappers), and what Mecha
//! does with each known filter type.

use envoy_types::pb::google::protobuf::{Any, Struct};
use prost::Message;

/// `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct` (same shape): a config given as a
/// `Struct` with the type it stands for. Not in envoy-types; istiod wraps its own filters'
/// configs in it.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

pub(crate) const UDPA_TYPED_STRUCT: &str = "udpa.type.v1.TypedStruct";
pub(crate) const XDS_TYPED_STRUCT: &str = "xds.type.v3.TypedStruct";

pub(crate) const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub(crate) const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub(crate) const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
pub(crate) const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The key of `typed_extension_protocol_options` for [`HTTP_PROTOCOL_OPTIONS`].
pub(crate) const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Telemetry and negotiation filters that change nothing about where a request goes or what
/// it carries: accepted and listed as ignored.
const IGNORED_HTTP_TYPES: &[&str] = &[
    // Istio's ALPN override for upstream TLS (no upstream TLS here).
    "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
    // Istio's peer metadata exchange and stats (telemetry).
    "io.istio.http.peer_metadata.Config",
    "envoy.tcp.metadataexchange.config.MetadataExchange",
    "istio.envoy.config.filter.http.metadata_exchange.v3.MetadataExchange",
    "stats.PluginConfig",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    // Acts only on routes or virtual hosts with a CORS policy, and those are refused.
    "envoy.extensions.filters.http.cors.v3.Cors",
];

const IGNORED_NETWORK_TYPES: &[&str] = &[
    "envoy.tcp.metadataexchange.config.MetadataExchange",
    "io.istio.network.metadata_exchange.Config",
    "stats.PluginConfig",
];

/// Istio's filter names: with a Wasm or Istio-specific type they are its telemetry.
const ISTIO_TELEMETRY_NAMES: &[&str] = &["istio.metadata_exchange", "istio.stats", "istio.alpn"];
const WASM_TYPES: &[&str] = &[
    "envoy.extensions.filters.http.wasm.v3.Wasm",
    "envoy.extensions.filters.network.wasm.v3.Wasm",
];

/// Filters that enforce who may do what: serving without them serves what they forbid.
const SECURITY_TYPES: &[&str] = &[
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
    "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
    "envoy.extensions.filters.http.oauth2.v3.OAuth2",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
];

/// The message name of a type URL (`type.googleapis.com/a.b.C` → `a.b.C`).
pub(crate) fn type_name(type_url: &str) -> &str {
    type_url.rsplit('/').next().unwrap_or(type_url)
}

/// A filter's config as Mecha reads it.
pub(crate) enum Config<'a> {
    /// Protobuf bytes of `type_name`.
    Proto { type_name: &'a str, bytes: &'a [u8] },
    /// A TypedStruct: the type it stands for, its fields as a Struct.
    Struct { type_name: String, value: Struct },
}

impl Config<'_> {
    pub(crate) fn type_name(&self) -> &str {
        match self {
            Config::Proto { type_name, .. } => type_name,
            Config::Struct { type_name, .. } => type_name,
        }
    }

    /// Decodes a config of type `M`. A TypedStruct form is accepted only when empty (all
    /// defaults): reading a Struct as a message needs reflection this crate does not have.
    pub(crate) fn decode<M: Message + Default>(&self) -> Result<M, String> {
        match self {
            Config::Proto { type_name, bytes } => {
                M::decode(*bytes).map_err(|e| format!("cannot decode {type_name}: {e}"))
            }
            Config::Struct { type_name, value } if value.fields.is_empty() => {
                let _ = type_name;
                Ok(M::default())
            }
            Config::Struct { type_name, .. } => Err(format!(
                "a TypedStruct-wrapped {type_name} with fields is not supported yet (give it as \
                 its protobuf type)"
            )),
        }
    }
}

/// Unwraps TypedStruct wrappers.
pub(crate) fn config(any: &Any) -> Result<Config<'_>, String> {
    let outer = type_name(&any.type_url);
    if outer == UDPA_TYPED_STRUCT || outer == XDS_TYPED_STRUCT {
        let ts = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode {outer}: {e}"))?;
        return Ok(Config::Struct {
            type_name: type_name(&ts.type_url).to_owned(),
            value: ts.value.unwrap_or_default(),
        });
    }
    Ok(Config::Proto {
        type_name: outer,
        bytes: any.value.as_slice(),
    })
}

/// What a filter type is to Mecha.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Handled by the caller (router, HCM, tcp_proxy, fault).
    Known,
    /// Accepted, does nothing here.
    Ignored,
    /// Enforces access control: refused.
    Security,
    Unknown,
}

pub(crate) fn http_kind(name: &str, type_name: &str) -> Kind {
    classify(name, type_name, &[ROUTER, FAULT], IGNORED_HTTP_TYPES)
}

pub(crate) fn network_kind(name: &str, type_name: &str) -> Kind {
    classify(name, type_name, &[HCM, TCP_PROXY], IGNORED_NETWORK_TYPES)
}

fn classify(name: &str, type_name: &str, known: &[&str], ignored: &[&str]) -> Kind {
    if SECURITY_TYPES.contains(&type_name) {
        Kind::Security
    } else if known.contains(&type_name) {
        Kind::Known
    } else if ignored.contains(&type_name)
        || (ISTIO_TELEMETRY_NAMES.contains(&name) && WASM_TYPES.contains(&type_name))
    {
        Kind::Ignored
    } else {
        Kind::Unknown
    }
}

/// Listener filters that decide nothing here: TLS / HTTP inspection only feeds
/// `filter_chain_match` on transport and application protocol, which the model does not
/// choose by (TLS chains are refused, HTTP protocols only match HTTP chains); the original
/// destination is read by `use_original_dst`.
pub(crate) const IGNORED_LISTENER_FILTER_TYPES: &[&str] = &[
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
];

/// The per-filter config keys of ignored filters (`typed_per_filter_config`): they configure
/// nothing Mecha does.
pub(crate) fn ignorable_per_filter_key(key: &str) -> bool {
    ISTIO_TELEMETRY_NAMES.contains(&key) || key == "envoy.filters.http.grpc_stats"
}
