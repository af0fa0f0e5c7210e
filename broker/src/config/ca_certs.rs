//! `CACerts` of a destination (Knative's `duckv1.Destination`, transport encryption):
//! PEM CA certificates that HTTPS calls to that destination trust besides the
//! system's roots (and the dispatcher's `--ca-bundle`).
//!
//! The text is validated once, when the config is loaded: it must hold at least one
//! `CERTIFICATE` block, and each must be an X.509 certificate rustls accepts as a
//! trust anchor; anything else is a config error naming the field. Other PEM blocks
//! (a key pasted along) are ignored, and an empty value counts as none. The
//! certificates are kept decoded, with a hash of them that the dispatcher keys its
//! HTTPS clients by: destinations with the same certificates share one client.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::Ctx;

/// Validated CA certificates (DER), compared and hashed by their bytes.
#[derive(Clone)]
pub struct CaCerts {
    certs: Arc<[CertificateDer<'static>]>,
    hash: u64,
}

impl CaCerts {
    /// Parses PEM text: at least one certificate, each a valid trust anchor.
    pub fn parse(pem: &str) -> Result<CaCerts, String> {
        let mut certs = Vec::new();
        for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let der = item.map_err(|e| format!("not valid PEM: {e}"))?;
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| {
                    format!(
                        "certificate {} is not a valid X.509 certificate: {e}",
                        certs.len() + 1
                    )
                })?;
            certs.push(der);
        }
        if certs.is_empty() {
            return Err("no PEM certificate (a -----BEGIN CERTIFICATE----- block)".to_owned());
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for c in &certs {
            c.as_ref().hash(&mut h);
        }
        Ok(CaCerts {
            certs: certs.into(),
            hash: h.finish(),
        })
    }

    /// The certificates, DER-encoded.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// A hash of the certificates (equal certificates, equal hash).
    pub fn hash_value(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for CaCerts {
    fn eq(&self, other: &CaCerts) -> bool {
        self.hash == other.hash && self.certs == other.certs
    }
}

impl Eq for CaCerts {}

impl Hash for CaCerts {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaCerts({} certificate(s), {:016x})",
            self.certs.len(),
            self.hash
        )
    }
}

/// Parses a destination's `CACerts` (`field` names it in errors); `None` when
/// absent or empty, or when invalid (reported).
pub(super) fn parse_field(pem: Option<&str>, field: &str, ctx: &mut Ctx<'_>) -> Option<CaCerts> {
    let pem = pem.filter(|p| !p.trim().is_empty())?;
    CaCerts::parse(pem)
        .map_err(|reason| ctx.err(field, reason))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{parse_sources, ConfigErrors, LoadOptions};
    use super::*;

    /// A self-signed CA (openssl, P-256, valid until 2126), shared with the
    /// other crates' tests.
    const CA: &str = include_str!("../../../tests/fixtures/test-ca.pem");

    fn indent(pem: &str, by: usize) -> String {
        pem.lines().map(|l| format!("{:by$}{l}\n", "")).collect()
    }

    /// A broker (its delivery's sink with `broker_ca`) and a trigger (its
    /// subscriber with `sub_ca`, its own sink with `sink_ca`, if given).
    fn config(broker_ca: Option<&str>, sub_ca: Option<&str>, sink_ca: Option<&str>) -> String {
        let ca = |pem: Option<&str>, by: usize| match pem {
            Some(p) => format!("{:w$}CACerts: |\n{}", "", indent(p, by + 2), w = by),
            None => String::new(),
        };
        let mut y = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: b}}\nspec:
  delivery:\n    deadLetterSink:\n      uri: https://dls.example/\n{}---
apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\nspec:
  broker: b\n  subscriber:\n    uri: https://sub.example/\n{}",
            ca(broker_ca, 6),
            ca(sub_ca, 4)
        );
        if sink_ca.is_some() {
            y.push_str(&format!(
                "  delivery:\n    deadLetterSink:\n      uri: https://own-dls.example/\n{}",
                ca(sink_ca, 6)
            ));
        }
        y
    }

    fn parse(text: &str) -> Result<super::super::Config, ConfigErrors> {
        parse_sources(&[(Path::new("t.yaml"), text)], &LoadOptions::default())
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect()
            }
        }
    }

    #[test]
    fn ca_certs_of_subscribers_and_sinks_are_parsed() {
        let c = parse(&config(Some(CA), Some(CA), None)).expect("valid");
        let b = &c.brokers[0];
        let t = &b.triggers[0];
        let want = CaCerts::parse(CA).expect("ca");
        assert_eq!(want.certificates().len(), 1);
        assert_eq!(t.subscriber_ca_certs.as_ref(), Some(&want));
        // The trigger has no delivery: the broker's, its sink's CACerts included.
        assert_eq!(t.delivery.dead_letter_sink_ca_certs.as_ref(), Some(&want));
        assert_eq!(b.delivery.dead_letter_sink_ca_certs.as_ref(), Some(&want));

        let c = parse(&config(None, None, Some(CA))).expect("valid");
        let t = &c.brokers[0].triggers[0];
        assert_eq!(t.subscriber_ca_certs, None);
        assert_eq!(t.delivery.dead_letter_sink_ca_certs.as_ref(), Some(&want));
        assert_eq!(c.brokers[0].delivery.dead_letter_sink_ca_certs, None);

        // Empty is none; the same certificates in other PEM formatting are equal.
        let c = parse(&config(None, Some("\n"), None)).expect("valid");
        assert_eq!(c.brokers[0].triggers[0].subscriber_ca_certs, None);
        let spaced = format!("# our CA\n{}\n\n", CA.replace('\n', "\r\n"));
        assert_eq!(CaCerts::parse(&spaced).expect("spaced"), want);
    }

    #[test]
    fn invalid_ca_certs_are_config_errors_naming_the_field() {
        assert_eq!(
            errors(&config(None, Some("not a certificate"), None)),
            ["spec.subscriber.CACerts: no PEM certificate (a -----BEGIN CERTIFICATE----- block)"]
        );
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = errors(&config(None, None, Some(bad_base64)));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("spec.delivery.deadLetterSink.CACerts: not valid PEM"),
            "{e:?}"
        );
        // Valid PEM, but not a certificate inside.
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        let e = errors(&config(Some(not_x509), None, None));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "spec.delivery.deadLetterSink.CACerts: certificate 1 is not a valid X.509"
            ),
            "{e:?}"
        );
        // A key alone is no certificate.
        let key = "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n";
        assert!(CaCerts::parse(key)
            .expect_err("a key")
            .starts_with("no PEM certificate"));
    }

    /// A reload tells a trigger whose CA certificates changed (its subscriber's,
    /// or its broker's sink's) from an unchanged one.
    #[test]
    fn changed_ca_certs_change_the_trigger() {
        let other = CA.replace("K/kmaUEbg3LS", "K/kmaUEbg3LT");
        let trigger = |text: &str| parse(text).expect("valid").brokers[0].triggers[0].clone();
        let base = trigger(&config(Some(CA), None, None));
        assert!(base.same_as(&trigger(&config(Some(CA), None, None))));
        assert!(!base.same_as(&trigger(&config(Some(&other), None, None))));
        assert!(!base.same_as(&trigger(&config(None, None, None))));
        assert!(!base.same_as(&trigger(&config(Some(CA), Some(CA), None))));
    }
}
