//! The dispatcher's outgoing identity (`--delivery-token-file`): a bearer token,
//! typically a projected Kubernetes service-account token, sent as
//! `Authorization: Bearer` with every delivery, dead-letter sink call and redrive,
//! so subscribers can check who calls them (Knative's OIDC for deliveries).
//!
//! The file is read at start (a missing or empty one stops the start) and polled
//! every [`POLL`] ([`broker::watched`]): kubelet rewrites a projected token well before it expires, and
//! the next request carries the new one. A replacement that is unreadable or empty
//! is logged and the previous token stays. A request that already has an
//! `Authorization` header keeps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use broker::watched::{Missing, Seen};
use http::HeaderValue;
use tokio_util::sync::CancellationToken;

pub use broker::watched::POLL;

/// A bearer token read from a file and kept current.
#[derive(Debug)]
pub struct BearerToken {
    path: PathBuf,
    value: RwLock<HeaderValue>,
    /// A missing file is waited for (kubelet writes the token anew).
    seen: Seen,
}

fn read(path: &Path) -> Result<HeaderValue, String> {
    let raw = std::fs::read(path)
        .map_err(|e| format!("--delivery-token-file {}: {e}", path.display()))?;
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(format!("--delivery-token-file {}: empty", path.display()));
    }
    let mut v = HeaderValue::from_bytes(&[b"Bearer ", token].concat()).map_err(|_| {
        format!(
            "--delivery-token-file {}: not a token (printable ASCII on one line)",
            path.display()
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl BearerToken {
    /// Reads the token file.
    pub fn load(path: &Path) -> Result<Arc<BearerToken>, String> {
        let seen = Seen::new(vec![path.to_owned()], Missing::Wait);
        Ok(Arc::new(BearerToken {
            path: path.to_owned(),
            value: RwLock::new(read(path)?),
            seen,
        }))
    }

    /// The `Authorization` value to send now.
    pub fn header(&self) -> HeaderValue {
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again if it changed: `Ok(true)` when a new token is used from
    /// now on.
    pub fn refresh(&self) -> Result<bool, String> {
        if !self.seen.changed() {
            return Ok(false);
        }
        let v = read(&self.path)?;
        *self.value.write().unwrap_or_else(|e| e.into_inner()) = v;
        Ok(true)
    }

    /// Polls the file every [`POLL`] until `stop`.
    pub fn watch(self: Arc<Self>, stop: CancellationToken) {
        broker::watched::poll(stop, move || match self.refresh() {
            Ok(true) => tracing::info!(path = %self.path.display(), "delivery token re-read"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "delivery token not re-read; the previous one stays")
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_trimmed_and_kept_when_its_replacement_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def.ghi\n").unwrap();
        let t = BearerToken::load(&path).unwrap();
        assert_eq!(t.header(), "Bearer abc.def.ghi");
        assert!(t.header().is_sensitive());
        std::fs::write(&path, "  \n").unwrap();
        assert!(t.refresh().is_err());
        assert_eq!(t.header(), "Bearer abc.def.ghi");
        std::fs::write(&path, "new.token.value-which-is-longer\n").unwrap();
        assert!(t.refresh().unwrap());
        assert_eq!(t.header(), "Bearer new.token.value-which-is-longer");
        assert!(!t.refresh().unwrap());
        std::fs::write(&path, "").unwrap();
        assert!(BearerToken::load(&path).is_err());
    }
}
