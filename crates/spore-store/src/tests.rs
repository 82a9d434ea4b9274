use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use spore_core::pow::{Difficulty, Stamp};

use super::*;

const D: Difficulty = Difficulty(6);

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn data_dir() -> (tempfile::TempDir, DataDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::open(tmp.path().join("a/b/spore")).unwrap();
    (tmp, dir)
}

#[test]
fn open_creates_private_directory() {
    let (_tmp, dir) = data_dir();
    assert!(dir.path().is_dir());
    assert_eq!(mode(dir.path()), 0o700);
    // Opening again is fine.
    DataDir::open(dir.path()).unwrap();
}

#[test]
fn open_refuses_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let err = DataDir::open(&file).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn create_then_reload_gives_same_identity() {
    let (_tmp, dir) = data_dir();
    let first = dir.load_or_create_identity(D).unwrap();
    assert!(first.created);
    assert!(first.stamp_minted);
    first.stamp.verify(&first.keypair.peer_id(), D).unwrap();

    let again = dir.load_or_create_identity(D).unwrap();
    assert!(!again.created);
    assert!(!again.stamp_minted, "the cached stamp is reused");
    assert_eq!(again.keypair.peer_id(), first.keypair.peer_id());
    assert_eq!(again.stamp, first.stamp);

    let loaded = dir.load_identity(D).unwrap();
    assert_eq!(loaded.keypair.peer_id(), first.keypair.peer_id());
    let key = dir.read_keypair().unwrap().unwrap();
    assert_eq!(key.peer_id(), first.keypair.peer_id());

    // A different data dir is a different node.
    let (_tmp2, other) = data_dir();
    let other = other.load_or_create_identity(D).unwrap();
    assert_ne!(other.keypair.peer_id(), first.keypair.peer_id());
}

#[test]
fn key_file_format_and_mode() {
    let (_tmp, dir) = data_dir();
    let id = dir.load_or_create_identity(D).unwrap();
    let path = dir.identity_key_path();
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(KEY_FILE_HEADER));
    assert_eq!(
        lines.next(),
        Some(fsutil::hex_encode(&id.keypair.secret_bytes()).as_str())
    );
    assert_eq!(lines.next(), None);
    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
}

#[test]
fn load_identity_without_key_fails_clearly() {
    let (_tmp, dir) = data_dir();
    assert!(dir.read_keypair().unwrap().is_none());
    let err = dir.load_identity(D).unwrap_err();
    assert!(matches!(err, StoreError::NoIdentity { .. }), "{err}");
    assert!(err.to_string().contains("identity.key"), "{err}");
    assert!(!dir.identity_key_path().exists(), "nothing was created");
}

#[test]
fn world_readable_key_is_refused_with_the_fix() {
    let (_tmp, dir) = data_dir();
    dir.load_or_create_identity(D).unwrap();
    let path = dir.identity_key_path();
    chmod(&path, 0o644);
    let err = dir.load_or_create_identity(D).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::InsecurePermissions { mode: 0o644, .. }),
        "{msg}"
    );
    assert!(msg.contains("readable by other users"), "{msg}");
    assert!(msg.contains("mode 0644"), "{msg}");
    assert!(
        msg.contains(&format!("chmod 600 {}", path.display())),
        "{msg}"
    );
    assert!(dir.load_identity(D).is_err());
    assert!(dir.read_keypair().is_err());

    // Group-writable only is refused too; the fix works.
    chmod(&path, 0o620);
    let msg = dir.load_identity(D).unwrap_err().to_string();
    assert!(
        msg.contains("accessible to other users") && msg.contains("chmod 600"),
        "{msg}"
    );
    chmod(&path, 0o600);
    dir.load_identity(D).unwrap();
    // A stricter mode is fine.
    chmod(&path, 0o400);
    dir.load_identity(D).unwrap();
}

#[test]
fn chmod_suggestion_quotes_odd_paths() {
    assert_eq!(error::shell_quote(Path::new("/a/b.key")), "/a/b.key");
    assert_eq!(error::shell_quote(Path::new("/my dir/k")), "'/my dir/k'");
    assert_eq!(error::shell_quote(Path::new("/it's")), r"'/it'\''s'");
}

fn corrupt_message(contents: &[u8]) -> String {
    let (_tmp, dir) = data_dir();
    let path = dir.identity_key_path();
    fs::write(&path, contents).unwrap();
    chmod(&path, 0o600);
    let err = dir.load_or_create_identity(D).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("identity key {} is corrupt: ", path.display())),
        "{msg}"
    );
    // Nothing was overwritten.
    assert_eq!(fs::read(&path).unwrap(), contents);
    msg
}

#[test]
fn corrupt_key_files_give_clear_errors() {
    let good = "ab".repeat(32);
    let msg = corrupt_message(b"");
    assert!(msg.contains("empty"), "{msg}");
    let msg = corrupt_message(b"\xff\xfe garbage");
    assert!(msg.contains("not text"), "{msg}");
    let msg = corrupt_message(format!("{good}\n").as_bytes());
    assert!(msg.contains("expected \"spore-identity-key-v1\""), "{msg}");
    let msg = corrupt_message(format!("{KEY_FILE_HEADER}\n").as_bytes());
    assert!(msg.contains("missing"), "{msg}");
    let msg = corrupt_message(format!("{KEY_FILE_HEADER}\nabcd\n").as_bytes());
    assert!(msg.contains("expected 64 hex digits, found 4"), "{msg}");
    let bad_hex = format!("{}zz", "ab".repeat(31));
    let msg = corrupt_message(format!("{KEY_FILE_HEADER}\n{bad_hex}\n").as_bytes());
    assert!(msg.contains("'z' at position 62"), "{msg}");
    let msg = corrupt_message(format!("{KEY_FILE_HEADER}\n{good}\nmore\n").as_bytes());
    assert!(msg.contains("after the secret key"), "{msg}");
    let msg = corrupt_message(&[b'a'; 5000]);
    assert!(msg.contains("5000 bytes"), "{msg}");
}

#[test]
fn hand_written_key_file_is_accepted() {
    let (_tmp, dir) = data_dir();
    let path = dir.identity_key_path();
    let secret = [7u8; 32];
    let text = format!(
        "\n{KEY_FILE_HEADER}\r\n  {}  \n\n",
        fsutil::hex_encode(&secret).to_uppercase()
    );
    fs::write(&path, text).unwrap();
    chmod(&path, 0o600);
    let id = dir.load_identity(D).unwrap();
    assert_eq!(
        id.keypair.peer_id(),
        spore_core::Keypair::from_secret_bytes(secret).peer_id()
    );
}

fn stamp_nonce(dir: &DataDir) -> u64 {
    let text = fs::read_to_string(dir.identity_stamp_path()).unwrap();
    let line = text.lines().find(|l| l.starts_with("nonce")).unwrap();
    line.split('=').nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn tampered_stamp_is_recomputed() {
    let (_tmp, dir) = data_dir();
    let first = dir.load_or_create_identity(D).unwrap();
    let id = first.keypair.peer_id();
    let path = dir.identity_stamp_path();
    assert_eq!(stamp_nonce(&dir), first.stamp.nonce);

    // A nonce that does not meet the difficulty.
    let bad = (0..)
        .find(|n| Stamp { nonce: *n }.verify(&id, D).is_err())
        .unwrap();
    let text = fs::read_to_string(&path).unwrap().replace(
        &format!("nonce = {}", first.stamp.nonce),
        &format!("nonce = {bad}"),
    );
    fs::write(&path, text).unwrap();
    let again = dir.load_identity(D).unwrap();
    assert!(again.stamp_minted);
    again.stamp.verify(&id, D).unwrap();
    assert_eq!(stamp_nonce(&dir), again.stamp.nonce, "cache rewritten");

    // Garbage, or a stamp for another key, is recomputed too.
    fs::write(&path, "not toml at all [").unwrap();
    assert!(dir.load_identity(D).unwrap().stamp_minted);
    let other = spore_core::Keypair::from_secret_bytes([1; 32]).peer_id();
    let foreign = format!(
        "peer_id = \"{other}\"\ndifficulty = {}\nnonce = {}\n",
        D.0,
        Stamp::mint(&other, D).nonce
    );
    fs::write(&path, foreign).unwrap();
    let fixed = dir.load_identity(D).unwrap();
    assert!(fixed.stamp_minted);
    fixed.stamp.verify(&id, D).unwrap();

    // A missing cache is recomputed.
    fs::remove_file(&path).unwrap();
    assert!(dir.load_identity(D).unwrap().stamp_minted);
    assert!(path.exists());
}

#[test]
fn stamp_below_requested_difficulty_is_reminted() {
    let high = Difficulty(10);
    // One key in 256 has a difficulty-2 stamp that already meets difficulty 10, which would
    // leave nothing to remint: take a key whose cheap stamp falls short.
    let (_tmp, dir, id) = loop {
        let (tmp, dir) = data_dir();
        let low = dir.load_or_create_identity(Difficulty(2)).unwrap();
        let id = low.keypair.peer_id();
        if low.stamp.verify(&id, high).is_err() {
            break (tmp, dir, id);
        }
    };
    let strong = dir.load_identity(high).unwrap();
    assert!(strong.stamp_minted);
    strong.stamp.verify(&id, high).unwrap();
    // The stronger stamp serves the lower difficulty too, without new work.
    let reuse = dir.load_identity(Difficulty(2)).unwrap();
    assert!(!reuse.stamp_minted);
    assert_eq!(reuse.stamp, strong.stamp);
}

#[test]
fn concurrent_creation_agrees_on_one_identity() {
    let (_tmp, dir) = data_dir();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let id = dir.load_or_create_identity(D).unwrap();
                (id.keypair.peer_id(), id.created, dir.api_token().unwrap())
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        results
            .iter()
            .all(|r| r.0 == results[0].0 && r.2 == results[0].2)
    );
    assert_eq!(
        results.iter().filter(|r| r.1).count(),
        1,
        "exactly one creator"
    );
}

#[test]
fn api_token_is_stable_and_private() {
    let (_tmp, dir) = data_dir();
    let token = dir.api_token().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(dir.api_token().unwrap(), token);
    assert_eq!(mode(&dir.api_token_path()), 0o600);

    let (_tmp2, other) = data_dir();
    assert_ne!(other.api_token().unwrap(), token);

    chmod(&dir.api_token_path(), 0o644);
    let msg = dir.api_token().unwrap_err().to_string();
    assert!(
        msg.contains("API token") && msg.contains("chmod 600"),
        "{msg}"
    );

    chmod(&dir.api_token_path(), 0o600);
    fs::write(dir.api_token_path(), "short\n").unwrap();
    let msg = dir.api_token().unwrap_err().to_string();
    assert!(
        msg.contains("is corrupt") && msg.contains("64 hex digits"),
        "{msg}"
    );
}

#[test]
fn api_addr_round_trip() {
    let (_tmp, dir) = data_dir();
    assert_eq!(dir.read_api_addr().unwrap(), None);
    let addr = "127.0.0.1:7272".parse().unwrap();
    dir.write_api_addr(addr).unwrap();
    assert_eq!(dir.read_api_addr().unwrap(), Some(addr));
    let addr2 = "127.0.0.1:9000".parse().unwrap();
    dir.write_api_addr(addr2).unwrap();
    assert_eq!(dir.read_api_addr().unwrap(), Some(addr2));
    dir.remove_api_addr().unwrap();
    assert_eq!(dir.read_api_addr().unwrap(), None);
    dir.remove_api_addr().unwrap();

    fs::write(dir.api_addr_path(), "localhost\n").unwrap();
    let msg = dir.read_api_addr().unwrap_err().to_string();
    assert!(msg.contains("api.addr is corrupt"), "{msg}");
}

#[test]
fn hex_helpers() {
    assert_eq!(fsutil::hex_encode(&[0, 0xab, 0xff]), "00abff");
    assert_eq!(fsutil::hex_decode::<3>("00ABff"), Ok([0, 0xab, 0xff]));
    assert!(fsutil::hex_decode::<3>("00abf").is_err());
    assert!(fsutil::hex_decode::<2>("é0ab").is_err());
}
