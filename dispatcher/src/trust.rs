//! Which certificate authorities HTTPS calls trust, and the clients that do.
//!
//! Every HTTPS call of the dispatcher (deliveries, dead-letter sink calls, redrives)
//! trusts the system's root certificates and the process-wide `--ca-bundle`, and,
//! for that destination only, the destination's `CACerts` (Knative's transport
//! encryption: `duckv1.Destination.CACerts`, validated when the config is loaded,
//! [`CaCerts`]). What a connection trusts is fixed when its client is built, so a
//! [`Trust`] holds one client per trust set:
//!
//! - one shared client for every destination without `CACerts`: the common case
//!   keeps exactly one client and one connection pool;
//! - one client per distinct `CACerts` (compared by their certificates, keyed by
//!   their hash), shared by every destination with those certificates.
//!
//! A trigger's clients are picked when an incarnation of it is made
//! ([`Trust::for_trigger`]), never per delivery. The cache holds the per-`CACerts`
//! clients weakly: one lives as long as a trigger incarnation (or a running redrive)
//! uses it, so their number is bounded by the distinct `CACerts` of the config being
//! run (and of incarnations still draining), and `CACerts` removed from the config
//! take their client and its connections with them. The system roots are read once
//! per [`Trust`]; the bundle is read once at start (a changed file needs a restart).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use broker::config::{CaCerts, TriggerConfig};
use rustls::RootCertStore;

use crate::deliver::{client_trusting, ClientInner, HttpClient};
use crate::identity::BearerToken;

/// The HTTPS clients of a process, one per trust set; see the module docs.
pub struct Trust {
    /// The system's roots and the bundle: what every client trusts.
    roots: RootCertStore,
    /// The client of destinations without `CACerts`.
    shared: HttpClient,
    token: Option<Arc<BearerToken>>,
    by_ca: Mutex<HashMap<CaCerts, Weak<ClientInner>>>,
}

/// The clients one trigger calls its destinations with.
#[derive(Clone)]
pub struct TriggerClients {
    /// For its subscriber.
    pub subscriber: HttpClient,
    /// For its dead-letter sink (the shared client when it has none).
    pub sink: HttpClient,
}

impl Trust {
    /// Clients trusting the system's roots and `bundle` (`--ca-bundle`), sending
    /// `token` (`--delivery-token-file`) with every request.
    pub fn new(bundle: Option<&CaCerts>, token: Option<Arc<BearerToken>>) -> Arc<Trust> {
        let mut roots = system_roots();
        if let Some(b) = bundle {
            roots.add_parsable_certificates(b.certificates().iter().cloned());
        }
        Arc::new(Trust {
            shared: client_trusting(roots.clone(), token.clone()),
            roots,
            token,
            by_ca: Mutex::default(),
        })
    }

    /// The client of destinations without `CACerts`.
    pub fn shared(&self) -> &HttpClient {
        &self.shared
    }

    /// The client for a destination with these `CACerts` (none: the shared one),
    /// built on first use and shared while it is used.
    pub fn client(&self, ca: Option<&CaCerts>) -> HttpClient {
        let Some(ca) = ca else {
            return self.shared.clone();
        };
        let mut by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = by_ca.get(ca).and_then(HttpClient::upgrade) {
            return c;
        }
        // Building one is rare (a config change): the moment to forget the clients
        // no trigger uses any more.
        by_ca.retain(|_, w| w.strong_count() > 0);
        let mut roots = self.roots.clone();
        roots.add_parsable_certificates(ca.certificates().iter().cloned());
        let client = client_trusting(roots, self.token.clone());
        by_ca.insert(ca.clone(), client.downgrade());
        tracing::debug!(ca_certs = ?ca, clients = by_ca.len(), "https client for destination CACerts built");
        client
    }

    /// The clients for a trigger's subscriber and dead-letter sink.
    pub fn for_trigger(&self, cfg: &TriggerConfig) -> TriggerClients {
        TriggerClients {
            subscriber: self.client(cfg.subscriber_ca_certs.as_ref()),
            sink: self.client(cfg.delivery.dead_letter_sink_ca_certs.as_ref()),
        }
    }

    /// How many per-`CACerts` clients are in use (the shared one not counted).
    pub fn ca_clients(&self) -> usize {
        let by_ca = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        by_ca.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// The system's root certificates (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured);
/// none, with a warning, when they cannot be read.
pub fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        tracing::warn!(errors = ?errors,
            "no system root certificates; https destinations need --ca-bundle or CACerts");
    }
    roots
}

/// Reads `--ca-bundle`: a PEM file of one or more CA certificates.
pub fn read_bundle(path: &Path) -> Result<CaCerts, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--ca-bundle {}: {e}", path.display()))?;
    CaCerts::parse(&text).map_err(|e| format!("--ca-bundle {}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A self-signed CA (openssl, P-256, valid until 2126), shared with the
    /// other crates' tests.
    const CA: &str = include_str!("../../tests/fixtures/test-ca.pem");

    /// Destinations without `CACerts` share the one client; those with the same
    /// certificates share another, built once and gone with its last user.
    #[test]
    fn one_client_per_trust_set_while_it_is_used() {
        let trust = Trust::new(None, None);
        let ca = CaCerts::parse(CA).unwrap();
        let same = CaCerts::parse(&format!("comment\n{CA}")).unwrap();
        assert!(trust.client(None).same_pool(trust.shared()));
        assert_eq!(trust.ca_clients(), 0);
        let a = trust.client(Some(&ca));
        let b = trust.client(Some(&same));
        assert!(a.same_pool(&b));
        assert!(!a.same_pool(trust.shared()));
        assert_eq!(trust.ca_clients(), 1);
        drop((a, b));
        assert_eq!(trust.ca_clients(), 0);
        // Built anew when used again, and the dead entry is not kept.
        let c = trust.client(Some(&ca));
        assert_eq!(trust.ca_clients(), 1);
        assert_eq!(trust.by_ca.lock().unwrap().len(), 1);
        drop(c);
    }

    #[test]
    fn the_bundle_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, format!("{CA}{CA}")).unwrap();
        assert_eq!(read_bundle(&path).unwrap().certificates().len(), 2);
        std::fs::write(&path, "nothing").unwrap();
        let e = read_bundle(&path).unwrap_err();
        assert!(
            e.starts_with("--ca-bundle ") && e.contains("no PEM certificate"),
            "{e}"
        );
        assert!(read_bundle(&dir.path().join("missing")).is_err());
    }
}
