//! Clients of one Ebb service to another: lazily connected channels that carry trace context
//! and the caller's bearer token ([`Bearer`]), over TLS for `https://` URLs. Every call gets a
//! client span and is counted in the `grpc_client_*` series ([`crate::observe`]).
//!
//! A service installs its [`ClientSettings`] once at start ([`install`]); command-line tools
//! that install none present `EBB_TOKEN` and trust the CA bundle of `EBB_TLS_CA_PATH`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::ServerConfig;
use crate::observe::{ClientCalls, ClientLayer};
use crate::peers::Watched;

/// The bearer token on every call.
#[derive(Clone, Debug)]
pub struct Outgoing {
    bearer: Bearer,
}

impl tonic::service::Interceptor for Outgoing {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.bearer.apply(request.metadata_mut());
        Ok(request)
    }
}

/// A channel with the bearer token, a client span whose trace context travels with the call,
/// and the client metrics on every call. Answers that refuse this process's token are
/// watched ([`crate::peers`]).
pub type TracedChannel = InterceptedService<ClientCalls<Watched>, Outgoing>;

/// What a process's clients present and trust.
#[derive(Clone, Debug, Default)]
pub struct ClientSettings {
    /// Bearer token to present; empty presents none.
    pub token: String,
    /// PEM CA bundle trusted for `https://` URLs.
    pub ca_path: String,
    /// PEM certificate and key presented to servers that require client certificates.
    pub identity: Option<(String, String)>,
}

impl ClientSettings {
    /// What a service presents: its service token (or the admin token) and its client TLS.
    pub fn for_service(server: &ServerConfig) -> Self {
        let tls = &server.tls;
        Self {
            token: server.outgoing_token().to_owned(),
            ca_path: tls.ca_path.clone(),
            identity: (!tls.client_cert_path.is_empty())
                .then(|| (tls.client_cert_path.clone(), tls.client_key_path.clone())),
        }
    }

    /// What command-line tools present: `EBB_TOKEN`, trusting `EBB_TLS_CA_PATH`.
    pub fn from_env() -> Self {
        Self {
            token: std::env::var("EBB_TOKEN").unwrap_or_default(),
            ca_path: std::env::var("EBB_TLS_CA_PATH").unwrap_or_default(),
            identity: None,
        }
    }
}

static INSTALLED: RwLock<Option<Arc<ClientSettings>>> = RwLock::new(None);

/// Sets what every channel made afterwards in this process presents and trusts.
pub fn install(settings: ClientSettings) {
    if let Ok(mut slot) = INSTALLED.write() {
        *slot = Some(Arc::new(settings));
    }
}

fn installed() -> Arc<ClientSettings> {
    INSTALLED
        .read()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_else(|| Arc::new(ClientSettings::from_env()))
}

/// A lazily connected channel to `url` (e.g. `http://127.0.0.1:50051`) with the process's
/// installed settings.
pub fn channel(url: &str, timeout: Duration) -> Result<TracedChannel, String> {
    channel_with(url, timeout, &installed())
}

/// A lazily connected channel to `url` presenting and trusting `settings`.
pub fn channel_with(
    url: &str,
    timeout: Duration,
    settings: &ClientSettings,
) -> Result<TracedChannel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("`{url}` is not a valid URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(client_tls(settings)?)
            .map_err(|e| format!("TLS for `{url}`: {e}"))?;
    }
    Ok(InterceptedService::new(
        tower::Layer::layer(&ClientLayer, Watched::new(endpoint.connect_lazy(), url)),
        Outgoing {
            bearer: Bearer::new(&settings.token)?,
        },
    ))
}

/// The client TLS of `settings`: its CA bundle and, for mTLS, its certificate.
pub fn client_tls(settings: &ClientSettings) -> Result<ClientTlsConfig, String> {
    if settings.ca_path.is_empty() {
        return Err(
            "an https:// URL needs a CA bundle (tls.ca_path, or EBB_TLS_CA_PATH for tools)".into(),
        );
    }
    let ca = read(&settings.ca_path)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = &settings.identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// A client interceptor presenting a bearer token.
#[derive(Clone)]
pub struct Bearer {
    value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("set", &self.value.is_some())
            .finish()
    }
}

impl Bearer {
    /// Presents `token`; an empty token presents nothing.
    pub fn new(token: &str) -> Result<Self, String> {
        if token.is_empty() {
            return Ok(Self { value: None });
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        Ok(Self { value: Some(value) })
    }

    /// Adds the header to outgoing metadata.
    pub fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Some(v) = &self.value {
            metadata.insert("authorization", v.clone());
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.apply(request.metadata_mut());
        Ok(request)
    }
}
