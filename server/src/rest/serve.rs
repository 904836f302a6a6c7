//! Serving the REST router: over TLS (the server's own certificate, or one
//! the operator configures) unless the operator turned TLS off for a
//! deployment behind a TLS-terminating proxy; graceful on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long open requests may finish after shutdown begins.
const GRACE: Duration = Duration::from_secs(10);

/// How the REST listener speaks.
#[derive(Debug, Clone)]
pub enum RestTls {
    /// Plain HTTP, for deployments behind a TLS-terminating proxy only.
    Off,
    /// TLS with this configuration.
    On(Arc<rustls::ServerConfig>),
}

impl RestTls {
    /// TLS with a PEM certificate chain and private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("reading the REST certificate chain")?;
        anyhow::ensure!(!chain.is_empty(), "the REST certificate file holds no certificate");
        let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the REST private key")?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("choosing TLS versions")?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .context("the REST certificate and key do not form an identity")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self::On(Arc::new(config)))
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests
/// finish for a grace period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: RestTls,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        RestTls::Off => {
            let server = axum::serve(listener, service).with_graceful_shutdown(shutdown.clone().cancelled_owned());
            tokio::select! {
                served = server => served.context("serving REST")?,
                () = async { shutdown.cancelled().await; tokio::time::sleep(GRACE).await } => {
                    tracing::warn!("REST requests still open after the grace period; closing them");
                }
            }
        }
        RestTls::On(config) => {
            let handle = axum_server::Handle::new();
            let stopper = {
                let handle = handle.clone();
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    handle.graceful_shutdown(Some(GRACE));
                })
            };
            let listener = listener.into_std().context("handing the REST socket to the TLS server")?;
            axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(config))
                .context("starting the REST TLS server")?
                .handle(handle)
                .serve(service)
                .await
                .context("serving REST")?;
            stopper.abort();
        }
    }
    Ok(())
}
