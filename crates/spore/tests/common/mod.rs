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
