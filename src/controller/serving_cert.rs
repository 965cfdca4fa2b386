//! The guest authorizer's serving certificate, read from its PEM files and read again when they
//! change: a Secret renewed by cert-manager (or by hand) reaches a mounted volume within a minute,
//! and new connections then get the new certificate without a restart.
//!
//! The files are read at most every `CHECK_EVERY`, on a TLS handshake, and compared with what was
//! loaded (a few kilobytes; modification times can repeat within a clock tick). A pair that does not load — a half-written renewal, a key that does not match
//! the certificate — is reported and the certificate in use is kept; it is tried again at the next
//! check.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// How often, at most, the files are looked at for a change.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The files' contents when last loaded (empty for a file that could not be read).
type Stamp = [Vec<u8>; 2];

/// A certificate resolver that follows its files.
#[derive(Debug)]
pub struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    every: Duration,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
    /// Files that did not load (reported once, tried again when they change again).
    refused: Option<Stamp>,
}

impl ServingCert {
    /// Load the pair now; errors name the flag at fault (`--authorizer-cert`, `--authorizer-key`).
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<CryptoProvider>,
        every: Duration,
    ) -> anyhow::Result<ServingCert> {
        let stamp = stamp(cert, key);
        let loaded = certified_key(cert, key, &provider)?;
        Ok(ServingCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            every,
            state: Mutex::new(Loaded {
                key: Arc::new(loaded),
                stamp,
                checked: Instant::now(),
                refused: None,
            }),
        })
    }

    /// The certificate to serve now, read again first if the files changed since it was loaded.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().ok()?;
        if state.checked.elapsed() >= self.every {
            state.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != state.stamp && state.refused.as_ref() != Some(&now) {
                match certified_key(&self.cert, &self.key, &self.provider) {
                    Ok(loaded) => {
                        info!(cert = %self.cert.display(), "guest authorizer: serving the renewed certificate");
                        state.key = Arc::new(loaded);
                        state.stamp = now;
                    }
                    Err(e) => {
                        warn!(
                            error = format!("{e:#}"),
                            "guest authorizer: the certificate files changed but do not load; still serving the previous certificate"
                        );
                        state.refused = Some(now);
                    }
                }
            }
        }
        Some(state.key.clone())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |p: &Path| std::fs::read(p).unwrap_or_default();
    [of(cert), of(key)]
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "--authorizer-cert {}: not a PEM certificate",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!("--authorizer-cert {}: holds no certificate", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--authorizer-key {}: not a PEM private key", key.display()))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .context("--authorizer-cert and --authorizer-key do not make a usable pair")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, by the openssl command (the test dependencies'
    /// `hack/deps.sh install test` has it).
    fn issue(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-days", "1", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (hack/deps.sh install test)");
        assert!(out.status.success(), "{out:?}");
        (cert, key)
    }

    fn serving(c: &ServingCert) -> Vec<u8> {
        c.current().expect("a certificate").cert[0].to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_renewal_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a_cert, a_key) = issue(dir.path(), "a");
        let (b_cert, b_key) = issue(dir.path(), "b");
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let der = |p: &Path| CertificateDer::from_pem_file(p).expect("pem").to_vec();
        std::fs::copy(&a_cert, &cert).expect("copy");
        std::fs::copy(&a_key, &key).expect("copy");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let c = ServingCert::load(&cert, &key, provider, Duration::ZERO).expect("load");
        assert_eq!(serving(&c), der(&a_cert));

        // Half a renewal: the new certificate with the old key. Not served; the old pair is.
        std::fs::copy(&b_cert, &cert).expect("copy");
        assert_eq!(serving(&c), der(&a_cert), "a mismatched pair is not served");
        // The renewal completes: served from the next handshake on.
        std::fs::copy(&b_key, &key).expect("copy");
        assert_eq!(serving(&c), der(&b_cert));
        // A damaged file: the certificate in use stays.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnope\n").expect("write");
        assert_eq!(serving(&c), der(&b_cert));
    }

    #[test]
    fn the_files_are_looked_at_no_more_often_than_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a_cert, a_key) = issue(dir.path(), "a");
        let (b_cert, b_key) = issue(dir.path(), "b");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(&a_cert, &cert).expect("copy");
        std::fs::copy(&a_key, &key).expect("copy");
        let c = ServingCert::load(&cert, &key, provider, Duration::from_secs(3600)).expect("load");
        let before = serving(&c);
        std::fs::copy(&b_cert, &cert).expect("copy");
        std::fs::copy(&b_key, &key).expect("copy");
        assert_eq!(
            serving(&c),
            before,
            "not looked at again within the interval"
        );
    }
}
