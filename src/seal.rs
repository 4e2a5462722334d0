//! The cluster key (issue 18's `[cluster] secret_key_file`): private keys and the ACME
//! account key leave a node only sealed with it. AES-256-GCM (aws-lc-rs), a random
//! 96-bit nonce per value, and the storage path as associated data, so a sealed value
//! cannot be moved to another key path and read there. Each value names the id of the
//! key that sealed it, so a keyring holding the new and the old key reads both while the
//! cluster key is rotated.
//!
//! Sealed value: `PCS1` | key id (8 bytes) | nonce (12) | ciphertext and tag.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::Digest;

use crate::input::{self, Links};

/// A cluster key is 32 bytes: raw, 64 hex digits or base64 in the key file.
pub const KEY_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"PCS1";
const ID_LEN: usize = 8;
/// Domain separation: these bytes are only ever a Portcullis sealed value's AAD.
const AAD_PREFIX: &[u8] = b"portcullis-seal-v1\0";

/// Why a key could not be loaded or a value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "{}: a cluster key is {KEY_LEN} bytes (raw, 64 hex digits or base64); this file holds {found}",
        path.display()
    )]
    Length { path: PathBuf, found: String },
    #[error("{}: mode {mode:o}; the cluster key must be readable by its owner only (chmod 600)", path.display())]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path}: not a sealed value")]
    NotSealed { path: String },
    #[error("{path}: sealed with cluster key {id}, which this node does not have")]
    UnknownKey { path: String, id: String },
    /// The wrong key with a colliding id, a value moved from another path, or changed bytes.
    #[error("{path}: the sealed value does not authenticate (changed, or moved from another key path)")]
    Tampered { path: String },
}

/// One cluster key.
pub struct ClusterKey {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey").field("id", &self.id()).finish_non_exhaustive()
    }
}

impl ClusterKey {
    /// From the 32 key bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let digest = sha2::Sha256::digest([b"portcullis-key-id\0".as_slice(), bytes].concat());
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&digest[..ID_LEN]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"));
        Self { id, key }
    }

    /// Reads a key file: owner-only mode, then 32 raw bytes, 64 hex digits or base64.
    pub fn load(path: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let io = |error| Error::Io { path: path.to_owned(), error };
        let bytes = input::read(path, input::MAX_PASSWORD, Links::Follow).map_err(io)?;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Mode { path: path.to_owned(), mode });
        }
        Self::parse(&bytes).ok_or_else(|| Error::Length { path: path.to_owned(), found: describe(&bytes) })
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        use base64::Engine;
        if let Ok(raw) = <&[u8; KEY_LEN]>::try_from(bytes) {
            return Some(Self::from_bytes(raw));
        }
        let text = std::str::from_utf8(bytes).ok()?.trim();
        let decoded = match text.len() {
            64 => hex::decode(text).ok()?,
            _ => base64::engine::general_purpose::STANDARD.decode(text).ok()?,
        };
        Some(Self::from_bytes(&<[u8; KEY_LEN]>::try_from(decoded.as_slice()).ok()?))
    }

    /// The key's id as sealed values name it (hex), safe to log and show.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    /// Seals `plaintext` for storage under `path`.
    pub fn seal(&self, path: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source");
        let mut out = Vec::with_capacity(MAGIC.len() + ID_LEN + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(path), &mut body)
            .expect("AES-GCM seals any length we store");
        out.extend_from_slice(&body);
        out
    }
}

fn aad(path: &str) -> Aad<Vec<u8>> {
    Aad::from([AAD_PREFIX, path.as_bytes()].concat())
}

/// What a key file held, for the error (never its bytes).
fn describe(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(t) => format!("{} characters of text", t.trim().len()),
        Err(_) => format!("{} bytes", bytes.len()),
    }
}

/// Whether `bytes` is a sealed value (a Portcullis file never starts with these bytes).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.len() >= MAGIC.len() + ID_LEN + NONCE_LEN + 16 && bytes.starts_with(MAGIC)
}

/// The id of the key that sealed `bytes`.
pub fn key_id_of(bytes: &[u8]) -> Option<String> {
    is_sealed(bytes).then(|| hex::encode(&bytes[MAGIC.len()..MAGIC.len() + ID_LEN]))
}

/// The keys a node can open values with: the current one (which seals) first, then
/// older ones kept while a rotation is under way.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl Keyring {
    pub fn new(current: ClusterKey, older: Vec<ClusterKey>) -> Self {
        let mut keys = vec![current];
        keys.extend(older);
        Self { keys }
    }

    /// The key new values are sealed with.
    pub fn current(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// Whether a key of this ring has the id `id` (hex).
    pub fn has(&self, id: &str) -> bool {
        self.keys.iter().any(|k| k.id() == id)
    }

    /// Opens a value stored under `path`.
    pub fn open(&self, path: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let header = MAGIC.len() + ID_LEN + NONCE_LEN;
        if sealed.len() < header + 16 || &sealed[..MAGIC.len()] != MAGIC {
            return Err(Error::NotSealed { path: path.to_owned() });
        }
        let id = &sealed[MAGIC.len()..MAGIC.len() + ID_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| Error::UnknownKey { path: path.to_owned(), id: hex::encode(id) })?;
        let nonce = <[u8; NONCE_LEN]>::try_from(&sealed[MAGIC.len() + ID_LEN..header]).expect("sliced to NONCE_LEN");
        let mut body = sealed[header..].to_vec();
        let plain = key
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), aad(path), &mut body)
            .map_err(|_| Error::Tampered { path: path.to_owned() })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes(&[b; KEY_LEN])
    }

    #[test]
    fn seals_and_opens_only_at_its_path_with_its_key() {
        let ring = Keyring::new(key(1), Vec::new());
        let secret = b"-----BEGIN PRIVATE KEY-----\nMIG...\n";
        let sealed = ring.current().seal("/portcullis/certs/a/key", secret);
        assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"), "the plaintext shows through");
        assert_eq!(ring.open("/portcullis/certs/a/key", &sealed).unwrap(), secret);
        // Moved to another path: refused.
        assert!(matches!(ring.open("/portcullis/certs/b/key", &sealed), Err(Error::Tampered { .. })));
        // One bit changed anywhere in the body: refused.
        for i in [20, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(ring.open("/portcullis/certs/a/key", &bad).is_err(), "byte {i}");
        }
        // Another cluster's key: named, not guessed.
        let other = Keyring::new(key(2), Vec::new());
        let e = other.open("/portcullis/certs/a/key", &sealed).unwrap_err();
        assert!(e.to_string().contains(&ring.current().id()), "{e}");
        assert!(matches!(ring.open("/p", b"plain text"), Err(Error::NotSealed { .. })));
        // Two seals of one value differ (fresh nonce).
        assert_ne!(sealed, ring.current().seal("/portcullis/certs/a/key", secret));
    }

    #[test]
    fn rotation_reads_old_values_and_seals_with_the_new_key() {
        let old = Keyring::new(key(1), Vec::new());
        let sealed_old = old.current().seal("/x", b"v");
        let rotating = Keyring::new(key(2), vec![key(1)]);
        assert_eq!(rotating.open("/x", &sealed_old).unwrap(), b"v");
        let sealed_new = rotating.current().seal("/x", b"v");
        assert_eq!(&sealed_new[4..12], hex::decode(key(2).id()).unwrap().as_slice());
        assert!(matches!(old.open("/x", &sealed_new), Err(Error::UnknownKey { .. })));
    }

    #[test]
    fn key_files_are_owner_only_and_32_bytes() {
        use base64::Engine;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.key");
        let write = |bytes: &[u8], mode: u32| {
            crate::store::atomic::write_file_at(&path, bytes, mode, true).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let raw = [7u8; KEY_LEN];
        let id = ClusterKey::from_bytes(&raw).id();
        for form in [
            raw.to_vec(),
            hex::encode(raw).into_bytes(),
            format!("{}\n", base64::engine::general_purpose::STANDARD.encode(raw)).into_bytes(),
        ] {
            write(&form, 0o600);
            assert_eq!(ClusterKey::load(&path).unwrap().id(), id);
        }
        write(&raw, 0o644);
        let e = ClusterKey::load(&path).unwrap_err();
        assert!(e.to_string().contains("mode 644"), "{e}");
        write(b"too short\n", 0o600);
        let e = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("cluster.key") && e.contains("9 characters of text") && !e.contains("too short"), "{e}");
    }
}
