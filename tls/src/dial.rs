//! The one way members open gRPC channels to each other (node → controller, node → node,
//! controller → controller): plaintext, or TLS verifying the peer's certificate against the
//! cluster CA and the host name or IP address being dialed.

use std::io;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::files::TlsError;
use crate::source::TlsSource;

/// Opens channels with or without TLS (cheap to clone; one per member process).
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    tls: Option<TlsSource>,
}

impl Dialer {
    /// A dialer using `tls`, or plaintext when `None`.
    pub fn new(tls: Option<TlsSource>) -> Dialer {
        Dialer { tls }
    }

    /// Whether channels use TLS (members then authenticate by certificate, not by secret).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS configuration, if any.
    pub fn tls(&self) -> Option<&TlsSource> {
        self.tls.as_ref()
    }

    /// A lazily connecting channel to `address` (`host:port`), after `tune` set timeouts
    /// and keep-alives on its endpoint. With TLS the server must present a certificate
    /// chaining to the CA and valid for `host`; each new connection uses the certificates
    /// current at that moment.
    pub fn channel(
        &self,
        address: &str,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, TlsError> {
        self.channel_as(address, address, tune)
    }

    /// Like [`Dialer::channel`], but the server's certificate must be valid for the host of
    /// `name` (`host:port`) rather than of `address`: one member behind a name that resolves
    /// to several, dialed at its own IP address.
    pub fn channel_as(
        &self,
        address: &str,
        name: &str,
        tune: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, TlsError> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| TlsError::Address(address.to_string(), e.to_string()))?
            .tcp_nodelay(true);
        let endpoint = tune(endpoint);
        let Some(source) = self.tls.clone() else {
            return Ok(endpoint.connect_lazy());
        };
        let name = server_name(name)?;
        let connector = tower::service_fn(move |uri: Uri| {
            let config = source.client_config();
            let name = name.clone();
            async move {
                let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
                let port = uri.port_u16().unwrap_or(443);
                let tcp = TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                // A refused handshake is a misconfiguration (wrong CA, a name the certificate
                // does not cover), not a passing outage: say so where operators look.
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .inspect_err(|e| {
                        tracing::warn!(%uri, error = %e, "TLS handshake with the server failed")
                    })?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

/// A TCP connection opened by [`Dialer::stream`]: plaintext, or TLS.
pub enum ClientStream {
    /// TLS is off.
    Plain(TcpStream),
    /// A finished TLS handshake (the server verified against the CA and the dialed name).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Dialer {
    /// Opens a raw stream (not gRPC) to `address` (`host:port`) with `TCP_NODELAY`; with TLS
    /// the handshake offers only the ALPN protocol `alpn` and presents this member's
    /// certificate, and the server must present one valid for the dialed host.
    pub async fn stream(&self, address: &str, alpn: &[u8]) -> io::Result<ClientStream> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let Some(source) = &self.tls else {
            return Ok(ClientStream::Plain(tcp));
        };
        let name = server_name(address).map_err(io::Error::other)?;
        let mut config = source.client_config().as_ref().clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .inspect_err(
                |e| tracing::warn!(%address, error = %e, "TLS handshake with the server failed"),
            )?;
        Ok(ClientStream::Tls(Box::new(tls)))
    }
}

/// The name the server's certificate must be valid for: the host part of `host:port`
/// (a DNS name or an IP address, `[v6]:port` included).
pub fn server_name(address: &str) -> Result<ServerName<'static>, TlsError> {
    let bad = |why: &str| TlsError::Address(address.to_string(), why.to_string());
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => return Err(bad("expected host:port")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    ServerName::try_from(host.to_string()).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::server_name;

    #[test]
    fn names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:7001"),
            Ok(rustls::pki_types::ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]:7001"),
            Ok(rustls::pki_types::ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("ctrl-1.rebeam.svc:7001"),
            Ok(rustls::pki_types::ServerName::DnsName(_))
        ));
        assert!(server_name("ctrl-1").is_err());
        assert!(server_name(":7001").is_err());
        assert!(server_name("bad host:1").is_err());
    }
}
