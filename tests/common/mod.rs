//! Helpers the end-to-end tests share: running the binary, scratch folders,
//! reading what a run wrote. Not every test file uses every helper.

use alexnet::net::params::TwinTensor;
use alexnet::train::checkpoint;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `alexnet` binary with `args`.
pub fn alexnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// The standard output of a run that must have succeeded; its standard
/// error in the failure's message where it did not.
#[allow(dead_code)]
pub fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The newest complete checkpoint of the run in `run_dir`.
#[allow(dead_code)]
pub fn newest(run_dir: &Path) -> checkpoint::Checkpoint {
    checkpoint::load(run_dir).expect("a readable checkpoint").1
}

/// Each tensor's name and the bits of its values, to compare runs exactly.
#[allow(dead_code)]
pub fn bits(tensors: &[TwinTensor]) -> Vec<(String, Vec<u32>)> {
    tensors
        .iter()
        .map(|t| (t.name.clone(), t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// A fresh, empty folder for one test, named after it and this process,
/// under `alexnet-tests/` in the temporary folder. The first call of a
/// process removes the folders of test processes that have ended, so a
/// failed run's files stay for a look until the next run, and no more pile
/// up than one run makes.
pub fn scratch(name: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    let root = std::env::temp_dir().join("alexnet-tests");
    SWEEP.call_once(|| remove_ended(&root));
    let dir = root.join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// Removes the folders under `root` whose process (the number before the
/// first `-`) no longer runs. Only where `/proc` says which processes run.
fn remove_ended(root: &std::path::Path) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_string_lossy().split('-').next().map(str::to_owned);
        let ended = pid
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .is_some_and(|p| !std::path::Path::new("/proc").join(p).exists());
        if ended {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
