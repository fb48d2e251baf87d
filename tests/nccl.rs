//! The NCCL link. A two-tower step over NCCL against the host link needs two
//! GPUs; NCCL's init and error paths need one. Each test says why it skips;
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
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

fn skip(why: &str, required: bool) {
    assert!(
        !(required && std::env::var("ALEXNET_REQUIRE_GPU").is_ok()),
        "ALEXNET_REQUIRE_GPU is set but {why}"
    );
    let _ = writeln!(std::io::stderr(), "nccl test skipped: {why}");
}

/// GPUs and NCCL present, or the reason not.
fn available(gpus: usize) -> Result<(), String> {
    let count = probe::gpu_count()?;
    if count < gpus {
        return Err(format!("needs {gpus} GPUs, this machine has {count}"));
    }
    alexnet::device::cuda::nccl_lib::version().map(drop)
}

#[test]
fn one_rank_joins_and_a_bad_rank_is_a_clear_error() {
    if let Err(why) = available(1) {
        return skip(&why, true);
    }
    let device = CudaDevice::new(0, CudaOptions::default()).expect("GPU 0 opens");
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

#[test]
fn two_towers_over_nccl_match_the_host_link() {
    if let Err(why) = available(2) {
        return skip(&why, false);
    }
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
        let rel = (got.loss_sum - want.loss_sum).abs() / want.loss_sum.abs();
        assert!(
            rel < 1e-4,
            "step {step}: loss {} over NCCL, {} on the CPU",
            got.loss_sum,
            want.loss_sum
        );
    }
    let (want, got) = (
        cpu.download(ParamSet::Weights).unwrap(),
        gpus.download(ParamSet::Weights).unwrap(),
    );
    for (w, g) in want.iter().zip(&got) {
        let scale = w.data.iter().fold(1e-20f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.data.iter().zip(&w.data).enumerate() {
            assert!(
                (a - b).abs() / scale <= 1e-4,
                "{}[{i}]: {a} over NCCL, {b} on the CPU",
                w.name
            );
        }
    }
}
