//! TLS on the ingress and admin listeners (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`): rustls with the ring provider, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`.
//!
//! - **Rotation.** The certificate and key are read again when either file changes
//!   (cert-manager renews them in place, a mounted Secret swaps its `..data`
//!   symlink): [`Tls::watch`] compares their modification times and lengths every
//!   [`broker::watched::POLL`]. New handshakes get the new pair; connections open keep theirs
//!   and are not dropped. A pair that does not load (a renewal half written, a key
//!   that does not match the certificate) is logged and counted
//!   (`triggerfish_tls_reloads_total{outcome="invalid"}`), and the previous pair
//!   stays; the next change is tried again.
//! - **mTLS.** With `--tls-client-ca`, every client must present a certificate that
//!   chains to one of its certificates; a connection without one, or with another,
//!   fails its handshake (counted in
//!   `triggerfish_ingress_connections_closed_total{reason="tls_handshake"}`).
//! - The handshake must finish within `--header-read-timeout`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use broker::telemetry::{Metrics, ReloadOutcome};
use broker::watched::{Missing, Seen};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// A listener's TLS files.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// PEM certificate chain, the listener's own certificate first (`--tls-cert`).
    pub cert: PathBuf,
    /// PEM private key, PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
    /// PEM certificates of the CAs whose client certificates are accepted; when
    /// set, a client certificate is required (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
    /// The SPIFFE trust domain whose `ns/<ns>/sa/<name>` IDs are service accounts
    /// (`--tls-client-trust-domain`; [`crate::auth::identity`]).
    pub trust_domain: String,
}

impl TlsOptions {
    /// A certificate and key, with `client_ca` for mTLS and the default trust
    /// domain.
    pub fn new(cert: PathBuf, key: PathBuf, client_ca: Option<PathBuf>) -> TlsOptions {
        TlsOptions {
            cert,
            key,
            client_ca,
            trust_domain: crate::auth::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
        }
    }
}

/// A TLS file that could not be used, with the flag it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A listener's TLS: the rustls config and the certificate it serves now.
pub struct Tls {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    opts: TlsOptions,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("opts", &self.opts).finish()
    }
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
    /// The pair's files; one that disappears is a change (its reload fails and is
    /// reported).
    seen: Seen,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("{flag} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{flag} {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn certified_key(opts: &TlsOptions, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = certificates(&opts.cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(&opts.key)
        .map_err(|e| TlsError(format!("--tls-key {}: {e}", opts.key.display())))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError(format!(
            "--tls-cert {} with --tls-key {}: {e}",
            opts.cert.display(),
            opts.key.display()
        ))
    })
}

impl Tls {
    /// Reads the files and builds the listener's TLS config.
    pub fn load(opts: TlsOptions) -> Result<Arc<Tls>, TlsError> {
        let provider = provider();
        let seen = Seen::new(vec![opts.cert.clone(), opts.key.clone()], Missing::Change);
        let key = certified_key(&opts, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
            seen,
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS: {e}")))?;
        let builder = match &opts.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let (added, _ignored) =
                    roots.add_parsable_certificates(certificates(path, "--tls-client-ca")?);
                if added == 0 {
                    return Err(TlsError(format!(
                        "--tls-client-ca {}: no usable CA certificate in it",
                        path.display()
                    )));
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            TlsError(format!("--tls-client-ca {}: {e}", path.display()))
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Tls {
            config: Arc::new(config),
            resolver,
            opts,
        }))
    }

    /// The SPIFFE trust domain of client certificates' identities.
    pub fn trust_domain(&self) -> &str {
        &self.opts.trust_domain
    }

    /// The rustls config for accepting connections.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Loads the certificate and key again if either file changed since they were
    /// last read: `Ok(true)` when a new pair is served from now on, `Ok(false)` when
    /// nothing changed, `Err` (the previous pair stays) when the new files do not
    /// load.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        // Tried once per change: a broken pair is not re-read every poll.
        if !self.resolver.seen.changed() {
            return Ok(false);
        }
        let key = certified_key(&self.opts, &provider())?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }

    /// Polls the files every [`broker::watched::POLL`] until `stop`, reloading
    /// them when they change.
    pub fn watch(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        broker::watched::poll(stop, move || match self.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                metrics.tls_reload(ReloadOutcome::applied);
                tracing::info!(cert = %self.opts.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reload(ReloadOutcome::invalid);
                tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays");
            }
        });
    }
}
