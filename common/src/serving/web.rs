//! gRPC-Web on every server (tonic-web): browsers and the TypeScript client's gRPC-Web
//! transport call the same services over HTTP/1.1 or HTTP/2. Cross-origin calls are refused
//! unless `grpc_web.allowed_origins` names the caller's origin (CORS, off by default).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower::util::Either;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{ConfigError, GrpcWebConfig};

/// Request headers a gRPC-Web caller sends.
const ALLOWED_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
    "x-request-id",
    "traceparent",
];

/// Response headers a gRPC-Web caller must be able to read.
const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// Checks each origin is `scheme://host[:port]` and nothing else.
pub fn validate(config: &GrpcWebConfig) -> Result<(), ConfigError> {
    for (i, origin) in config.allowed_origins.iter().enumerate() {
        let field = format!("grpc_web.allowed_origins[{i}]");
        let Some((scheme, rest)) = origin.split_once("://") else {
            return Err(ConfigError::field(
                &field,
                "must be an origin such as https://console.example.com",
            ));
        };
        if !matches!(scheme, "http" | "https")
            || rest.is_empty()
            || rest.contains(['/', '?', '#', '*', ' '])
            || HeaderValue::from_str(origin).is_err()
        {
            return Err(ConfigError::field(
                &field,
                "must be an origin such as https://console.example.com: http or https, a host \
                 and an optional port, no path and no wildcard",
            ));
        }
    }
    Ok(())
}

/// The CORS layer of `config`; `None` (no cross-origin calls) when it names no origin.
pub fn cors(config: &GrpcWebConfig) -> Either<CorsLayer, tower::layer::util::Identity> {
    if config.allowed_origins.is_empty() {
        return Either::Right(tower::layer::util::Identity::new());
    }
    let origins: Vec<HeaderValue> = config
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Either::Left(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::POST, Method::OPTIONS])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked_naming_the_entry() {
        let with = |o: &[&str]| GrpcWebConfig {
            allowed_origins: o.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(validate(&with(&[])).is_ok());
        assert!(
            validate(&with(&[
                "https://console.example.com",
                "http://127.0.0.1:8080"
            ]))
            .is_ok()
        );
        for bad in [
            "*",
            "https://*.example.com",
            "https://a.example.com/",
            "ftp://a",
            "a.example.com",
        ] {
            let e = validate(&with(&["https://ok.example.com", bad]))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("`grpc_web.allowed_origins[1]`"), "{bad}: {e}");
        }
    }
}
