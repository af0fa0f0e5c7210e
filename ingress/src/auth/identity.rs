//! The sender identity of a verified client certificate (mTLS), for EventPolicies
//! and the default authorization mode.
//!
//! A SPIFFE ID of the Kubernetes shape (`spiffe://<trust domain>/ns/<namespace>/sa/<name>`,
//! as Istio and SPIRE issue them) becomes the service account's subject
//! `system:serviceaccount:<namespace>:<name>`, so one policy can admit a sender
//! whichever way it proves itself; otherwise the first URI SAN, else the subject's
//! common name, else the first DNS SAN.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity of a DER certificate, or `None` when it names nothing usable.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
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
    if let Some(sa) = uris.iter().find_map(|u| spiffe_service_account(u)) {
        return Some(sa);
    }
    if let Some(u) = uris.first() {
        return Some((*u).to_owned());
    }
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    dns.first().map(|d| (*d).to_owned())
}

/// `spiffe://td/ns/N/sa/S` → `system:serviceaccount:N:S`.
fn spiffe_service_account(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (_trust_domain, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
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
        assert_eq!(
            spiffe_service_account("spiffe://cluster.local/ns/events/sa/producer").as_deref(),
            Some("system:serviceaccount:events:producer")
        );
        for other in [
            "spiffe://cluster.local/ns/events",
            "spiffe://cluster.local/ns/events/sa/",
            "spiffe://cluster.local/ns/events/sa/p/x",
            "https://cluster.local/ns/events/sa/p",
        ] {
            assert_eq!(spiffe_service_account(other), None, "{other}");
        }
    }

    #[test]
    fn not_a_certificate() {
        assert_eq!(certificate_identity(b"not DER"), None);
    }
}
