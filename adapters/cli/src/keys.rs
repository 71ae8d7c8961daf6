//! The node's key file and the peer keys it allows.
//!
//! A key file holds the 32-byte secret key as 64 hex digits and a newline. It is created
//! with mode 0600 and refused if others may read it.

use std::io::Write;
use std::path::{Path, PathBuf};

use chunk_sync_tokio::{Keypair, PublicKey};

use crate::grant::Grant;

/// The key file's name in a store's directory.
pub(crate) const KEY_FILE: &str = "node.key";

/// The key file of the store in `dir`, unless `given`.
pub(crate) fn key_path(dir: &Path, given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| dir.join(KEY_FILE), Path::to_path_buf)
}

/// The key pair in `path`.
pub(crate) fn load(path: &Path) -> Result<Keypair, String> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read key file {shown}: {e}"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "key file {shown} may be read by others (mode {:o}): run chmod 600 {shown}",
                mode & 0o777
            ));
        }
    }
    let text = std::fs::read(path).map_err(|e| format!("cannot read key file {shown}: {e}"))?;
    let secret = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| hex32(t.trim()))
        .ok_or_else(|| format!("key file {shown} is not a chunk-sync key (64 hex digits)"))?;
    Ok(Keypair::from_secret(secret))
}

/// The 32 bytes written as 64 hex digits in `text`.
fn hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4 | digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Writes `keys` to a new file at `path`, mode 0600.
pub(crate) fn save(path: &Path, keys: &Keypair) -> Result<(), String> {
    let shown = path.display();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let hex: String = keys.secret().iter().map(|b| format!("{b:02x}")).collect();
    options
        .open(path)
        .and_then(|mut f| {
            f.write_all(hex.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()
        })
        .map_err(|e| format!("cannot write key file {shown}: {e}"))
}

/// The key pair in `path`, made and saved first if there is none.
pub(crate) fn load_or_create(path: &Path) -> Result<Keypair, String> {
    if path.exists() {
        return load(path);
    }
    let keys = chunk_sync_tokio::generate_keypair()
        .map_err(|e| format!("cannot make a key: the system's random source failed: {e}"))?;
    save(path, &keys)?;
    Ok(keys)
}

/// The grants listed in an allow file: one per line, as `--allow` takes them; `#`
/// starts a comment.
pub(crate) fn read_allow_file(path: &Path) -> Result<Vec<Grant>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read allow file {shown}: {e}"))?;
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let grant = line.split('#').next().unwrap_or("").trim();
            (!grant.is_empty())
                .then(|| crate::grant::parse(grant).map_err(|e| format!("{shown}:{}: {e}", n + 1)))
        })
        .collect()
}

/// A public key (`--trust-origin`, and in grants).
pub(crate) fn parse_key(text: &str) -> Result<PublicKey, String> {
    text.trim()
        .parse()
        .map_err(|_| "a public key is 64 hex digits, as `chunk-sync key` prints".to_owned())
}
