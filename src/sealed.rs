//! Sealed boxes for enrollment (libsodium's `crypto_box_seal`: X25519 + XSalsa20-Poly1305 with an
//! ephemeral sender key). A machine generates a key pair and keeps the secret half on its disk;
//! the controller seals the machine's guest token to the public half, so what the API server
//! stores in the EnrollmentRequest's status opens only on that machine.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_box::aead::OsRng;
use crypto_box::aead::rand_core::RngCore as _;
use crypto_box::{PublicKey, SecretKey};
use sha2::{Digest as _, Sha256};

/// A machine's enrollment key pair.
pub struct KeyPair {
    secret: SecretKey,
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        KeyPair {
            secret: SecretKey::generate(&mut OsRng),
        }
    }

    /// The key kept at `path` (base64 of the 32 secret bytes), created with mode 0600 when
    /// missing. The same key on a later enrollment gets the machine its VM back.
    pub fn load_or_create(path: &Path) -> Result<KeyPair, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = STANDARD
                    .decode(text.trim())
                    .map_err(|e| format!("{}: not base64: {e}", path.display()))?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| format!("{}: an enrollment key is 32 bytes", path.display()))?;
                Ok(KeyPair {
                    secret: SecretKey::from(bytes),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate();
                write_private(path, STANDARD.encode(key.secret.to_bytes()).as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// The public half, base64.
    pub fn public(&self) -> String {
        STANDARD.encode(self.secret.public_key().as_bytes())
    }

    /// Open what was sealed to this key.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let bytes = STANDARD
            .decode(sealed.trim())
            .map_err(|e| format!("the sealed answer is not base64: {e}"))?;
        self.secret
            .unseal(&bytes)
            .map_err(|_| "the sealed answer does not open with this machine's key".to_string())
    }
}

/// Parse a public key as a request carries it.
pub fn public_key(b64: &str) -> Result<PublicKey, String> {
    let bytes = STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("publicKey is not base64: {e}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "publicKey must be 32 bytes (an X25519 public key)".to_string())?;
    Ok(PublicKey::from(bytes))
}

/// Seal a message to a public key (base64 in, base64 out).
pub fn seal(public: &str, message: &[u8]) -> Result<String, String> {
    let key = public_key(public)?;
    let sealed = key
        .seal(&mut OsRng, message)
        .map_err(|_| "sealing failed".to_string())?;
    Ok(STANDARD.encode(sealed))
}

/// A public key's fingerprint: the first 32 hex digits of its SHA-256 (what a VM keeps to
/// recognise its machine when it enrolls again).
pub fn fingerprint(public: &str) -> Result<String, String> {
    let key = public_key(public)?;
    let digest = Sha256::digest(key.as_bytes());
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

/// `n` random bytes as hex (names nobody can guess).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write a file only its owner may read, atomically: a temporary file created with mode 0600,
/// written and synced, renamed over the old one, and the directory synced. A crash leaves the
/// old file or the new one, never a torn one.
pub fn write_private(path: &Path, content: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_that_asked_opens_the_answer() {
        let machine = KeyPair::generate();
        let other = KeyPair::generate();
        let sealed = seal(&machine.public(), b"token").expect("sealed");
        assert_eq!(machine.open(&sealed).expect("opens"), b"token");
        assert!(other.open(&sealed).is_err());
        assert!(public_key("c2hvcnQ=").unwrap_err().contains("32 bytes"));
        assert_eq!(fingerprint(&machine.public()).expect("fp").len(), 32);
        assert_ne!(fingerprint(&machine.public()), fingerprint(&other.public()));
    }

    #[test]
    fn a_key_is_kept_private_and_loaded_again() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state/enroll.key");
        let first = KeyPair::load_or_create(&path).expect("created");
        let again = KeyPair::load_or_create(&path).expect("loaded");
        assert_eq!(first.public(), again.public());
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "bm90IGEga2V5").expect("write");
        assert!(KeyPair::load_or_create(&path).is_err());
        assert_eq!(random_hex(16).len(), 32);
    }
}
