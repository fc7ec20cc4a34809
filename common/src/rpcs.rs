//! Every RPC a server of this process may serve, by path: the names its metrics labels and
//! span attributes use, read once from the compiled descriptors.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// One RPC as its metrics labels and span attributes name it.
#[derive(Debug)]
pub struct Rpc {
    /// `package.Service`, the `grpc_service` label and `rpc.service` attribute.
    pub service: &'static str,
    /// `Method`, the `grpc_method` label and `rpc.method` attribute.
    pub method: &'static str,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream` (`grpc_type`).
    pub kind: &'static str,
    /// `package.Service/Method`, the span name.
    pub name: &'static str,
}

/// Every path that is not an RPC this process knows: one set of labels, so that arbitrary
/// paths cannot grow the number of series.
pub static UNKNOWN: Rpc = Rpc {
    service: "unknown",
    method: "unknown",
    kind: "unknown",
    name: "unknown",
};

/// The descriptors of every service a server may mount: Ebb's, health and reflection.
const DESCRIPTOR_SETS: [&[u8]; 4] = [
    ebb_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

static RPCS: LazyLock<HashMap<String, Rpc>> = LazyLock::new(|| {
    let mut pool = DescriptorPool::new();
    for set in DESCRIPTOR_SETS {
        pool.decode_file_descriptor_set(set)
            .unwrap_or_else(|e| panic!("a compiled descriptor set does not decode: {e}"));
    }
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut rpcs = HashMap::new();
    for service in pool.services() {
        let service_name = leak(service.full_name().to_owned());
        for method in service.methods() {
            let kind = match (method.is_client_streaming(), method.is_server_streaming()) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            let name = leak(format!("{service_name}/{}", method.name()));
            rpcs.insert(
                format!("/{name}"),
                Rpc {
                    service: service_name,
                    method: leak(method.name().to_owned()),
                    kind,
                    name,
                },
            );
        }
    }
    rpcs
});

/// The RPC at `path` (`/package.Service/Method`), or [`UNKNOWN`].
pub fn rpc(path: &str) -> &'static Rpc {
    RPCS.get(path).unwrap_or(&UNKNOWN)
}
