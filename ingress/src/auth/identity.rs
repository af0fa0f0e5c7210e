//! The sender identity of a verified client certificate (mTLS), for EventPolicies
//! and the default authorization mode.
//!
//! A SPIFFE ID of the Kubernetes shape in the configured trust domain
//! (`spiffe://<--tls-client-trust-domain>/ns/<namespace>/sa/<name>`, as Istio and
//! SPIRE issue them, the namespace and name valid Kubernetes names) becomes the
//! service account's subject `system:serviceaccount:<namespace>:<name>`, so one
//! policy can admit a sender whichever way it proves itself. Anything else is named
//! with a prefix that no token subject of a service account has: `x509:uri:<first
//! URI SAN>`, else `x509:cn:<subject common name>`, else `x509:dns:<first DNS SAN>`.
//! So a certificate whose CN (or a URI SAN such as `system:serviceaccount:a:b`,
//! which is a valid URI) reads like a service account never passes for one.

use broker::config::is_k8s_name;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The default of `--tls-client-trust-domain` (Istio's and Kubernetes' default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The identity of a DER certificate, or `None` when it names nothing usable.
pub fn certificate_identity(der: &[u8], trust_domain: &str) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(*u),
                GeneralName::DNSName(d) => dns.push(*d),
                _ => {}
            }
        }
    }
    if let Some(sa) = uris
        .iter()
        .find_map(|u| spiffe_service_account(u, trust_domain))
    {
        return Some(sa);
    }
    if let Some(u) = uris.first() {
        return Some(format!("x509:uri:{u}"));
    }
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(format!("x509:cn:{cn}"));
    }
    dns.first().map(|d| format!("x509:dns:{d}"))
}

/// `spiffe://<trust_domain>/ns/N/sa/S` → `system:serviceaccount:N:S`.
fn spiffe_service_account(uri: &str, trust_domain: &str) -> Option<String> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    if !domain.eq_ignore_ascii_case(trust_domain) {
        return None;
    }
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
            if is_k8s_name(ns, true) && is_k8s_name(sa, false) =>
        {
            Some(broker::config::policy::service_account_subject(ns, sa))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        let td = DEFAULT_TRUST_DOMAIN;
        assert_eq!(
            spiffe_service_account("spiffe://cluster.local/ns/events/sa/producer", td).as_deref(),
            Some("system:serviceaccount:events:producer")
        );
        for other in [
            "spiffe://cluster.local/ns/events",
            "spiffe://cluster.local/ns/events/sa/",
            "spiffe://cluster.local/ns/events/sa/p/x",
            "https://cluster.local/ns/events/sa/p",
            // Another trust domain names other accounts.
            "spiffe://other.example/ns/events/sa/producer",
            // Not Kubernetes names: `a:b` would read as namespace a.
            "spiffe://cluster.local/ns/a:b/sa/c",
            "spiffe://cluster.local/ns/Events/sa/p",
            "spiffe://cluster.local/ns/events/sa/p:q",
        ] {
            assert_eq!(spiffe_service_account(other, td), None, "{other}");
        }
    }

    #[test]
    fn not_a_certificate() {
        assert_eq!(certificate_identity(b"not DER", DEFAULT_TRUST_DOMAIN), None);
    }
}
