//! Certificates made by the tests (rcgen): a CA that issues server and client
//! certificates.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// A CA that signs certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A leaf certificate and its key (PEM), and its DER, for these names.
    pub fn issue(&self, cn: &str, names: &[&str], client: bool) -> (String, String, Vec<u8>) {
        self.issue_with_uri(cn, names, None, client)
    }

    /// Like [`Ca::issue`], with a URI SAN (a SPIFFE ID) besides.
    pub fn issue_with_uri(
        &self,
        cn: &str,
        names: &[&str],
        uri: Option<&str>,
        client: bool,
    ) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = uri {
            p.subject_alt_names
                .push(SanType::URI(u.try_into().unwrap()));
        }
        if client {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS server config with a certificate for 127.0.0.1 signed by this CA.
    pub fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let (_, key_pem, der) = self.issue("subscriber", &["127.0.0.1"], false);
        let key = KeyPair::from_pem(&key_pem).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(der)], key)
            .unwrap()
    }
}

/// A reqwest client trusting only `ca`, presenting `identity` (certificate and key
/// PEM) when given.
pub fn https_client(ca: &Ca, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// What a producer that is not ours sends: Python `requests` (installed by
/// `scripts/dev-services`) posts one binary-mode event of type `ty` to `url` over
/// HTTPS, trusting `ca_file`, presenting `cert_file`/`key_file`, with `token` as a
/// bearer token when given (`tests/https_client.py`). The status it got.
pub fn python_post(
    url: &str,
    ca_file: &std::path::Path,
    (cert_file, key_file): (&std::path::Path, &std::path::Path),
    id: &str,
    ty: &str,
    token: Option<&str>,
) -> String {
    let python = std::env::var("TRIGGERFISH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = std::process::Command::new(python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/https_client.py"
    ))
    .arg(url)
    .arg(ca_file)
    .arg(cert_file)
    .arg(key_file)
    .arg(id)
    .env("CE_TYPE", ty);
    if let Some(t) = token {
        cmd.arg(t);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "python requests failed: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
