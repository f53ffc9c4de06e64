//! A node's identity: an ed25519 key pair kept in the data dir, and the node id
//! derived from its public key.
//!
//! The key file (`node.key`, mode 0600) holds one line: `tessera-ed25519-v1 ` and
//! the 32-byte secret seed in hex. It is made on first start (written to a temp
//! file with mode 0600 from the start, fsynced, renamed, directory fsynced), so a
//! crash never leaves a half-written key. A key file that is missing later, is
//! unreadable, malformed, or readable by others is an error that says what to do;
//! it is never replaced silently, because a new key is a new node id.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

/// The key file's name inside the data dir.
pub const KEY_FILE: &str = "node.key";
const KEY_MAGIC: &str = "tessera-ed25519-v1";

/// A node id: the node's ed25519 public key. Shown as 64 hex digits.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Checks `signature` over `message` against this id's public key.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadPublicKey)?;
        key.verify(message, &ed25519_dalek::Signature::from_bytes(signature))
            .map_err(|_| IdentityError::BadSignature)
    }

    /// Seals `plain` to this node (libsodium's `crypto_box_seal`: an
    /// ephemeral X25519 key, XSalsa20-Poly1305), to the X25519 form of its
    /// ed25519 key: only the node's own key opens it ([`NodeKey::unseal`]).
    /// 48 bytes longer than `plain`.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadPublicKey)?;
        let public = crypto_box::PublicKey::from(key.to_montgomery().to_bytes());
        public
            .seal(&mut crypto_box::aead::OsRng, plain)
            .map_err(|_| IdentityError::BadPublicKey)
    }

    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(NodeId(unhex32(s).ok_or(IdentityError::BadNodeId)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {action} node key {}: {source}; {hint}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("node key {} is not a tessera key ({why}); restore the original from a backup, or move it away to start as a new node (with a new node id)", path.display())]
    Malformed { path: PathBuf, why: &'static str },
    #[error("node key {} can be read by other users (mode {mode:o}); run: chmod 600 {}", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("not a node id (want 64 hex digits)")]
    BadNodeId,
    #[error("not a valid ed25519 public key")]
    BadPublicKey,
    #[error("signature does not verify")]
    BadSignature,
}

/// The node's key pair.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
    path: PathBuf,
}

impl NodeKey {
    /// Loads `data_dir/node.key`, or makes it if the file does not exist.
    /// Returns the key and whether it was just made.
    pub fn load_or_create(data_dir: &Path) -> Result<(NodeKey, bool), IdentityError> {
        let path = data_dir.join(KEY_FILE);
        match File::open(&path) {
            Ok(file) => Ok((Self::read(file, &path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok((Self::create(data_dir, &path)?, true))
            }
            Err(source) => Err(IdentityError::Io {
                action: "open",
                path,
                source,
                hint: "check the file's owner and permissions (the node's user must read it)",
            }),
        }
    }

    /// Loads an existing key; never makes one (for `tessera keys show`).
    pub fn load(data_dir: &Path) -> Result<NodeKey, IdentityError> {
        let path = data_dir.join(KEY_FILE);
        let file = File::open(&path).map_err(|source| IdentityError::Io {
            action: "open",
            path: path.clone(),
            hint:
                "the node makes its key on first start (tessera run), or pass the right --data-dir",
            source,
        })?;
        Self::read(file, &path)
    }

    fn read(mut file: File, path: &Path) -> Result<NodeKey, IdentityError> {
        let io_err = |action, source| IdentityError::Io {
            action,
            path: path.to_path_buf(),
            source,
            hint: "check the file's owner and permissions (the node's user must read it)",
        };
        let meta = file.metadata().map_err(|e| io_err("stat", e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() > 4096 {
            return Err(IdentityError::Malformed {
                path: path.to_path_buf(),
                why: "too large",
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| io_err("read", e))?;
        let seed = parse_key(&text).map_err(|why| IdentityError::Malformed {
            path: path.to_path_buf(),
            why,
        })?;
        Ok(NodeKey {
            signing: SigningKey::from_bytes(&seed),
            path: path.to_path_buf(),
        })
    }

    fn create(data_dir: &Path, path: &Path) -> Result<NodeKey, IdentityError> {
        let io_err = |action, source| IdentityError::Io {
            action,
            path: path.to_path_buf(),
            source,
            hint: "the data dir must be writable by the node's user",
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io_err("create the directory for", e))?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("create", e))?;
        writeln!(f, "{KEY_MAGIC} {}", hex(&seed)).map_err(|e| io_err("write", e))?;
        f.sync_all().map_err(|e| io_err("sync", e))?;
        drop(f);
        // Never replace a key another process made meanwhile: link, not rename.
        std::fs::hard_link(&tmp, path).map_err(|e| io_err("install", e))?;
        let _ = std::fs::remove_file(&tmp);
        if let Ok(dir) = File::open(data_dir) {
            let _ = dir.sync_all();
        }
        Ok(NodeKey {
            signing: SigningKey::from_bytes(&seed),
            path: path.to_path_buf(),
        })
    }

    /// A key that lives only in memory (tests, tools).
    pub fn ephemeral() -> NodeKey {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        NodeKey {
            signing: SigningKey::from_bytes(&seed),
            path: PathBuf::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        NodeId(self.signing.verifying_key().to_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Opens a box sealed to this node's id ([`NodeId::seal`]); None if it
    /// was sealed to another key or altered.
    pub fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let secret = crypto_box::SecretKey::from(self.signing.to_scalar_bytes());
        secret.unseal(sealed).ok()
    }

    /// The key itself, for protocols that sign with it (the ledger's consensus).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], &'static str> {
    let line = text.trim();
    let (magic, seed) = line.split_once(' ').ok_or("no key line")?;
    if magic != KEY_MAGIC {
        return Err("unknown header");
    }
    unhex32(seed.trim()).ok_or("the seed is not 64 hex digits")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// 128 hex digits to 64 bytes (a signature).
pub(crate) fn unhex64(s: &[u8]) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let a = unhex32(std::str::from_utf8(&s[..64]).ok()?)?;
    let b = unhex32(std::str::from_utf8(&s[64..]).ok()?)?;
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&a);
    out[32..].copy_from_slice(&b);
    Some(out)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_sealed_to_a_node_opens_with_its_key_only() {
        let (a, b) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let (ka, _) = NodeKey::load_or_create(a.path()).expect("key");
        let (kb, _) = NodeKey::load_or_create(b.path()).expect("key");
        let sealed = ka.id().seal(b"API_KEY=s3cr3t").expect("seal");
        assert_eq!(sealed.len(), 14 + 48);
        assert_eq!(ka.unseal(&sealed).as_deref(), Some(&b"API_KEY=s3cr3t"[..]));
        assert_eq!(kb.unseal(&sealed), None, "another node's key");
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert_eq!(ka.unseal(&bad), None, "an altered box");
        assert_eq!(ka.unseal(&sealed[..20]), None, "a short one");
        // Sealed twice, two different boxes (an ephemeral key each).
        assert_ne!(
            ka.id().seal(b"x").expect("seal"),
            ka.id().seal(b"x").expect("seal")
        );
    }

    #[test]
    fn made_once_then_loaded_with_the_same_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, made) = NodeKey::load_or_create(dir.path()).expect("create");
        assert!(made);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, made) = NodeKey::load_or_create(dir.path()).expect("load");
        assert!(!made);
        assert_eq!(a.id(), b.id());
        assert_eq!(NodeKey::load(dir.path()).expect("load").id(), a.id());
        assert!(!dir.path().join("node.key.tmp").exists());
        let id: NodeId = a.id().to_string().parse().expect("parse");
        assert_eq!(id, a.id());
    }

    #[test]
    fn bad_key_files_are_clear_errors_and_are_not_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(KEY_FILE);
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("garbage\n", 0o600);
        let e = NodeKey::load_or_create(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("not a tessera key"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "garbage\n");
        write(&format!("{KEY_MAGIC} {}\n", "ab".repeat(31)), 0o600);
        let e = NodeKey::load_or_create(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        write(&format!("{KEY_MAGIC} {}\n", "ab".repeat(32)), 0o644);
        let e = NodeKey::load_or_create(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Missing key for `keys show`: says how a key comes to exist.
        let empty = tempfile::tempdir().expect("tmp");
        let e = NodeKey::load(empty.path()).err().expect("missing");
        assert!(e.to_string().contains("first start"), "{e}");
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let a = NodeKey::ephemeral();
        let b = NodeKey::ephemeral();
        let sig = a.sign(b"hello");
        assert!(a.id().verify(b"hello", &sig).is_ok());
        assert!(a.id().verify(b"hellO", &sig).is_err());
        assert!(b.id().verify(b"hello", &sig).is_err());
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(a.id().verify(b"hello", &bad).is_err());
    }
}
