//! docker/Dockerfile against the crate: it must copy every folder the build
//! reads (the kernel folder build.rs compiles, every folder src/ embeds),
//! build with the crate's own cargo features, and use the CUDA version the
//! crate's cudarc feature names. There is no Docker engine here: this test is
//! what keeps the image from drifting (with hadolint in scripts/lint-docker).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Sources copied into the build stage: `COPY a b c ./` or `COPY src src`.
fn copied(dockerfile: &str) -> BTreeSet<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.trim_end_matches('/').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level folders that `include_str!`/`include_bytes!` in src/ reach.
fn embedded_folders() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut folders = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for rest in text.split(macro_name).skip(1) {
                let relative = rest.split('"').next().unwrap();
                let target = file.parent().unwrap().join(relative);
                let target = std::fs::canonicalize(&target)
                    .unwrap_or_else(|e| panic!("{}: {relative}: {e}", file.display()));
                let top = target
                    .strip_prefix(std::fs::canonicalize(root()).unwrap())
                    .unwrap();
                folders.insert(
                    top.components()
                        .next()
                        .unwrap()
                        .as_os_str()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    folders
}

#[test]
fn the_image_copies_what_the_crate_builds_from() {
    let dockerfile = read("docker/Dockerfile");
    let copied = copied(&dockerfile);
    let build_rs = read("build.rs");
    let kernel_dir = build_rs
        .split("const KERNEL_DIR: &str = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("build.rs names its KERNEL_DIR");
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "build.rs", "src"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    needed.insert(kernel_dir.to_string());
    needed.extend(embedded_folders());
    let missing: Vec<_> = needed.difference(&copied).collect();
    assert!(
        missing.is_empty(),
        "docker/Dockerfile does not COPY {missing:?} (copies {copied:?})"
    );
    // The kernel folder is copied to the same place, where build.rs looks.
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("COPY {kernel_dir} {kernel_dir}")),
        "COPY {kernel_dir} {kernel_dir} is missing"
    );
}

#[test]
fn the_image_builds_with_the_crates_features_and_cuda_version() {
    let dockerfile = read("docker/Dockerfile");
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let build = dockerfile
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("docker/Dockerfile runs cargo build");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    // The crate's default features, and no others: the image must not build
    // a different crate than `cargo build --release` does.
    let defaults: Vec<String> = manifest
        .get("features")
        .and_then(|f| f.get("default"))
        .and_then(|d| d.as_array())
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    assert!(!build.contains("--no-default-features"), "{build}");
    let asked: Vec<&str> = build
        .split("--features")
        .skip(1)
        .flat_map(|rest| rest.trim_start_matches('=').split_whitespace().next())
        .flat_map(|list| list.split(','))
        .collect();
    for feature in &asked {
        assert!(
            defaults.iter().any(|d| d == feature),
            "the image asks for feature {feature} the crate does not default to"
        );
    }
    // cudarc's `cuda-MMmmm` feature and the base image's CUDA version agree.
    let cudarc = manifest["dependencies"]["cudarc"]["features"]
        .as_array()
        .unwrap();
    let cuda = cudarc
        .iter()
        .filter_map(|f| f.as_str()?.strip_prefix("cuda-"))
        .find(|v| v.chars().all(|c| c.is_ascii_digit()))
        .expect("a cudarc cuda-version feature");
    let (major, minor) = (
        cuda[..cuda.len() - 3].to_string(),
        cuda[cuda.len() - 3..cuda.len() - 1]
            .trim_start_matches('0')
            .to_string(),
    );
    let minor = if minor.is_empty() {
        "0".to_string()
    } else {
        minor
    };
    let image = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG CUDA_VERSION="))
        .expect("ARG CUDA_VERSION=");
    assert!(
        image.starts_with(&format!("{major}.{minor}.")),
        "cudarc is built for CUDA {major}.{minor} (feature cuda-{cuda}), the image is CUDA {image}"
    );
    // The common data-centre GPUs get machine code.
    let archs = dockerfile
        .split("ALEXNET_CUDA_ARCHS=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("ALEXNET_CUDA_ARCHS in the build stage");
    for arch in ["80", "86", "89", "90"] {
        assert!(
            archs.split(',').any(|a| a == arch),
            "sm_{arch} missing from {archs}"
        );
    }
}

#[test]
fn compose_reserves_two_gpus_and_mounts_data_and_runs() {
    let compose = read("docker/compose.yaml");
    for needle in [
        "driver: nvidia",
        "device_ids: [\"0\", \"1\"]",
        "shm_size",
        ":/data/imagenet:ro",
        ":/runs",
        "\"--gpus\", \"0,1\"",
    ] {
        assert!(
            compose.contains(needle),
            "docker/compose.yaml lacks {needle}"
        );
    }
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target"));
}

#[test]
fn the_replicas_compose_reserves_four_gpus_for_two_pairs() {
    let compose = read("docker/compose-replicas.yaml");
    for needle in [
        "driver: nvidia",
        "device_ids: [\"0\", \"1\", \"2\", \"3\"]",
        "shm_size",
        ":/data/imagenet:ro",
        ":/runs",
        "\"--gpus\", \"0,1,2,3\"",
    ] {
        assert!(
            compose.contains(needle),
            "docker/compose-replicas.yaml lacks {needle}"
        );
    }
}
