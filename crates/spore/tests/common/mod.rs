//! Helpers the CLI tests share: running the `spore` binary, and processes killed when dropped.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output};

/// The binary under test.
pub(crate) const SPORE: &str = env!("CARGO_BIN_EXE_spore");

/// Runs `spore --data-dir DATA_DIR ARGS…` to completion (without the caller's `SPORE_LOG`).
pub(crate) fn spore(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(SPORE)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("SPORE_LOG")
        .output()
        .expect("run spore")
}

/// A child process (a node, a sharer, a download), killed with SIGKILL when dropped.
pub(crate) struct NodeProcess(pub(crate) Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why a root-only test (network namespaces) cannot run here, if it cannot: not root, or one
/// of `programs` (besides `ip`) is missing.
pub(crate) fn skip_reason(programs: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("needs root (network namespaces)".into());
    }
    for program in ["ip"].iter().chain(programs) {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
        });
        if !found {
            return Some(format!("`{program}` is not installed"));
        }
    }
    None
}

pub(crate) fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn ip(args: &[&str]) -> Result<Output, String> {
    run(Command::new("ip").args(args))
}
