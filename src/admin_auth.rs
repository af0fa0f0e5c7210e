//! Who may use the admin API. It reads dead-lettered events and redrives them, so
//! reaching its port must not be enough once it leaves loopback:
//!
//! - **A bearer token** (`--admin-token-file FILE`): every request carries
//!   `Authorization: Bearer <token>`. Required when `--admin-listen` is not a
//!   loopback address (the server refuses to start without it) unless the listener
//!   requires client certificates (`--admin-tls-client-ca`, checked in its TLS
//!   handshake); checked on loopback too when set. The file is stat'ed per request and re-read when it changes (a
//!   rotated Kubernetes Secret), keeping the last good token while it is unreadable.
//!   The comparison takes the same time wherever the tokens differ.
//! - **No browser can drive it.** The admin API has no web page, so a request that a
//!   browser made for another site is refused whatever else it carries:
//!   `Sec-Fetch-Site: cross-site|same-site` (CSRF through a form or `fetch`), an
//!   `Origin` not listed in `--admin-allowed-origin` (none by default), and, where
//!   reaching the port is the only credential (no token), a `Host` that is not an IP
//!   literal, `localhost` or listed in `--admin-allowed-host`: a DNS-rebinding page
//!   sends its own name there. With a token the Host is checked only against a given
//!   `--admin-allowed-host` list: the page cannot present the token.
//!
//! A refusal answers 401 (no or a wrong token, with `WWW-Authenticate: Bearer`) or
//! 403 (a browser's request), with the admin API's JSON error body; it is counted in
//! `triggerfish_admin_refused_total{reason}` and logged (target `triggerfish::audit`)
//! with the peer, method, path and reason, never with the token.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use broker::telemetry::{AdminRefusal, Metrics};
use broker::watched::{Missing, Seen};

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// How the admin API is protected (the `serve` flags).
#[derive(Debug, Clone, Default)]
pub struct AdminAuthOptions {
    /// `--admin-token-file`.
    pub token_file: Option<PathBuf>,
    /// `--admin-tls-client-ca` is set: the listener admits only clients with a
    /// certificate of those CAs, which is enough off loopback without a token.
    pub client_certificates: bool,
    /// `--admin-allowed-host`: names the admin API is reached at besides IP literals
    /// and `localhost` (exact, or `.suffix` for every name under it).
    pub allowed_hosts: Vec<String>,
    /// `--admin-allowed-origin`: browser origins allowed to call it (none by default).
    pub allowed_origins: Vec<String>,
}

/// The admin API's guard: built once per listener from [`AdminAuthOptions`].
pub struct AdminAuth {
    token: Option<TokenFile>,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
    metrics: Arc<Metrics>,
}

impl AdminAuth {
    /// Checks the options against the address the admin API listens on and reads the
    /// token. Fails when the address is not loopback and no token is given, or when
    /// the token file cannot be read or holds too short a token.
    pub fn new(
        opts: &AdminAuthOptions,
        listen: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<AdminAuth> {
        let token = match &opts.token_file {
            Some(path) => Some(TokenFile::open(path)?),
            None if !listen.ip().is_loopback() && !opts.client_certificates => anyhow::bail!(
                "--admin-listen {listen} is not a loopback address: the admin API reads and \
                 redrives dead-lettered events, so off loopback it needs --admin-token-file FILE \
                 (a bearer token of at least {MIN_TOKEN_LEN} characters) or client certificates \
                 (--admin-tls-client-ca FILE); or listen on 127.0.0.1"
            ),
            None => None,
        };
        let lower = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        };
        Ok(AdminAuth {
            token,
            allowed_hosts: lower(&opts.allowed_hosts),
            allowed_origins: lower(&opts.allowed_origins),
            metrics,
        })
    }

    fn check(&self, headers: &HeaderMap, authority: Option<&str>) -> Result<(), Refusal> {
        if let Some(site) = headers.get("sec-fetch-site") {
            if matches!(site.as_bytes(), b"cross-site" | b"same-site") {
                return Err(Refusal::forbidden(
                    AdminRefusal::cross_site,
                    format!(
                        "a browser sent this request for another site (Sec-Fetch-Site: {}); the admin API takes no browser requests",
                        String::from_utf8_lossy(site.as_bytes())
                    ),
                ));
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let o = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
            if !self.allowed_origins.contains(&o) {
                return Err(Refusal::forbidden(
                    AdminRefusal::origin,
                    format!("Origin {o} is not allowed (--admin-allowed-origin)"),
                ));
            }
        }
        if self.token.is_none() || !self.allowed_hosts.is_empty() {
            if let Some(host) = authority {
                if !self.host_allowed(host) {
                    return Err(Refusal::forbidden(
                        AdminRefusal::host,
                        format!(
                            "Host {host} is not an address of this admin API: an IP address, localhost, \
                             or a name given with --admin-allowed-host"
                        ),
                    ));
                }
            }
        }
        if let Some(token) = &self.token {
            let expected = token.current();
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer(v.as_bytes()));
            match presented {
                None => {
                    return Err(Refusal::unauthorized(
                        AdminRefusal::no_token,
                        "the admin API needs a bearer token (Authorization: Bearer; `triggerfish status` and `dlq` take --admin-token-file)",
                        false,
                    ))
                }
                Some(p) if !same(p, &expected) => {
                    return Err(Refusal::unauthorized(
                        AdminRefusal::bad_token,
                        "the bearer token is not the admin API's (--admin-token-file)",
                        true,
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn host_allowed(&self, authority: &str) -> bool {
        let host = host_of(authority).to_ascii_lowercase();
        if host.parse::<IpAddr>().is_ok() || host == "localhost" {
            return true;
        }
        self.allowed_hosts
            .iter()
            .any(|a| match a.strip_prefix('.') {
                Some(suffix) => {
                    host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}"))
                }
                None => *a == host,
            })
    }
}

/// The host of an authority (`host[:port]`, `[v6]:port`), without the port or the
/// brackets.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = (v.get(..7)?, &v[7..]);
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = rest.trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// Whether `presented` equals `expected`, in a time that depends only on the
/// presented token's length (which the sender knows anyway).
fn same(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = presented.len() ^ expected.len();
    for (i, b) in presented.iter().enumerate() {
        diff |= usize::from(b ^ expected.get(i).copied().unwrap_or(0));
    }
    std::hint::black_box(diff) == 0
}

/// The token file, re-read when its modification time or length changes (looked
/// at on every request: a rotated token takes effect with the next one).
struct TokenFile {
    path: PathBuf,
    /// The token; its lock is held while the file is looked at, so no request
    /// is answered with the old token once another has seen the change.
    token: Mutex<Arc<[u8]>>,
    seen: Seen,
}

impl TokenFile {
    fn open(path: &Path) -> anyhow::Result<TokenFile> {
        let seen = Seen::new(vec![path.to_owned()], Missing::Wait);
        let token = read_token(path)?;
        Ok(TokenFile {
            path: path.to_owned(),
            token: Mutex::new(token),
            seen,
        })
    }

    fn current(&self) -> Arc<[u8]> {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if self.seen.changed() {
            match read_token(&self.path) {
                Ok(t) => {
                    *token = t;
                    tracing::info!(path = %self.path.display(), "admin token file re-read");
                }
                // Keep the last good token (a bad edit); warn once per change.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "admin token file not re-read; the previous token stays");
                }
            }
        }
        token.clone()
    }
}

fn read_token(path: &Path) -> anyhow::Result<Arc<[u8]>> {
    let raw = std::fs::read(path)
        .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
    let t = raw.trim_ascii();
    if t.len() < MIN_TOKEN_LEN {
        anyhow::bail!(
            "--admin-token-file {} holds {} characters; an admin token needs at least {MIN_TOKEN_LEN}",
            path.display(),
            t.len()
        );
    }
    if t.iter().any(|b| !b.is_ascii_graphic()) {
        anyhow::bail!(
            "--admin-token-file {}: a token is printable ASCII without spaces (it travels in an HTTP header)",
            path.display()
        );
    }
    Ok(t.into())
}

/// An HTTP client of the admin API (`triggerfish status`, `dlq`) that sends the
/// token of `token_file` with every request.
pub fn client(
    token_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    if let Some(path) = token_file {
        let token = read_token(path)?;
        let mut v = HeaderValue::from_bytes(&[b"Bearer ", &token[..]].concat())
            .context("--admin-token-file: not a header value")?;
        v.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, v);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some((cert, key)) = identity {
        let read = |p: &Path, flag: &str| {
            std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
        };
        let mut pem = read(cert, "--admin-client-cert")?;
        pem.push(b'\n');
        pem.extend(read(key, "--admin-client-key")?);
        builder = builder
            .identity(reqwest::Identity::from_pem(&pem).context(
                "--admin-client-cert/--admin-client-key: not a PEM certificate and key",
            )?);
    }
    Ok(builder.build()?)
}

/// Why a request was refused, as it is answered.
struct Refusal {
    reason: AdminRefusal,
    status: StatusCode,
    detail: String,
    /// 401: which `WWW-Authenticate` (with `error="invalid_token"` for a wrong one).
    challenge: Option<bool>,
}

impl Refusal {
    fn forbidden(reason: AdminRefusal, detail: String) -> Refusal {
        Refusal {
            reason,
            status: StatusCode::FORBIDDEN,
            detail,
            challenge: None,
        }
    }

    fn unauthorized(reason: AdminRefusal, detail: &str, invalid: bool) -> Refusal {
        Refusal {
            reason,
            status: StatusCode::UNAUTHORIZED,
            detail: detail.to_owned(),
            challenge: Some(invalid),
        }
    }
}

/// The middleware: refuses what [`AdminAuth`] does not admit, before any route runs.
pub async fn guard(State(auth): State<Arc<AdminAuth>>, req: Request, next: Next) -> Response {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let Err(refusal) = auth.check(req.headers(), authority.as_deref()) else {
        return next.run(req).await;
    };
    auth.metrics.admin_refused(refusal.reason);
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    if let Some(suppressed) = auth.metrics.audit.pass() {
        tracing::warn!(
            target: "triggerfish::audit",
            %peer,
            method = %req.method(),
            path = req.uri().path(),
            reason = ?refusal.reason,
            detail = %refusal.detail,
            suppressed,
            "admin request refused"
        );
    }
    let mut response = crate::admin::error(refusal.status, refusal.detail).into_response();
    if let Some(invalid) = refusal.challenge {
        let v = if invalid {
            r#"Bearer realm="triggerfish-admin", error="invalid_token""#
        } else {
            r#"Bearer realm="triggerfish-admin""#
        };
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:8081"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8081"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("evil.example:80"), "evil.example");
        assert_eq!(host_of("::1"), "::1");
    }

    #[test]
    fn bearer_tokens_are_read_in_any_case_and_empty_is_none() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
    }

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!same(b"", b"0123456789abcdef"));
    }
}
