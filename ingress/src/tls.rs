//! TLS on the ingress and admin listeners (`--tls-cert`, `--tls-key`,
//! `--tls-client-ca`): rustls with the ring provider, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`.
//!
//! - **Rotation.** The certificate and key are read again when either file changes
//!   (cert-manager renews them in place, a mounted Secret swaps its `..data`
//!   symlink): [`Tls::watch`] compares their modification times and lengths every
//!   [`RELOAD_POLL`]. New handshakes get the new pair; connections open keep theirs
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
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use broker::telemetry::{Metrics, ReloadOutcome};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// How often [`Tls::watch`] looks at the certificate and key files.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

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

type Stamp = Option<(SystemTime, u64)>;

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Stamp, Stamp)>,
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

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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
        let stamps = (stamp(&opts.cert), stamp(&opts.key));
        let key = certified_key(&opts, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
            stamps: Mutex::new(stamps),
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

    /// The rustls config for accepting connections.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Loads the certificate and key again if either file changed since they were
    /// last read: `Ok(true)` when a new pair is served from now on, `Ok(false)` when
    /// nothing changed, `Err` (the previous pair stays) when the new files do not
    /// load.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = (stamp(&self.opts.cert), stamp(&self.opts.key));
        let mut seen = self
            .resolver
            .stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return Ok(false);
        }
        // Tried once per change: a broken pair is not re-read every poll.
        *seen = now;
        let key = certified_key(&self.opts, &provider())?;
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(true)
    }

    /// Polls the files every [`RELOAD_POLL`] until `stop`, reloading them when they
    /// change.
    pub fn watch(self: Arc<Self>, metrics: Arc<Metrics>, stop: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_POLL) => {}
                }
                match self.reload_if_changed() {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics.tls_reload(ReloadOutcome::applied);
                        tracing::info!(cert = %self.opts.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => {
                        metrics.tls_reload(ReloadOutcome::invalid);
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays");
                    }
                }
            }
        });
    }
}
