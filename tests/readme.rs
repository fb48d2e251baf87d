//! README.md stays true: its fast samples are what the binary prints now
//! (`scripts/readme-samples --check`), and it cites no file the repository
//! does not have.

use std::process::Command;

#[test]
fn the_fast_samples_are_what_the_binary_prints() {
    let out = Command::new("python3")
        .arg("scripts/readme-samples")
        .arg("--check")
        .env("ALEXNET", env!("CARGO_BIN_EXE_alexnet"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_file_the_readme_names_exists() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    for name in ["SPEC.md", "DESIGN.md"] {
        assert!(!readme.contains(name), "README.md cites {name}");
    }
    for doc in [
        "docs/network.md",
        "docs/fashion-run.txt",
        "docs/demo-curves.png",
    ] {
        assert!(readme.contains(doc), "README.md does not name {doc}");
        assert!(std::path::Path::new(doc).exists(), "{doc} is missing");
    }
}
