//! Two replicas of the pair on four GPUs (towers over NCCL, gradients
//! averaged over NCCL) against one CPU pair on the whole batch. Needs four
//! GPUs and NCCL; without them it is reported as ignored (libtest-mimic's
//! harness), saying why. Nothing here has run on real GPUs yet.

use alexnet::device::SgdStep;
use alexnet::device::cuda::{CudaOptions, probe};
use alexnet::device::precision::Storage;
use alexnet::net::init::init_twin;
use alexnet::net::plan::Plan;
use alexnet::net::spec::InitScheme;
use alexnet::placement::Placement;
use alexnet::replicas::Replicas;
use alexnet::rng::Rng;
use alexnet::tower::ParamSet;
use alexnet::towers::Batch;
use libtest_mimic::{Arguments, Trial};
use std::process::ExitCode;
use std::sync::Arc;
use update::{assert_loss_close, assert_updates_close};

mod update;

/// Four GPUs and NCCL present, or the reason not.
fn available() -> Result<(), String> {
    let count = probe::gpu_count()?;
    if count < 4 {
        return Err(format!("needs 4 GPUs, this machine has {count}"));
    }
    alexnet::device::cuda::nccl_lib::version().map(drop)
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let name = "two_replicas_on_four_gpus_train_as_one_cpu_pair";
    let mut trial = Trial::test(name, || {
        two_replicas_on_four_gpus_train_as_one_cpu_pair();
        Ok(())
    });
    if let Err(why) = available() {
        eprintln!("nccl replicas test skipped, reported as ignored: {why}");
        trial = trial.with_ignored_flag(true);
    }
    libtest_mimic::run(&args, vec![trial]).exit_code()
}

fn two_replicas_on_four_gpus_train_as_one_cpu_pair() {
    let plan = Arc::new(Plan::load("small").unwrap());
    let batch = 16;
    let init = init_twin(&plan, InitScheme::He, 3);
    let cpu =
        Replicas::cpu::<f32>(1, Arc::clone(&plan), batch, &init, Storage::Full, None).unwrap();
    let options = CudaOptions::default();
    let placements = [[0, 1], [2, 3]].map(|ordinals| Placement::TwoGpus { ordinals, options });
    let gpus = Replicas::new(&placements, Arc::clone(&plan), batch, &init, None).unwrap();
    assert!(gpus.link_note().contains("NCCL"), "{}", gpus.link_note());
    let sgd = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    for step in 0..3u64 {
        let mut rng = Rng::new(step);
        let images: Vec<f32> = (0..batch * plan.input.len())
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
        assert_loss_close(&format!("step {step} on GPUs"), &got, &want);
    }
    let (want, got) = (
        cpu.download(ParamSet::Weights).unwrap(),
        gpus.download(ParamSet::Weights).unwrap(),
    );
    assert_updates_close("two NCCL replicas against one CPU pair", &init, &want, &got);
}
