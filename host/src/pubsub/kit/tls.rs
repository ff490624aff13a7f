//! TLS to brokers: one rustls client configuration (ring as the crypto provider, the system's
//! trusted roots plus the CA file a backend's config names), shared by every backend that
//! takes a rustls config, and the CA file's PEM for the clients that take certificates.
//!
//! A backend turns TLS on by its URL's scheme or options (`rediss://`, `tls://`, `amqps://`,
//! `mqtts://`, `sslmode=` / `ssl-mode=`), and `ca_file = "PATH"` in its config adds a private
//! CA (self-signed test servers, a company CA) to the roots it trusts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// Makes ring the process's default rustls provider (once; a no-op when one is set), for
/// clients that build their own rustls config from the default (redis, sqlx, lapin).
pub fn install_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have won the race: either way a provider is set.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The certificates of the PEM file `ca_file`; an error names the file when it cannot be
/// read or holds no certificate.
pub fn read_ca(backend: &'static str, ca_file: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let shown = ca_file.display();
    let pem = std::fs::read(ca_file)
        .map_err(|e| Error::pubsub(backend, format!("ca_file {shown}: cannot read it"), e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::pubsub(backend, format!("ca_file {shown}: not PEM"), e))?;
    if certs.is_empty() {
        return Err(Error::pubsub_msg(
            backend,
            format!("ca_file {shown}: no certificate in it (expected PEM `BEGIN CERTIFICATE`)"),
        ));
    }
    Ok(certs)
}

/// The PEM text of `ca_file`, checked to hold at least one certificate, for clients that
/// take the CA as PEM (redis, lapin).
pub fn read_ca_pem(backend: &'static str, ca_file: &Path) -> Result<String> {
    read_ca(backend, ca_file)?;
    std::fs::read_to_string(ca_file).map_err(|e| {
        Error::pubsub(
            backend,
            format!("ca_file {}: not text", ca_file.display()),
            e,
        )
    })
}

/// For the SQL backends: `options` with `ca_file` (checked to hold a certificate) applied by
/// `with_ca`, and, unless `url` names its own mode (`mode_key`, e.g. `sslmode=`), the strictest
/// verification applied by `strictest`.
pub fn with_sql_ca<O>(
    backend: &'static str,
    url: &str,
    ca_file: Option<&PathBuf>,
    mode_key: &str,
    options: O,
    with_ca: impl FnOnce(O, &Path) -> O,
    strictest: impl FnOnce(O) -> O,
) -> Result<O> {
    let Some(ca) = ca_file else {
        return Ok(options);
    };
    read_ca(backend, ca)?;
    let options = with_ca(options, ca);
    Ok(match url.to_ascii_lowercase().contains(mode_key) {
        true => options,
        false => strictest(options),
    })
}

/// A rustls client config trusting the system's roots and the certificates of `ca_file`.
pub fn client_config(
    backend: &'static str,
    ca_file: Option<&PathBuf>,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    // A system store that cannot be read (a minimal container) leaves only the CA file.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca_file {
        for cert in read_ca(backend, ca)? {
            roots
                .add(cert)
                .map_err(|e| Error::pubsub(backend, format!("ca_file {}", ca.display()), e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::pubsub(backend, "TLS protocol versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_is_read_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        assert_eq!(read_ca("redis", &good).unwrap().len(), 1);
        assert!(
            read_ca_pem("redis", &good)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        client_config("redis", Some(&good)).unwrap();

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let err = read_ca("redis", &empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = client_config("nats", Some(&missing))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.pem") && err.contains("cannot read"),
            "{err}"
        );
    }
}
