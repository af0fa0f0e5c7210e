//! Who may send to a broker: sender authentication (OIDC bearer tokens,
//! [`oidc`]; mTLS client certificates, [`identity`]), authorization (Knative's
//! EventPolicy, else the default authorization mode) and rate limits ([`rate`]).
//!
//! Each broker has a [`BrokerGuard`], built with the broker's config; a request
//! passes it before its body is read ([`BrokerGuard::admit`]: 401, 403 or 429 cost
//! no body read and no decoding), and its events once decoded
//! ([`Admission::check_events`]: the filters of the policies that admitted the
//! sender). A broker with nothing configured costs one branch.
//!
//! Rules, in order:
//! 1. **Identities.** With OIDC configured, a bearer token is checked (an invalid
//!    one is 401 whatever else holds) and its `sub` is an identity; a client
//!    certificate verified by `--tls-client-ca` gives another. With OIDC
//!    configured, a request with neither is 401 (Knative: authentication first).
//!    Without OIDC, tokens are not looked at.
//! 2. **Authorization.** A broker with EventPolicies admits a request when one of
//!    them admits one of its identities (`spec.from`) and each of its events passes
//!    that policy's `spec.filters`; otherwise 403 (401 when it has no identity at
//!    all). A broker without policies follows the default mode: `allow-all`,
//!    `deny-all` (403), or `allow-same-namespace` (an identity
//!    `system:serviceaccount:<broker namespace>:…`, else 403; 401 without one).
//! 3. **Rate limits.** The sender's bucket (keyed by its first identity; requests
//!    without one share a bucket), then the broker's; 429 with `Retry-After`.

pub mod identity;
pub mod oidc;
pub mod rate;

use std::sync::Arc;

use broker::config::rate::RateLimit;
use broker::config::{BrokerConfig, BrokerId, EventPolicy};
use broker::event::Event;
use broker::telemetry::{AuthRefusal, Metrics, RateScope};
use http::HeaderMap;

use crate::IngressError;
use rate::{Bucket, SenderBuckets};

/// Knative's `default-authorization-mode`: what decides for a broker that no
/// EventPolicy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Every sender (with OIDC on, every authenticated sender).
    AllowAll,
    /// Senders whose identity is a service account of the broker's namespace.
    AllowSameNamespace,
    /// Nobody.
    DenyAll,
}

impl AuthorizationMode {
    /// The mode when `--default-authorization-mode` is not given: Knative's
    /// default, `allow-same-namespace`, once OIDC is on; `allow-all` without it.
    pub fn default_for(oidc: bool) -> AuthorizationMode {
        if oidc {
            AuthorizationMode::AllowSameNamespace
        } else {
            AuthorizationMode::AllowAll
        }
    }
}

impl std::str::FromStr for AuthorizationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow-all" => Ok(AuthorizationMode::AllowAll),
            "allow-same-namespace" => Ok(AuthorizationMode::AllowSameNamespace),
            "deny-all" => Ok(AuthorizationMode::DenyAll),
            other => Err(format!(
                "'{other}' is not allow-all, allow-same-namespace or deny-all"
            )),
        }
    }
}

impl std::fmt::Display for AuthorizationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthorizationMode::AllowAll => "allow-all",
            AuthorizationMode::AllowSameNamespace => "allow-same-namespace",
            AuthorizationMode::DenyAll => "deny-all",
        })
    }
}

/// The ingress's sender settings.
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    /// OIDC token checks (`--oidc-issuer`, `--oidc-jwks`).
    pub oidc: Option<Arc<oidc::Verifier>>,
    /// `--default-authorization-mode`; `None`: `allow-same-namespace` with OIDC
    /// (Knative's default once authentication is on), `allow-all` without.
    pub default_mode: Option<AuthorizationMode>,
    /// `--rate-limit`: per broker, for brokers without the annotation.
    pub rate_limit: Option<RateLimit>,
    /// `--sender-rate-limit`: per sender, for brokers without the annotation.
    pub sender_rate_limit: Option<RateLimit>,
    /// The listener asks for client certificates (`--tls-client-ca`): they are
    /// sender identities.
    pub client_certificates: bool,
    /// `--audit-log-rate` (`None`: [`broker::audit::DEFAULT_AUDIT_LINES_PER_SECOND`]).
    pub audit_log_rate: Option<u32>,
}

impl AuthOptions {
    /// The default authorization mode in force.
    pub fn mode(&self) -> AuthorizationMode {
        self.default_mode
            .unwrap_or(AuthorizationMode::default_for(self.oidc.is_some()))
    }
}

/// The identity of a connection's verified client certificate; the server loop
/// puts it on each request of an mTLS connection.
#[derive(Debug, Clone)]
pub struct ClientIdentity(pub Arc<str>);

/// A broker's OIDC audience, Knative's format:
/// `eventing.knative.dev/broker/<namespace>/<name>`.
pub fn audience(id: &BrokerId) -> String {
    format!("eventing.knative.dev/broker/{}/{}", id.namespace, id.name).to_lowercase()
}

/// Who may send to one broker; see the module docs.
#[derive(Debug)]
pub struct BrokerGuard {
    name: String,
    audience: String,
    sa_prefix: String,
    policies: Vec<Arc<EventPolicy>>,
    mode: AuthorizationMode,
    oidc: Option<Arc<oidc::Verifier>>,
    rate: Option<Arc<Bucket>>,
    senders: Option<Arc<SenderBuckets>>,
    /// Nothing to check: no authentication, authorization or limit.
    open: bool,
}

/// What a request was admitted with: the event check still to do and the
/// buckets to charge for the rest of a batch.
#[derive(Debug, Default)]
pub struct Admission {
    /// Policies that admitted the sender but whose filters each event must pass
    /// (one of them); empty: no event check.
    pending: Vec<Arc<EventPolicy>>,
    buckets: Vec<Arc<Bucket>>,
    sender: Option<Arc<str>>,
}

impl Admission {
    /// Checks decoded events against the policies' filters: every event must pass
    /// the filters of one policy that admitted the sender.
    pub fn check_events(&self, events: &[Event]) -> Result<(), Refusal> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for (i, e) in events.iter().enumerate() {
            let passes = self
                .pending
                .iter()
                .any(|p| p.filter.as_ref().is_none_or(|f| f.matches(e)));
            if !passes {
                let names: Vec<String> = self.pending.iter().map(|p| p.id()).collect();
                let which = if events.len() > 1 {
                    format!("event [{i}] (id {:?})", e.id())
                } else {
                    format!("event {:?}", e.id())
                };
                return Err(Refusal {
                    why: Why::Sender(AuthRefusal::policy_filter),
                    sender: self.sender.clone(),
                    error: IngressError::Forbidden(format!(
                        "{which} does not pass the filters of EventPolicy {}",
                        names.join(", ")
                    )),
                });
            }
        }
        Ok(())
    }

    /// Takes `n` more tokens from the buckets that admitted the request (the rest
    /// of a batch of `n + 1` events).
    pub fn charge(&self, n: usize) {
        for b in &self.buckets {
            b.charge(n);
        }
    }
}

/// Why a request was refused, for the metric and the audit line.
#[derive(Debug)]
pub struct Refusal {
    /// What refused it.
    pub why: Why,
    /// The sender as far as it is known (never the token); `None`: anonymous.
    pub sender: Option<Arc<str>>,
    /// The answer.
    pub error: IngressError,
}

/// What refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Authentication or authorization (counted and audited).
    Sender(AuthRefusal),
    /// A rate limit (counted).
    RateLimit(RateScope),
}

/// The token of an `Authorization: Bearer` header, if any (`Some("")` for a
/// header that is not a bearer token).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?;
    let v = v.to_str().ok().unwrap_or("");
    let token = v
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("bearer "))
        .map(|_| v[7..].trim())
        .unwrap_or("");
    Some(token)
}

impl BrokerGuard {
    /// The guard of `broker` under `opts`. Buckets of `previous` (the same broker
    /// before a reload) are kept when their limits did not change, so a reload does
    /// not refill them.
    pub fn new(
        broker: &BrokerConfig,
        opts: &AuthOptions,
        previous: Option<&BrokerGuard>,
    ) -> BrokerGuard {
        let rate = broker.rate_limit.effective(opts.rate_limit).map(|l| {
            previous
                .and_then(|p| p.rate.clone())
                .filter(|b| b.limit() == l)
                .unwrap_or_else(|| Arc::new(Bucket::new(l)))
        });
        let senders = broker
            .sender_rate_limit
            .effective(opts.sender_rate_limit)
            .map(|l| {
                previous
                    .and_then(|p| p.senders.clone())
                    .filter(|s| s.limit() == l)
                    .unwrap_or_else(|| Arc::new(SenderBuckets::new(l)))
            });
        if !broker.policies.is_empty() && opts.oidc.is_none() && !opts.client_certificates {
            // Built at start and at every reload: said each time it holds.
            tracing::warn!(broker = %broker.id,
                "EventPolicies apply to this broker but no sender authentication is configured (--oidc-issuer, --oidc-jwks or --tls-client-ca): every request to it is refused (401)");
        }
        let mode = opts.mode();
        let open = opts.oidc.is_none()
            && broker.policies.is_empty()
            && mode == AuthorizationMode::AllowAll
            && rate.is_none()
            && senders.is_none();
        BrokerGuard {
            name: broker.id.to_string(),
            audience: audience(&broker.id),
            sa_prefix: format!("system:serviceaccount:{}:", broker.id.namespace),
            policies: broker.policies.clone(),
            mode,
            oidc: opts.oidc.clone(),
            rate,
            senders,
            open,
        }
    }

    /// A guard that admits everything (brokers served without a config, tests).
    pub fn open(id: &BrokerId) -> BrokerGuard {
        BrokerGuard {
            name: id.to_string(),
            audience: audience(id),
            sa_prefix: String::new(),
            policies: Vec::new(),
            mode: AuthorizationMode::AllowAll,
            oidc: None,
            rate: None,
            senders: None,
            open: true,
        }
    }

    /// Whether the guard checks nothing.
    pub fn is_open(&self) -> bool {
        self.open
    }

    fn unauthenticated(
        &self,
        reason: AuthRefusal,
        sender: Option<Arc<str>>,
        invalid: bool,
        detail: String,
    ) -> Refusal {
        Refusal {
            why: Why::Sender(reason),
            sender,
            error: IngressError::Unauthenticated {
                audience: self.audience.clone(),
                invalid_token: invalid,
                detail,
            },
        }
    }

    /// Authenticates, authorizes and rate-limits a request by its head; see the
    /// module docs.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        client: Option<&ClientIdentity>,
    ) -> Result<Admission, Refusal> {
        if self.open {
            return Ok(Admission::default());
        }
        // 1. Identities: the token's subject first, then the certificate's.
        let mut identities: Vec<Arc<str>> = Vec::with_capacity(2);
        if let Some(verifier) = &self.oidc {
            match bearer(headers) {
                Some(token) if !token.is_empty() => {
                    match verifier.verify(token, &self.audience).await {
                        Ok(v) => identities.push(v.subject),
                        Err(e) => {
                            let sender = client.map(|c| c.0.clone());
                            if e.reason == AuthRefusal::keys_unavailable {
                                // The issuer is down, not the token wrong: 503, so
                                // the producer retries.
                                return Err(Refusal {
                                    why: Why::Sender(e.reason),
                                    sender,
                                    error: IngressError::Unavailable {
                                        broker: self.name.clone(),
                                        reason: e.detail,
                                    },
                                });
                            }
                            return Err(self.unauthenticated(e.reason, sender, true, e.detail));
                        }
                    }
                }
                Some(_) => {
                    return Err(self.unauthenticated(
                        AuthRefusal::malformed_token,
                        client.map(|c| c.0.clone()),
                        true,
                        "the Authorization header is not a bearer token".into(),
                    ))
                }
                None if client.is_none() => {
                    return Err(self.unauthenticated(
                        AuthRefusal::missing_token,
                        None,
                        false,
                        format!(
                            "broker {} needs a bearer token for audience {}",
                            self.name, self.audience
                        ),
                    ))
                }
                None => {}
            }
        }
        if let Some(c) = client {
            identities.push(c.0.clone());
        }
        // Shared, not copied: only a refusal spells it out.
        let sender = identities.first().cloned();
        let named = || sender.as_deref().unwrap_or("anonymous").to_owned();
        // 2. Authorization.
        let mut admission = Admission {
            sender: sender.clone(),
            ..Admission::default()
        };
        let needs_identity =
            |what: String| self.unauthenticated(AuthRefusal::missing_token, None, false, what);
        if !self.policies.is_empty() {
            if identities.is_empty() {
                return Err(needs_identity(format!(
                    "broker {} admits senders by EventPolicy: present a bearer token or a client certificate",
                    self.name
                )));
            }
            let admitting: Vec<&Arc<EventPolicy>> = self
                .policies
                .iter()
                .filter(|p| p.admits_subject(identities.iter().map(|s| &**s)))
                .collect();
            if admitting.is_empty() {
                return Err(Refusal {
                    why: Why::Sender(AuthRefusal::policy_sender),
                    error: IngressError::Forbidden(format!(
                        "no EventPolicy of broker {} admits sender {}",
                        self.name,
                        named()
                    )),
                    sender,
                });
            }
            if admitting.iter().all(|p| p.filter.is_some()) {
                admission.pending = admitting.into_iter().cloned().collect();
            }
        } else {
            match self.mode {
                AuthorizationMode::AllowAll => {}
                AuthorizationMode::DenyAll => {
                    return Err(Refusal {
                        why: Why::Sender(AuthRefusal::default_mode),
                        error: IngressError::Forbidden(format!(
                            "broker {} has no EventPolicy and the default authorization mode is deny-all",
                            self.name
                        )),
                        sender,
                    })
                }
                AuthorizationMode::AllowSameNamespace => {
                    if identities.is_empty() {
                        return Err(needs_identity(format!(
                            "broker {} admits service accounts of its namespace only (allow-same-namespace): present a bearer token or a client certificate",
                            self.name
                        )));
                    }
                    let prefix = &self.sa_prefix;
                    let same = identities.iter().any(|s| {
                        s.len() >= prefix.len()
                            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
                    });
                    if !same {
                        return Err(Refusal {
                            why: Why::Sender(AuthRefusal::default_mode),
                            error: IngressError::Forbidden(format!(
                                "broker {} has no EventPolicy and admits only {prefix}* (allow-same-namespace), not {}",
                                self.name,
                                named()
                            )),
                            sender,
                        });
                    }
                }
            }
        }
        // 3. Rate limits: the sender's, then the broker's.
        let limited = |scope: RateScope, wait, limit: RateLimit| IngressError::RateLimited {
            broker: self.name.clone(),
            scope: match scope {
                RateScope::broker => "broker",
                RateScope::sender => "sender",
            },
            limit: limit.to_string(),
            retry_after_secs: rate::retry_after_secs(wait),
        };
        if let Some(senders) = &self.senders {
            let key = identities.first().map_or("", |s| &**s);
            let bucket = senders.bucket(key);
            if let Err(wait) = bucket.try_take() {
                return Err(Refusal {
                    why: Why::RateLimit(RateScope::sender),
                    error: limited(RateScope::sender, wait, senders.limit()),
                    sender,
                });
            }
            admission.buckets.push(bucket);
        }
        if let Some(bucket) = &self.rate {
            if let Err(wait) = bucket.try_take() {
                return Err(Refusal {
                    why: Why::RateLimit(RateScope::broker),
                    error: limited(RateScope::broker, wait, bucket.limit()),
                    sender,
                });
            }
            admission.buckets.push(bucket.clone());
        }
        Ok(admission)
    }

    /// Counts and logs a refusal (the audit line: sender, broker, reason; never the
    /// token).
    pub fn record(&self, refusal: &Refusal, metrics: &Metrics) {
        match refusal.why {
            Why::Sender(reason) => {
                metrics.auth_refused(reason);
                if let Some(suppressed) = metrics.audit.pass() {
                    tracing::warn!(
                        target: "triggerfish::audit",
                        sender = refusal.sender.as_deref().unwrap_or("anonymous"),
                        broker = %self.name,
                        ?reason,
                        status = refusal.error.status().as_u16(),
                        detail = %refusal.error,
                        suppressed,
                        "sender refused"
                    );
                }
            }
            Why::RateLimit(scope) => metrics.rate_limited(&self.name, scope),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert_eq!(bearer(&HeaderMap::new()), None);
        assert_eq!(bearer(&h("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&h("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&h("Basic abc")), Some(""));
        assert_eq!(bearer(&h("Bearer")), Some(""));
    }

    #[test]
    fn audiences() {
        assert_eq!(
            audience(&BrokerId::new("Team-A", "default")),
            "eventing.knative.dev/broker/team-a/default"
        );
    }

    #[test]
    fn modes() {
        for m in ["allow-all", "allow-same-namespace", "deny-all"] {
            assert_eq!(m.parse::<AuthorizationMode>().unwrap().to_string(), m);
        }
        assert!("allow".parse::<AuthorizationMode>().is_err());
    }
}
