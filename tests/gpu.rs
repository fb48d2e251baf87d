//! The CUDA device against the CPU device: every op on fresh random inputs
//! at the paper's layer shapes, and three whole two-tower training steps in
//! emulation mode. Without a GPU each test prints why and skips;
//! `ALEXNET_REQUIRE_GPU=1` (set by scripts/gpu-check) turns a skip into a
//! failure, so a GPU machine cannot pass them by not finding its GPU.

use alexnet::device::cpu::CpuDevice;
use alexnet::device::cuda::{CudaDevice, CudaOptions, probe};
use alexnet::device::{Device, SgdStep};
use alexnet::net::init::{InitScheme, init_twin};
use alexnet::net::plan::{Op, Plan, TOWERS};
use alexnet::placement::Placement;
use alexnet::rng::Rng;
use alexnet::tower::ParamSet;
use alexnet::towers::{Batch, TowerPair};
use std::io::Write;
use std::sync::Arc;

fn gpu_or_skip() -> Option<CudaDevice> {
    match probe::gpu_count() {
        Ok(_) => Some(CudaDevice::new(0, CudaOptions::default()).expect("GPU 0 opens")),
        Err(why) => {
            assert!(
                std::env::var("ALEXNET_REQUIRE_GPU").is_err(),
                "ALEXNET_REQUIRE_GPU is set but {why}"
            );
            // Straight to stderr, past the test harness's capture, so the
            // reason shows in a normal `cargo test`.
            let _ = writeln!(std::io::stderr(), "gpu test skipped: {why}");
            None
        }
    }
}

fn random(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (scale * (2.0 * rng.uniform() - 1.0)) as f32)
        .collect()
}

/// `host` on both devices.
struct Pair<B> {
    cpu: Vec<f32>,
    gpu: B,
}

fn both(gpu: &mut CudaDevice, host: Vec<f32>) -> Pair<<CudaDevice as Device>::Buf> {
    let mut buf = gpu.alloc(host.len()).unwrap();
    gpu.upload(&host, &mut buf).unwrap();
    Pair {
        cpu: host,
        gpu: buf,
    }
}

/// Convolutions and fc layers: cuDNN may pick FFT or Winograd algorithms,
/// whose f32 rounding differs from a direct sum's more than f32 ulps.
const MATMUL_TOL: f64 = 1e-4;

/// Checks `gpu` against `cpu`, each element within `tol` of the largest |cpu|.
fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(1e-20f64, |m, &v| m.max(f64::from(v).abs()));
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (f64::from(g) - f64::from(c)).abs() / scale;
        assert!(
            err <= tol,
            "{what}[{i}]: GPU {g}, CPU {c}, error {err:e} of the largest"
        );
    }
}

#[test]
fn every_op_matches_the_cpu_device_at_the_paper_shapes() {
    let Some(mut gpu) = gpu_or_skip() else { return };
    let mut cpu = CpuDevice::<f32>::default();
    let plan = Plan::load("paper").unwrap();
    let batch = 4;
    let mut seed = 0;
    let mut next = || {
        seed += 1;
        seed
    };
    for layer in &plan.layers {
        let sources = if layer.both_towers { TOWERS } else { 1 };
        let (in_len, out_len) = (batch * layer.input.len(), batch * layer.output.len());
        let x = both(&mut gpu, random(sources * in_len, next(), 2.0));
        let dy = both(&mut gpu, random(out_len, next(), 1.0));
        let mut y = both(&mut gpu, vec![0.0; out_len]);
        let mut dx = both(&mut gpu, vec![0.0; sources * in_len]);
        let name = &layer.name;
        let download =
            |gpu: &mut CudaDevice, b: &<CudaDevice as Device>::Buf| gpu.download(b).unwrap();
        match &layer.op {
            Op::Conv(_) | Op::Fc(_) => {
                let (blocks, outputs) = match &layer.op {
                    Op::Conv(s) => (s.block_len(), s.out_c),
                    Op::Fc(s) => (s.block_len(), s.outputs),
                    _ => unreachable!(),
                };
                let w: Vec<_> = (0..sources)
                    .map(|_| both(&mut gpu, random(blocks, next(), 0.05)))
                    .collect();
                let bias = both(&mut gpu, random(outputs, next(), 0.5));
                let mut dw: Vec<_> = (0..sources)
                    .map(|_| both(&mut gpu, vec![0.0; blocks]))
                    .collect();
                let mut db = both(&mut gpu, vec![0.0; outputs]);
                let (w_cpu, w_gpu): (Vec<_>, Vec<_>) =
                    w.iter().map(|p| (p.cpu.clone(), p.gpu.clone())).unzip();
                let mut dw_cpu: Vec<Vec<f32>> = dw.iter().map(|p| p.cpu.clone()).collect();
                let mut dw_gpu: Vec<_> = dw.drain(..).map(|p| p.gpu).collect();
                match &layer.op {
                    Op::Conv(s) => {
                        cpu.conv_forward(&x.cpu, &w_cpu, &bias.cpu, &mut y.cpu, s, batch)
                            .unwrap();
                        gpu.conv_forward(&x.gpu, &w_gpu, &bias.gpu, &mut y.gpu, s, batch)
                            .unwrap();
                        cpu.conv_backward(
                            &x.cpu,
                            &w_cpu,
                            &dy.cpu,
                            Some(&mut dx.cpu),
                            &mut dw_cpu,
                            &mut db.cpu,
                            s,
                            batch,
                        )
                        .unwrap();
                        gpu.conv_backward(
                            &x.gpu,
                            &w_gpu,
                            &dy.gpu,
                            Some(&mut dx.gpu),
                            &mut dw_gpu,
                            &mut db.gpu,
                            s,
                            batch,
                        )
                        .unwrap();
                    }
                    Op::Fc(s) => {
                        cpu.fc_forward(&x.cpu, &w_cpu, &bias.cpu, &mut y.cpu, s, batch)
                            .unwrap();
                        gpu.fc_forward(&x.gpu, &w_gpu, &bias.gpu, &mut y.gpu, s, batch)
                            .unwrap();
                        cpu.fc_backward(
                            &x.cpu,
                            &w_cpu,
                            &dy.cpu,
                            Some(&mut dx.cpu),
                            &mut dw_cpu,
                            &mut db.cpu,
                            s,
                            batch,
                        )
                        .unwrap();
                        gpu.fc_backward(
                            &x.gpu,
                            &w_gpu,
                            &dy.gpu,
                            Some(&mut dx.gpu),
                            &mut dw_gpu,
                            &mut db.gpu,
                            s,
                            batch,
                        )
                        .unwrap();
                    }
                    _ => unreachable!(),
                }
                assert_close(
                    &format!("{name} y"),
                    &download(&mut gpu, &y.gpu),
                    &y.cpu,
                    MATMUL_TOL,
                );
                assert_close(
                    &format!("{name} dx"),
                    &download(&mut gpu, &dx.gpu),
                    &dx.cpu,
                    MATMUL_TOL,
                );
                assert_close(
                    &format!("{name} dbias"),
                    &download(&mut gpu, &db.gpu),
                    &db.cpu,
                    MATMUL_TOL,
                );
                for (src, (g, c)) in dw_gpu.iter().zip(&dw_cpu).enumerate() {
                    assert_close(
                        &format!("{name} dw[{src}]"),
                        &download(&mut gpu, g),
                        c,
                        MATMUL_TOL,
                    );
                }
            }
            Op::Relu => {
                cpu.relu_forward(&x.cpu, &mut y.cpu).unwrap();
                gpu.relu_forward(&x.gpu, &mut y.gpu).unwrap();
                cpu.relu_backward(&y.cpu, &dy.cpu, &mut dx.cpu).unwrap();
                gpu.relu_backward(&y.gpu, &dy.gpu, &mut dx.gpu).unwrap();
                assert_eq!(download(&mut gpu, &y.gpu), y.cpu, "{name} y");
                assert_eq!(download(&mut gpu, &dx.gpu), dx.cpu, "{name} dx");
            }
            Op::Lrn(s) => {
                let mut scale = both(&mut gpu, vec![0.0; out_len]);
                let x = both(&mut gpu, random(in_len, next(), 30.0));
                cpu.lrn_forward(&x.cpu, &mut y.cpu, &mut scale.cpu, s, batch)
                    .unwrap();
                gpu.lrn_forward(&x.gpu, &mut y.gpu, &mut scale.gpu, s, batch)
                    .unwrap();
                cpu.lrn_backward(&x.cpu, &y.cpu, &scale.cpu, &dy.cpu, &mut dx.cpu, s, batch)
                    .unwrap();
                gpu.lrn_backward(&x.gpu, &y.gpu, &scale.gpu, &dy.gpu, &mut dx.gpu, s, batch)
                    .unwrap();
                assert_close(
                    &format!("{name} y"),
                    &download(&mut gpu, &y.gpu),
                    &y.cpu,
                    1e-6,
                );
                assert_close(
                    &format!("{name} scale"),
                    &download(&mut gpu, &scale.gpu),
                    &scale.cpu,
                    1e-6,
                );
                assert_close(
                    &format!("{name} dx"),
                    &download(&mut gpu, &dx.gpu),
                    &dx.cpu,
                    1e-6,
                );
            }
            Op::MaxPool(s) => {
                cpu.maxpool_forward(&x.cpu, &mut y.cpu, s, batch).unwrap();
                gpu.maxpool_forward(&x.gpu, &mut y.gpu, s, batch).unwrap();
                cpu.maxpool_backward(&x.cpu, &y.cpu, &dy.cpu, &mut dx.cpu, s, batch)
                    .unwrap();
                gpu.maxpool_backward(&x.gpu, &y.gpu, &dy.gpu, &mut dx.gpu, s, batch)
                    .unwrap();
                assert_eq!(download(&mut gpu, &y.gpu), y.cpu, "{name} y");
                assert_eq!(download(&mut gpu, &dx.gpu), dx.cpu, "{name} dx");
            }
            Op::Dropout { p } => {
                let key = 0x5eed;
                cpu.dropout_forward(&x.cpu, &mut y.cpu, *p, key).unwrap();
                gpu.dropout_forward(&x.gpu, &mut y.gpu, *p, key).unwrap();
                cpu.dropout_backward(&dy.cpu, &mut dx.cpu, *p, key).unwrap();
                gpu.dropout_backward(&dy.gpu, &mut dx.gpu, *p, key).unwrap();
                assert_eq!(download(&mut gpu, &y.gpu), y.cpu, "{name} y");
                assert_eq!(download(&mut gpu, &dx.gpu), dx.cpu, "{name} dx");
            }
        }
    }
}

#[test]
fn loss_and_update_match_the_cpu_device() {
    let Some(mut gpu) = gpu_or_skip() else { return };
    let mut cpu = CpuDevice::<f32>::default();
    let (batch, per_tower) = (16, 500);
    let logits = both(&mut gpu, random(TOWERS * batch * per_tower, 1, 8.0));
    let mut rng = Rng::new(2);
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.below(TOWERS * per_tower) as u32)
        .collect();
    for tower in 0..TOWERS {
        let mut d = both(&mut gpu, vec![0.0; batch * per_tower]);
        let want = cpu
            .softmax_cross_entropy(&logits.cpu, &labels, tower, per_tower, &mut d.cpu)
            .unwrap();
        let got = gpu
            .softmax_cross_entropy(&logits.gpu, &labels, tower, per_tower, &mut d.gpu)
            .unwrap();
        assert!(
            (got.loss_sum - want.loss_sum).abs() <= 1e-9 * want.loss_sum.abs(),
            "loss {got:?} vs {want:?}"
        );
        assert_eq!((got.top1, got.top5), (want.top1, want.top5), "hits");
        assert_close("dlogits", &gpu.download(&d.gpu).unwrap(), &d.cpu, 1e-6);
    }
    let n = 10_000;
    let mut w = both(&mut gpu, random(n, 3, 0.1));
    let g = both(&mut gpu, random(n, 4, 1.0));
    let mut v = both(&mut gpu, random(n, 5, 0.01));
    let step = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    cpu.sgd_update(&mut w.cpu, &g.cpu, &mut v.cpu, step)
        .unwrap();
    gpu.sgd_update(&mut w.gpu, &g.gpu, &mut v.gpu, step)
        .unwrap();
    assert_close("w", &gpu.download(&w.gpu).unwrap(), &w.cpu, 1e-6);
    assert_close("v", &gpu.download(&v.gpu).unwrap(), &v.cpu, 1e-6);
}

#[test]
fn three_training_steps_in_emulation_mode_match_the_cpu() {
    if gpu_or_skip().is_none() {
        return;
    }
    let plan = Arc::new(Plan::load("small").unwrap());
    let batch = 8;
    let init = init_twin(&plan, InitScheme::He, 7);
    let cpu = TowerPair::cpu::<f32>(Arc::clone(&plan), batch, &init).unwrap();
    let placement = Placement::OneGpu {
        ordinal: 0,
        options: CudaOptions::default(),
    };
    let gpu = TowerPair::new(placement, Arc::clone(&plan), batch, &init).unwrap();
    let size = plan.spec.input.channels * plan.spec.input.size * plan.spec.input.size;
    let sgd = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    for step in 0..3u64 {
        let mut rng = Rng::new(100 + step);
        let labels = (0..batch)
            .map(|_| rng.below(plan.classes()) as u32)
            .collect();
        let batch = Batch {
            images: Arc::new(random(batch * size, 200 + step, 1.0).into()),
            labels: Arc::new(labels),
        };
        let want = cpu.train_step(&batch, step, Some(sgd)).unwrap();
        let got = gpu.train_step(&batch, step, Some(sgd)).unwrap();
        let rel = (got.loss_sum - want.loss_sum).abs() / want.loss_sum.abs();
        assert!(
            rel < 1e-4,
            "step {step}: loss {} on the GPU, {} on the CPU",
            got.loss_sum,
            want.loss_sum
        );
    }
    let (want, got) = (
        cpu.download(ParamSet::Weights).unwrap(),
        gpu.download(ParamSet::Weights).unwrap(),
    );
    for (w, g) in want.iter().zip(&got) {
        assert_close(&w.name, &g.data, &w.data, 1e-4);
    }
}

#[test]
fn u8_input_matches_the_cpu_device_bit_for_bit() {
    let Some(mut gpu) = gpu_or_skip() else { return };
    let mut cpu = CpuDevice::<f32>::default();
    let (batch, plane) = (5, 227 * 227);
    let mut rng = Rng::new(9);
    let pixels: Vec<u8> = (0..batch * 3 * plane)
        .map(|_| rng.below(256) as u8)
        .collect();
    let offsets = random(batch * 3, 10, 0.6);
    let mut want = cpu.alloc(pixels.len()).unwrap();
    cpu.input_from_u8(&pixels, &offsets, &mut want).unwrap();
    let mut y = gpu.alloc(pixels.len()).unwrap();
    // Twice, the second time after the staging buffers exist.
    for _ in 0..2 {
        gpu.input_from_u8(&pixels, &offsets, &mut y).unwrap();
        assert_eq!(gpu.download(&y).unwrap(), want);
    }
    // Another batch size replaces the staging buffers.
    let half = 2 * 3 * plane;
    let mut small = gpu.alloc(half).unwrap();
    gpu.input_from_u8(&pixels[..half], &offsets[..6], &mut small)
        .unwrap();
    assert_eq!(gpu.download(&small).unwrap(), want[..half]);
}
