//! Certificates for private TLS servers: a CA made for one test, and a server certificate it
//! signed for `localhost` and `127.0.0.1`, written as PEM files. A client that trusts the CA
//! file connects; one that trusts only the system's roots is refused.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The PEM files of one test's CA and server certificate.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate: what a client's `ca_file` names.
    pub ca: PathBuf,
    /// The server's certificate (for `localhost` and `127.0.0.1`), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
}

fn tls_err(what: &str, e: rcgen::Error) -> Error {
    Error::Other(format!("test certificates: {what}: {e}"))
}

impl TestCerts {
    /// Makes a CA and a server certificate and writes them into `dir` (`ca.pem`,
    /// `server.pem`, `server.key`, the key readable by its owner only).
    pub fn write(dir: &Path) -> Result<TestCerts> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| tls_err("CA parameters", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wasmill test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(|e| tls_err("CA key", e))?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)
            .map_err(|e| tls_err("CA certificate", e))?;

        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(|e| tls_err("server parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().map_err(|e| tls_err("server key", e))?;
        let cert = params
            .signed_by(&key, &*ca)
            .map_err(|e| tls_err("server certificate", e))?;

        let certs = TestCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        let write = |path: &Path, text: String| {
            std::fs::write(path, text)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))
        };
        write(&certs.ca, ca.pem())?;
        write(&certs.cert, cert.pem())?;
        write(&certs.key, key.serialize_pem())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod {}", certs.key.display()), e))?;
        Ok(certs)
    }

    /// Gives the files to `uid`:`gid` (a server that runs as another user must read its key).
    pub fn chown(&self, uid: u32, gid: u32) -> Result<()> {
        for path in [&self.ca, &self.cert, &self.key] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// The command-line arguments that make server `kind` serve TLS with `certs` on its port
/// (Mosquitto's go in its config file: [`mosquitto_lines`]).
pub fn server_args(kind: super::Kind, certs: &TestCerts) -> Vec<String> {
    let (ca, cert, key) = (
        certs.ca.display().to_string(),
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
    );
    match kind {
        super::Kind::Redis => vec![
            "--tls-cert-file".into(),
            cert,
            "--tls-key-file".into(),
            key,
            "--tls-ca-cert-file".into(),
            ca,
            "--tls-auth-clients".into(),
            "no".into(),
        ],
        super::Kind::Nats => vec![
            "--tls".into(),
            "--tlscert".into(),
            cert,
            "--tlskey".into(),
            key,
        ],
        // Their TLS settings go in their config files.
        super::Kind::Mosquitto | super::Kind::Rabbitmq => Vec::new(),
        super::Kind::Postgres => vec![
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={cert}"),
            "-c".into(),
            format!("ssl_key_file={key}"),
        ],
        super::Kind::Mariadb => vec![
            format!("--ssl-cert={cert}"),
            format!("--ssl-key={key}"),
            format!("--ssl-ca={ca}"),
        ],
    }
}

/// The lines of `mosquitto.conf` that put its listener on TLS.
pub fn mosquitto_lines(certs: &TestCerts) -> String {
    format!(
        "certfile {}\nkeyfile {}\n",
        certs.cert.display(),
        certs.key.display()
    )
}

/// The lines of `rabbitmq.conf` that put its only listener on TLS on `port`.
pub fn rabbitmq_tls_lines(port: u16, certs: &TestCerts) -> String {
    format!(
        "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
         ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
        certs.ca.display(),
        certs.cert.display(),
        certs.key.display()
    )
}
