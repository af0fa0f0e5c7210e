//! The `serve` flags of who may send (sender authentication, authorization, rate
//! limits), validated into [`ingress::auth`]'s options.

use std::time::Duration;

use broker::config::rate::RateLimit;
use clap::Args;
use ingress::auth::oidc::{IssuerOptions, KeySource, OidcOptions};
use ingress::auth::AuthorizationMode;

#[derive(Debug, Args)]
pub struct SenderArgs {
    /// An OIDC issuer whose tokens the ingress accepts, its keys found by OpenID
    /// discovery (`<issuer>/.well-known/openid-configuration`). Repeatable. With any
    /// issuer set, every request needs a bearer token for the broker's audience
    /// (`eventing.knative.dev/broker/<namespace>/<name>`) or an mTLS client
    /// certificate.
    #[arg(
        long = "oidc-issuer",
        env = "TRIGGERFISH_OIDC_ISSUERS",
        value_delimiter = ','
    )]
    pub oidc_issuers: Vec<String>,
    /// An OIDC issuer with its JWKS given explicitly: `ISSUER=FILE` or
    /// `ISSUER=URL` (a Kubernetes cluster's service-account issuer, say).
    /// Repeatable.
    #[arg(
        long = "oidc-jwks",
        env = "TRIGGERFISH_OIDC_JWKS",
        value_delimiter = ','
    )]
    pub oidc_jwks: Vec<String>,
    /// A bearer token file (the pod's projected service-account token) sent when
    /// fetching issuers' discovery documents and keys: a Kubernetes API server
    /// serves them to authenticated callers only by default.
    #[arg(long, env = "TRIGGERFISH_OIDC_FETCH_TOKEN_FILE")]
    pub oidc_fetch_token_file: Option<std::path::PathBuf>,
    /// Tolerance on tokens' `exp` and `nbf` (ISO 8601).
    #[arg(long, env = "TRIGGERFISH_OIDC_CLOCK_SKEW", default_value = "PT60S")]
    pub oidc_clock_skew: String,
    /// How often every issuer's keys are fetched again (ISO 8601).
    #[arg(long, env = "TRIGGERFISH_OIDC_JWKS_REFRESH", default_value = "PT5M")]
    pub oidc_jwks_refresh: String,
    /// The shortest time between two fetches of an issuer's keys for a token whose
    /// `kid` is unknown (key rotation), ISO 8601.
    #[arg(
        long,
        env = "TRIGGERFISH_OIDC_JWKS_MIN_REFRESH",
        default_value = "PT10S"
    )]
    pub oidc_jwks_min_refresh: String,
    /// Most verified tokens remembered until they expire (0: verify every request).
    #[arg(
        long,
        env = "TRIGGERFISH_OIDC_TOKEN_CACHE_SIZE",
        default_value_t = 10_000
    )]
    pub oidc_token_cache_size: usize,
    /// Who may send to a broker that no EventPolicy applies to: `allow-all`,
    /// `allow-same-namespace` (service accounts of the broker's namespace) or
    /// `deny-all`. Default: allow-same-namespace with OIDC on (Knative's default),
    /// allow-all without.
    #[arg(long, env = "TRIGGERFISH_DEFAULT_AUTHORIZATION_MODE")]
    pub default_authorization_mode: Option<AuthorizationMode>,
    /// Events per second each broker accepts from all senders together, for
    /// brokers without the `triggerfish.dev/rate-limit` annotation: `100`, `100/s`,
    /// `6000/m`. Default: none.
    #[arg(long, env = "TRIGGERFISH_RATE_LIMIT")]
    pub rate_limit: Option<String>,
    /// The burst of --rate-limit (default: one second's worth).
    #[arg(long, env = "TRIGGERFISH_RATE_LIMIT_BURST", requires = "rate_limit")]
    pub rate_limit_burst: Option<String>,
    /// Events per second each sender identity may send to a broker, for brokers
    /// without the `triggerfish.dev/sender-rate-limit` annotation. Default: none.
    #[arg(long, env = "TRIGGERFISH_SENDER_RATE_LIMIT")]
    pub sender_rate_limit: Option<String>,
    /// The burst of --sender-rate-limit (default: one second's worth).
    #[arg(
        long,
        env = "TRIGGERFISH_SENDER_RATE_LIMIT_BURST",
        requires = "sender_rate_limit"
    )]
    pub sender_rate_limit_burst: Option<String>,
    /// Most audit lines (refused senders and admin requests, target
    /// `triggerfish::audit`) written per second; the others are counted in
    /// `triggerfish_audit_lines_suppressed_total`. 0: no bound.
    #[arg(long, env = "TRIGGERFISH_AUDIT_LOG_RATE", default_value_t = broker::audit::DEFAULT_AUDIT_LINES_PER_SECOND)]
    pub audit_log_rate: u32,
}

fn rate(flag: &str, rate: Option<&str>, burst: Option<&str>) -> anyhow::Result<Option<RateLimit>> {
    let Some(r) = rate else { return Ok(None) };
    let mut limit = RateLimit::parse(r).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
    if let Some(b) = burst {
        limit.burst =
            RateLimit::parse_burst(b).map_err(|e| anyhow::anyhow!("--{flag}-burst: {e}"))?;
    }
    Ok(Some(limit))
}

impl SenderArgs {
    /// The OIDC settings (`None` without issuers), with `ca_bundle` trusted for
    /// fetching keys.
    pub fn oidc(&self, ca_bundle: Option<&std::path::Path>) -> anyhow::Result<Option<OidcOptions>> {
        let duration = |flag: &str, v: &str| -> anyhow::Result<Duration> {
            broker::config::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        let mut issuers: Vec<IssuerOptions> = self
            .oidc_issuers
            .iter()
            .map(|i| {
                if !(i.starts_with("https://") || i.starts_with("http://")) {
                    anyhow::bail!("--oidc-issuer {i}: an issuer is an http(s) URL");
                }
                Ok(IssuerOptions {
                    issuer: i.clone(),
                    keys: KeySource::Discovery,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        for j in &self.oidc_jwks {
            issuers.push(IssuerOptions::parse_jwks(j).map_err(anyhow::Error::msg)?);
        }
        if issuers.is_empty() {
            return Ok(None);
        }
        let ca_bundle = match ca_bundle {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| anyhow::anyhow!("--ca-bundle {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let refresh = duration("oidc-jwks-refresh", &self.oidc_jwks_refresh)?;
        if refresh < Duration::from_secs(1) {
            anyhow::bail!("--oidc-jwks-refresh: at least PT1S");
        }
        let min_refresh = duration("oidc-jwks-min-refresh", &self.oidc_jwks_min_refresh)?;
        if min_refresh < Duration::from_secs(1) {
            // Every made-up kid would cost the issuer a request.
            anyhow::bail!("--oidc-jwks-min-refresh: at least PT1S");
        }
        Ok(Some(OidcOptions {
            issuers,
            clock_skew: duration("oidc-clock-skew", &self.oidc_clock_skew)?,
            refresh,
            min_refresh,
            cache_size: self.oidc_token_cache_size,
            ca_bundle,
            fetch_token_file: self.oidc_fetch_token_file.clone(),
        }))
    }

    /// The authorization mode and rate limits (OIDC is added when the server starts).
    pub fn auth(&self) -> anyhow::Result<ingress::auth::AuthOptions> {
        Ok(ingress::auth::AuthOptions {
            oidc: None,
            default_mode: self.default_authorization_mode,
            rate_limit: rate(
                "rate-limit",
                self.rate_limit.as_deref(),
                self.rate_limit_burst.as_deref(),
            )?,
            sender_rate_limit: rate(
                "sender-rate-limit",
                self.sender_rate_limit.as_deref(),
                self.sender_rate_limit_burst.as_deref(),
            )?,
            // Set from the listener's TLS when the server starts.
            client_certificates: false,
            audit_log_rate: Some(self.audit_log_rate),
        })
    }
}
