//! The three PEM files a member is configured with (`--tls-cert`, `--tls-key`, `--tls-ca`),
//! read and checked into rustls configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS could not be set up; every variant names the file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only some of the three options were given.
    #[error("TLS needs --tls-cert, --tls-key and --tls-ca together; missing: {0}")]
    Incomplete(String),
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which option the file came from.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{what} {path}: {problem}")]
    Content {
        /// Which option the file came from.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The private key does not belong to the certificate.
    #[error("the key {key} does not match the certificate {cert}: {problem}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' explanation.
        problem: String,
    },
    /// An address cannot be dialed over TLS (no host name to verify).
    #[error("cannot dial {0} over TLS: {1}")]
    Address(String, String),
}

/// Where a member's certificate chain, private key and cluster CA live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain this member presents (leaf first).
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificate(s) that sign every member's certificate (and client certificates).
    pub ca: PathBuf,
}

impl TlsFiles {
    /// Turns the three optional command-line values into TLS files: none given means
    /// plaintext, all three means TLS, anything else is an error naming what is missing.
    pub fn from_options(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-ca"),
                ]
                .into_iter()
                .filter_map(|(m, name)| m.then_some(name))
                .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }
}

/// The raw bytes of the three files, compared to notice a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

/// Reads the three files' bytes.
pub(crate) fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    Ok(Contents {
        cert: read("--tls-cert", &files.cert)?,
        key: read("--tls-key", &files.key)?,
        ca: read("--tls-ca", &files.ca)?,
    })
}

/// Both rustls configurations built from one reading of the files.
pub(crate) struct Configs {
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses and checks the files' contents into server and client configurations.
pub(crate) fn build(files: &TlsFiles, c: &Contents) -> Result<Configs, TlsError> {
    let content = |what: &'static str, path: &Path, problem: String| TlsError::Content {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&c.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content("--tls-cert", &files.cert, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            "--tls-cert",
            &files.cert,
            "holds no CERTIFICATE block".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|e| {
        content(
            "--tls-key",
            &files.key,
            format!("holds no usable private key: {e}"),
        )
    })?;
    let cas = CertificateDer::pem_slice_iter(&c.ca)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content("--tls-ca", &files.ca, format!("not valid PEM: {e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| content("--tls-ca", &files.ca, format!("not a usable CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(content(
            "--tls-ca",
            &files.ca,
            "holds no CERTIFICATE block".into(),
        ));
    }
    let provider = provider();
    // Checks that the key signs for the certificate's public key, once for both configs.
    let certified =
        CertifiedKey::from_der(certs, key, &provider).map_err(|e| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            problem: e.to_string(),
        })?;
    let certified = Arc::new(certified);
    let roots = Arc::new(roots);

    let internal = |e: rustls::Error| content("--tls-ca", &files.ca, e.to_string());
    // Client certificates are optional at the handshake (clients of the API may hold only a
    // token) but, when presented, must chain to the CA; services that only members may use
    // then require one (see `identity`).
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| content("--tls-ca", &files.ca, e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(internal)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            certified.as_ref().clone(),
        )));
    // gRPC, or the nodes' peer transport or the client wire on the same port (see
    // `crate::PEER_ALPN`, `crate::CLIENT_ALPN`).
    server.alpn_protocols = vec![
        b"h2".to_vec(),
        crate::PEER_ALPN.to_vec(),
        crate::CLIENT_ALPN.to_vec(),
    ];

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(internal)?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            certified.as_ref().clone(),
        )));
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}
