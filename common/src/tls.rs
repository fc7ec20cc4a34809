//! TLS of the gRPC servers (rustls on ring): a certificate and key, and an optional client CA
//! that makes client certificates mandatory (mTLS). The files are read again every
//! [`RELOAD_INTERVAL`]; when they changed and load, new connections get the new certificate
//! (open ones keep theirs). A file that does not load keeps the previous certificate, and the
//! error is logged.

use std::io::Cursor;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How often the certificate, key and client CA files are read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The bytes of the files one server TLS configuration was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The server TLS of a server: the configuration new connections are accepted with, replaced
/// when the files change.
#[derive(Clone)]
pub struct ServerTls {
    paths: TlsConfig,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    /// The files `current` was first built from: what the watcher compares with, so a change
    /// made between the load and the watcher's start is not taken for the loaded state.
    loaded: Files,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_path", &self.paths.cert_path)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The server TLS of `tls`, or `None` when the server is to speak plaintext. Fails when
    /// a file cannot be read or does not hold what it should.
    pub fn load(tls: &TlsConfig) -> anyhow::Result<Option<Self>> {
        if !tls.enabled() {
            return Ok(None);
        }
        let files = read_files(tls)?;
        let config = server_config(tls, &files)?;
        Ok(Some(Self {
            paths: tls.clone(),
            current: Arc::new(RwLock::new(Arc::new(config))),
            loaded: files,
        }))
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.clone())
    }

    /// Reads the files every `interval` until `shutdown`, and swaps in the certificate they
    /// hold whenever they changed and load.
    pub async fn watch(self, interval: Duration, shutdown: CancellationToken) {
        let mut seen = Some(self.loaded);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let files = match read_files(&self.paths) {
                Ok(files) => files,
                Err(e) => {
                    // Logged once per change; a file being replaced may be missing briefly.
                    if seen.take().is_some() {
                        tracing::error!(error = %e, "TLS files unreadable; keeping the previous certificate");
                    }
                    continue;
                }
            };
            if seen.as_ref() == Some(&files) {
                continue;
            }
            match server_config(&self.paths, &files) {
                Ok(config) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                    tracing::info!(cert_path = %self.paths.cert_path, "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "new TLS files do not load; keeping the previous certificate"
                ),
            }
            seen = Some(files);
        }
    }
}

fn read_files(tls: &TlsConfig) -> anyhow::Result<Files> {
    Ok(Files {
        cert: read(&tls.cert_path)?,
        key: read(&tls.key_path)?,
        client_ca: if tls.client_ca_path.is_empty() {
            None
        } else {
            Some(read(&tls.client_ca_path)?)
        },
    })
}

/// The rustls configuration of `files`: HTTP/2 only, client certificates required when
/// there is a client CA.
fn server_config(tls: &TlsConfig, files: &Files) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, _) =
                roots.add_parsable_certificates(certificates(&tls.client_ca_path, ca)?);
            if added == 0 {
                anyhow::bail!(
                    "tls.client_ca_path {}: no usable CA certificate",
                    tls.client_ca_path
                );
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("tls.client_ca_path {}: {e}", tls.client_ca_path))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let certs = certificates(&tls.cert_path, &files.cert)?;
    let key = PrivateKeyDer::from_pem_reader(&mut Cursor::new(&files.key))
        .map_err(|e| anyhow::anyhow!("tls.key_path {}: no private key: {e}", tls.key_path))?;
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        anyhow::anyhow!(
            "tls.cert_path {} with tls.key_path {}: {e}",
            tls.cert_path,
            tls.key_path
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn certificates(path: &str, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_reader_iter(&mut Cursor::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{path}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        anyhow::bail!("{path}: no PEM certificate");
    }
    Ok(certs)
}

fn read(path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))
}
