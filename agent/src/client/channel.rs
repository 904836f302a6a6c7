//! The gRPC channel to tyr-server: the server's address, and tonic
//! endpoints with TLS verified against the server CA (plus, for the stream,
//! this daemon's client certificate), a connect timeout and HTTP/2
//! keepalive so a dead server is noticed within seconds.

use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

use super::identity::StoredIdentity;

/// Default gRPC port of tyr-server.
pub const DEFAULT_PORT: u16 = 7700;
/// Longest a TCP + TLS connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval while connected.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long an unanswered HTTP/2 PING is tolerated.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The server address is not `https://host[:port]`.
    #[error("server address {address:?}: {message}")]
    Address {
        /// The address as configured.
        address: String,
        /// What is wrong with it.
        message: String,
    },
    /// tonic refused the TLS configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// The server's address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// `https://host:port`, as tonic connects to it.
    pub uri: String,
    /// Host name or IP address (no brackets): the TLS server name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddress {
    /// Parses `https://host[:port]` (port 7700 by default).
    pub fn parse(address: &str) -> Result<Self, ChannelError> {
        let error = |message: &str| ChannelError::Address { address: address.to_owned(), message: message.to_owned() };
        let uri: Uri = address.trim().parse().map_err(|_| error("not a URI"))?;
        if uri.scheme_str() != Some("https") {
            return Err(error("the scheme must be https"));
        }
        let host = uri.host().ok_or_else(|| error("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(error("no host"));
        }
        let port = uri.port_u16().unwrap_or(DEFAULT_PORT);
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Self { uri: format!("https://{authority}"), host, port })
    }
}

fn endpoint(server: &ServerAddress, tls: ClientTlsConfig) -> Result<Endpoint, ChannelError> {
    let endpoint = Endpoint::from_shared(server.uri.clone())?
        .tls_config(tls.domain_name(server.host.clone()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    Ok(endpoint)
}

/// The endpoint for Register: the server verified against `ca` (the only
/// root), no client certificate.
pub fn register_endpoint(server: &ServerAddress, ca: &CertificateDer<'static>) -> Result<Endpoint, ChannelError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|error| ChannelError::Address {
        address: server.uri.clone(),
        message: format!("unusable CA certificate: {error}"),
    })?;
    endpoint(server, ClientTlsConfig::new().trust_anchors(roots.roots))
}

/// The endpoint for Stream: mutual TLS with this daemon's identity.
pub fn stream_endpoint(server: &ServerAddress, identity: &StoredIdentity) -> Result<Endpoint, ChannelError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, identity.key_pem.expose().as_bytes()));
    endpoint(server, tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        let a = ServerAddress::parse("https://tyr.example:7800").expect("valid");
        assert_eq!((a.host.as_str(), a.port, a.uri.as_str()), ("tyr.example", 7800, "https://tyr.example:7800"));
        let b = ServerAddress::parse("https://127.0.0.1").expect("valid");
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", DEFAULT_PORT));
        let c = ServerAddress::parse("https://[::1]:7700").expect("valid");
        assert_eq!((c.host.as_str(), c.uri.as_str()), ("::1", "https://[::1]:7700"));
        assert!(ServerAddress::parse("http://tyr.example:7700").is_err());
        assert!(ServerAddress::parse("tyr.example").is_err());
    }
}
