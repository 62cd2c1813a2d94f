//! The optional TLS listener's settings: a PEM certificate chain and private
//! key, loaded once at startup into a rustls server configuration.
//!
//! Why check everything here rather than at the first handshake: a typo in
//! a path, a key that belongs to another certificate or an unreadable file
//! must stop `wattson serve` with a message naming the file, not show up
//! later as meters that silently fail to connect.
//!
//! rustls runs on the `ring` provider, chosen explicitly (not the process
//! default) so that no other crate's feature choice can change it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

use crate::{Error, Result};

/// Where the TLS listener listens, and the files it presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Default port 8883 (`docs/ingest.md`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// PEM file with the certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM file with the matching private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Reads and checks the certificate chain and key, and builds the acceptor.
pub fn load_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor> {
    let (cert_path, key_path) = (settings.cert.as_path(), settings.key.as_path());
    let cert_pem = read(cert_path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(cert_path, &format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(
            cert_path,
            "holds no `BEGIN CERTIFICATE` block; give the PEM certificate chain, the server's certificate first",
        ));
    }
    let key_pem = read(key_path, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => tls_error(
            key_path,
            "holds no private key block (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)",
        ),
        other => tls_error(key_path, &format!("not a PEM private key file: {other}")),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => Error::Tls(format!(
                "the private key {} does not belong to the certificate {}; give the key the certificate was issued for",
                key_path.display(),
                cert_path.display()
            )),
            other => Error::Tls(format!(
                "cannot use the certificate {} with the key {}: {other}",
                cert_path.display(),
                key_path.display()
            )),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    if path.as_os_str().is_empty() {
        return Err(Error::Tls(format!(
            "no TLS {what} file given; set both `cert` and `key` in [mqtt.tls]"
        )));
    }
    std::fs::read(path).map_err(|e| {
        Error::Tls(format!(
            "cannot read the TLS {what} {}: {e}",
            path.display()
        ))
    })
}

fn tls_error(path: &Path, why: &str) -> Error {
    Error::Tls(format!("TLS file {} {why}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, cert: &str, key: &str) -> TlsSettings {
        TlsSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
        .with_files(cert, key)
    }

    impl TlsSettings {
        fn with_files(self, cert: &str, key: &str) -> TlsSettings {
            std::fs::write(&self.cert, cert).unwrap();
            std::fs::write(&self.key, key).unwrap();
            self
        }
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn message(r: Result<TlsAcceptor>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_matching_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        load_acceptor(&settings(dir.path(), &cert, &key)).unwrap();
    }

    #[test]
    fn missing_empty_and_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();

        let mut s = settings(dir.path(), &cert, &key);
        s.cert = dir.path().join("nope.pem");
        let m = message(load_acceptor(&s));
        assert!(
            m.contains("cannot read the TLS certificate") && m.contains("nope.pem"),
            "{m}"
        );

        s.cert = PathBuf::new();
        let m = message(load_acceptor(&s));
        assert!(m.contains("set both `cert` and `key`"), "{m}");

        let m = message(load_acceptor(&settings(dir.path(), "hello", &key)));
        assert!(
            m.contains("cert.pem") && m.contains("no `BEGIN CERTIFICATE`"),
            "{m}"
        );

        let m = message(load_acceptor(&settings(dir.path(), &cert, &cert)));
        assert!(m.contains("key.pem") && m.contains("no private key"), "{m}");

        let m = message(load_acceptor(&settings(dir.path(), &cert, &other_key)));
        assert!(m.contains("does not belong to the certificate"), "{m}");
    }
}
