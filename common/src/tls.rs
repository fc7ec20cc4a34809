//! TLS of the gRPC servers (rustls on ring, through tonic): a certificate and key, and an
//! optional client CA that makes client certificates mandatory (mTLS).

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsConfig;

/// The server TLS of `tls`, or `None` when the server is to speak plaintext.
pub fn server_tls(tls: &TlsConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    if !tls.enabled() {
        return Ok(None);
    }
    let cert = read(&tls.cert_path)?;
    let key = read(&tls.key_path)?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if !tls.client_ca_path.is_empty() {
        config = config
            .client_ca_root(Certificate::from_pem(read(&tls.client_ca_path)?))
            .client_auth_optional(false);
    }
    Ok(Some(config))
}

fn read(path: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))
}
