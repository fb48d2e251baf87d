//! The NCCL link. A two-tower step over NCCL against the host link needs two
//! GPUs; NCCL's init and error paths need one. A test that cannot run here
//! is reported as ignored (libtest-mimic's harness), saying why;
//! `ALEXNET_REQUIRE_GPU=1` (scripts/gpu-check) makes a missing GPU or NCCL
//! a failure for the one-GPU test.

use alexnet::device::SgdStep;
use alexnet::device::cuda::{CudaDevice, CudaOptions, probe};
use alexnet::link::nccl::{self, NcclLink};
use alexnet::net::init::init_twin;
use alexnet::net::plan::Plan;
use alexnet::net::spec::InitScheme;
use alexnet::placement::Placement;
use alexnet::rng::Rng;
use alexnet::tower::ParamSet;
use alexnet::towers::{Batch, TowerPair};
use alexnet::watch::Watch;
use libtest_mimic::{Arguments, Trial};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use update::{assert_loss_close, assert_updates_close};

mod update;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let trials = vec![
        Trial::test(
            "the_version_is_the_loaded_librarys_or_its_absence_is_a_clear_error",
            || {
                the_version_is_the_loaded_librarys_or_its_absence_is_a_clear_error();
                Ok(())
            },
        ),
        needing(
            "one_rank_joins_and_a_bad_rank_is_a_clear_error",
            1,
            true,
            one_rank_joins_and_a_bad_rank_is_a_clear_error,
        ),
        needing(
            "two_towers_over_nccl_match_the_host_link",
            2,
            false,
            two_towers_over_nccl_match_the_host_link,
        ),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}

/// `test`, which needs `gpus` GPUs and NCCL: ignored, saying why, where
/// they are missing, or failed instead where it is `required` and
/// `ALEXNET_REQUIRE_GPU` is set.
fn needing(name: &'static str, gpus: usize, required: bool, test: fn()) -> Trial {
    let run = move || {
        test();
        Ok(())
    };
    match available(gpus) {
        Ok(()) => Trial::test(name, run),
        Err(why) if required && std::env::var("ALEXNET_REQUIRE_GPU").is_ok() => {
            Trial::test(name, move || {
                Err(format!("ALEXNET_REQUIRE_GPU is set but {why}").into())
            })
        }
        Err(why) => {
            eprintln!("nccl test {name} skipped, reported as ignored: {why}");
            Trial::test(name, run).with_ignored_flag(true)
        }
    }
}

/// GPUs and NCCL present, or the reason not.
fn available(gpus: usize) -> Result<(), String> {
    let count = probe::gpu_count()?;
    if count < gpus {
        return Err(format!("needs {gpus} GPUs, this machine has {count}"));
    }
    alexnet::device::cuda::nccl_lib::version().map(drop)
}

/// The version the library file says it is: the digits after the
/// "NCCL version " that NCCL prints at init, in the file the loader mapped.
fn version_in_loaded_file() -> (String, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let file = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libnccl.so"))
        .expect("NCCL's library is mapped once its version was read")
        .to_string();
    let bytes = std::fs::read(&file).expect("the mapped library reads");
    let key = b"NCCL version ";
    let version = bytes
        .windows(key.len())
        .enumerate()
        .filter(|(_, w)| *w == key)
        .map(|(at, _)| {
            let digits = bytes[at + key.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'.')
                .map(|&b| char::from(b))
                .collect::<String>();
            digits.trim_end_matches('.').to_string()
        })
        .find(|v| v.split('.').count() == 3)
        .unwrap_or_else(|| panic!("{file} holds no \"NCCL version X.Y.Z\""));
    (file, version)
}

fn the_version_is_the_loaded_librarys_or_its_absence_is_a_clear_error() {
    match alexnet::device::cuda::nccl_lib::version() {
        Ok(v) => {
            let parts: Vec<u32> = v
                .split('.')
                .map(|p| p.parse().unwrap_or_else(|_| panic!("version {v}")))
                .collect();
            assert_eq!(parts.len(), 3, "version {v}");
            assert!((parts[0], parts[1]) >= (2, 14), "version {v}");
            let (file, in_file) = version_in_loaded_file();
            assert_eq!(v, in_file, "ncclGetVersion against {file}");
            nccl::new_id().expect("an NCCL id where NCCL loads");
        }
        Err(why) if why.contains("older than 2.14") => {
            assert!(why.starts_with("NCCL 2."), "{why}");
            let e = nccl::new_id().unwrap_err().to_string();
            assert!(e.contains("older than 2.14"), "{e}");
        }
        Err(why) => {
            assert!(why.starts_with("libnccl.so not found"), "{why}");
            let e = nccl::new_id().unwrap_err().to_string();
            assert!(e.starts_with("NCCL: libnccl.so not found"), "{e}");
            eprintln!("nccl: {why}: its absence is a clear error, its version not checked");
        }
    }
}

fn one_rank_joins_and_a_bad_rank_is_a_clear_error() {
    let device = CudaDevice::<f32>::new(0, CudaOptions::default()).expect("GPU 0 opens");
    let id = nccl::new_id().expect("an NCCL id");
    let watch = || {
        Arc::new(Watch::with_timeout(
            ["GPU 0".into(), "GPU 0".into()],
            Duration::from_secs(60),
        ))
    };
    NcclLink::new(0, 1, id, &device, watch()).expect("rank 0 of 1 joins");
    let id = nccl::new_id().expect("an NCCL id");
    let error = NcclLink::new(3, 1, id, &device, watch())
        .err()
        .expect("rank 3 of 1 is refused")
        .to_string();
    assert!(
        error.starts_with("NCCL init of rank 3 of 1: invalid"),
        "{error}"
    );
}

fn two_towers_over_nccl_match_the_host_link() {
    let plan = Arc::new(Plan::load("small").unwrap());
    let batch = 8;
    let init = init_twin(&plan, InitScheme::He, 3);
    let cpu = TowerPair::cpu::<f32>(Arc::clone(&plan), batch, &init).unwrap();
    let placement = Placement::TwoGpus {
        ordinals: [0, 1],
        options: CudaOptions::default(),
    };
    let gpus = TowerPair::new(placement, Arc::clone(&plan), batch, &init).unwrap();
    assert!(gpus.link_note().contains("NCCL"), "{}", gpus.link_note());
    let size = plan.input.len();
    let sgd = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    for step in 0..3u64 {
        let mut rng = Rng::new(step);
        let images: Vec<f32> = (0..batch * size)
            .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
            .collect();
        let labels = (0..batch)
            .map(|_| rng.below(plan.classes()) as u32)
            .collect();
        let batch = Batch {
            images: Arc::new(images.into()),
            labels: Arc::new(labels),
        };
        let want = cpu.train_step(&batch, step, Some(sgd)).unwrap();
        let got = gpus.train_step(&batch, step, Some(sgd)).unwrap();
        assert_loss_close(&format!("step {step} over NCCL"), &got, &want);
    }
    let (want, got) = (
        cpu.download(ParamSet::Weights).unwrap(),
        gpus.download(ParamSet::Weights).unwrap(),
    );
    assert_updates_close("NCCL against CPU", &init, &want, &got);
}
