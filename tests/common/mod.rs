//! Helpers the end-to-end tests share: running the binary, scratch folders.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `alexnet` binary with `args`.
pub fn alexnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// A fresh, empty folder for one test, named after it and this process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("alexnet-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}
