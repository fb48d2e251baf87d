//! The CUDA device's 16-bit operations (bf16 and fp16 storage), one by one
//! at the paper's layer shapes, against the CPU 16-bit reference
//! (`CpuDevice::with_storage`) on the same stored inputs: our kernels
//! (`kernels/*.cu` at `_bf16`/`_f16`), cuDNN's convolutions with 16-bit
//! descriptors and cuBLAS's GemmEx with f32 accumulation. Feature maps
//! are channels last on the GPU at 16 bits ([`Layout::on_gpu`]): each
//! test transposes the reference's NCHW data (and reorders the weights as
//! the tower does) on the way in and back on the way out.

use alexnet::device::cpu::CpuDevice;
use alexnet::device::cuda::conv::Convolutions;
use alexnet::device::cuda::fc::Blas;
use alexnet::device::cuda::kernels::reduce::{BiasGrad, Loss};
use alexnet::device::cuda::kernels::{Half, Kernels};
use alexnet::device::layout::{Layout, transpose_rows};
use alexnet::device::precision::{Precision, Storage};
use alexnet::device::{Device, DropoutMask, Input, InputGrad, SgdStep};
use alexnet::net::plan::{Op, Plan, PlannedLayer, Shape, TOWERS};
use alexnet::rng::Rng;
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// A 16-bit type as the host writes and reads it.
trait Host16: Half {
    fn of(v: f32) -> Self;
    fn wide(self) -> f32;
}

impl Host16 for half::bf16 {
    fn of(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
    fn wide(self) -> f32 {
        self.to_f32()
    }
}

impl Host16 for half::f16 {
    fn of(v: f32) -> Self {
        half::f16::from_f32(v)
    }
    fn wide(self) -> f32 {
        self.to_f32()
    }
}

/// One 16-bit storage's GPU side: the stream, the kernels, cuDNN and cuBLAS.
struct Gpu {
    stream: Arc<CudaStream>,
    kernels: Arc<Kernels>,
    convs: Convolutions,
    blas: Blas,
}

/// Each `image`-shaped image of `data` (NCHW, image after image) in
/// `layout`'s order; flat shapes are left as they are.
fn to_layout(layout: Layout, image: Shape, data: &[f32]) -> Vec<f32> {
    reorder(layout, image, data, false)
}

/// [`to_layout`] undone.
fn from_layout(layout: Layout, image: Shape, data: &[f32]) -> Vec<f32> {
    reorder(layout, image, data, true)
}

fn reorder(layout: Layout, image: Shape, data: &[f32], back: bool) -> Vec<f32> {
    match (layout, image, back) {
        (Layout::Nhwc, Shape::Map { c, h, w }, false) => transpose_rows(data, c, h * w),
        (Layout::Nhwc, Shape::Map { c, h, w }, true) => transpose_rows(data, h * w, c),
        _ => data.to_vec(),
    }
}

impl Gpu {
    fn up<H: Host16>(&self, host: &[f32]) -> CudaSlice<H> {
        let stored: Vec<H> = host.iter().map(|&v| H::of(v)).collect();
        self.stream.clone_htod(&stored).expect("upload")
    }
    fn up_f32(&self, host: &[f32]) -> CudaSlice<f32> {
        self.stream.clone_htod(host).expect("upload")
    }
    fn zeros<H: Host16>(&self, n: usize) -> CudaSlice<H> {
        self.stream.alloc_zeros(n.max(1)).expect("alloc")
    }
    fn down<H: Host16>(&self, buf: &CudaSlice<H>) -> Vec<f32> {
        let host: Vec<H> = self.stream.clone_dtoh(buf).expect("download");
        host.into_iter().map(H::wide).collect()
    }
}

/// Random values in ±`scale`, as `storage` keeps them.
fn stored(storage: Storage, n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| storage.round((scale * (2.0 * rng.uniform() - 1.0)) as f32))
        .collect()
}

/// An op that rounds once from f32 arithmetic like the reference's: every
/// value within one storage step of the CPU's, and at most 1% one step off
/// (where the two sides' f32 arithmetic straddles a rounding boundary).
fn assert_rounds_alike(storage: Storage, what: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let mut off = 0;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let apart = (storage.steps_from_zero(g) - storage.steps_from_zero(c)).abs();
        assert!(
            apart <= 1,
            "{what}[{i}]: GPU {g}, CPU {c}: {apart} steps apart"
        );
        off += usize::from(apart != 0);
    }
    assert!(
        off * 100 <= gpu.len(),
        "{what}: {off} of {} values a step off the CPU 16-bit reference",
        gpu.len()
    );
}

/// A convolution or GEMM, whose f32 sums run in other orders on tensor
/// cores (and, for a layer's output, round the bias first): each element
/// within `steps` storage roundings of the layer's largest |CPU| value.
fn assert_near(storage: Storage, what: &str, gpu: &[f32], cpu: &[f32], steps: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let eps = match storage {
        Storage::Bf16 => 2f64.powi(-8),
        _ => 2f64.powi(-11),
    };
    let largest = cpu.iter().fold(1e-30f64, |m, &v| m.max(f64::from(v).abs()));
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (f64::from(g) - f64::from(c)).abs() / largest;
        assert!(
            err <= steps * eps,
            "{what}[{i}]: GPU {g}, CPU {c}: {err:e} of the largest, {steps} roundings allowed"
        );
    }
}

pub fn sixteen_bit_ops_match_the_cpu_16_bit_reference() {
    ops_at::<half::bf16>(Precision::Bf16);
    ops_at::<half::f16>(Precision::Fp16);
}

fn ops_at<H: Host16>(precision: Precision) {
    let storage = precision.storage();
    let layout = Layout::on_gpu(storage);
    let device = super::gpu();
    let stream = Arc::clone(device.stream());
    let mut gpu = Gpu {
        kernels: Arc::clone(device.kernels()),
        convs: Convolutions::new(Arc::clone(&stream), precision).expect("cuDNN"),
        blas: Blas::new(Arc::clone(&stream), precision).expect("cuBLAS"),
        stream,
    };
    let mut cpu = CpuDevice::<f32>::with_storage(storage);
    let batch = 2;
    let mut seed = 100;
    let mut next = || {
        seed += 1;
        seed
    };
    let paper = Plan::load("paper").expect("the paper's plan");
    let grouped = paper.grouped().expect("the grouped paper net");
    let layers = paper.layers.iter().map(|layer| (layer, paper.towers));
    for (layer, towers) in layers.chain(grouped.layers.iter().map(|layer| (layer, 1))) {
        let sources = if layer.both_towers { TOWERS } else { 1 };
        let (in_len, out_len) = (batch * layer.input.len(), batch * layer.output.len());
        let what = |v: &str| format!("{} {v} at {}", layer.name, precision.name());
        match &layer.op {
            Op::Conv(_) | Op::Fc(_) => {
                weighted::<H>(&mut gpu, &mut cpu, layer, sources, batch, &mut next)
            }
            Op::Relu | Op::Tanh => {
                let tanh = matches!(layer.op, Op::Tanh);
                let x = stored(storage, in_len, next(), 2.0);
                let dy = stored(storage, out_len, next(), 1.0);
                let (mut y, mut dx) = (vec![0.0; out_len], vec![0.0; in_len]);
                if tanh {
                    cpu.tanh_forward(&x, &mut y).unwrap();
                    cpu.tanh_backward(&y, &dy, &mut dx).unwrap();
                } else {
                    cpu.relu_forward(&x, &mut y).unwrap();
                    cpu.relu_backward(&y, &dy, &mut dx).unwrap();
                }
                let (x_g, dy_g) = (gpu.up::<H>(&x), gpu.up::<H>(&dy));
                let (mut y_g, mut dx_g) = (gpu.zeros::<H>(out_len), gpu.zeros::<H>(in_len));
                let ew = &gpu.kernels.elementwise;
                ew.activation_forward(&gpu.stream, tanh, &x_g, &mut y_g)
                    .unwrap();
                ew.activation_backward(&gpu.stream, tanh, &y_g, &dy_g, &mut dx_g)
                    .unwrap();
                // ReLU is exact; tanhf is within 2 f32 ulps of the CPU's tanh.
                assert_rounds_alike(storage, &what("y"), &gpu.down(&y_g), &y);
                assert_rounds_alike(storage, &what("dx"), &gpu.down(&dx_g), &dx);
                if !tanh {
                    assert_eq!(gpu.down(&y_g), y, "{}", what("y"));
                    assert_eq!(gpu.down(&dx_g), dx, "{}", what("dx"));
                }
            }
            Op::Lrn(s) => {
                let x = stored(storage, in_len, next(), 30.0);
                let dy = stored(storage, out_len, next(), 1.0);
                let (mut y, mut scale, mut dx) =
                    (vec![0.0; out_len], vec![0.0; out_len], vec![0.0; in_len]);
                cpu.lrn_forward(&x, &mut y, &mut scale, s, batch).unwrap();
                cpu.lrn_backward(&x, &y, &scale, &dy, &mut dx, s, batch)
                    .unwrap();
                let (into, back) = (
                    |v: &[f32]| to_layout(layout, layer.input, v),
                    |v: Vec<f32>| from_layout(layout, layer.input, &v),
                );
                let (x_g, dy_g) = (gpu.up::<H>(&into(&x)), gpu.up::<H>(&into(&dy)));
                let mut y_g = gpu.zeros::<H>(out_len);
                let mut scale_g = gpu.zeros::<H>(out_len);
                let mut dx_g = gpu.zeros::<H>(in_len);
                let lrn = &gpu.kernels.lrn;
                lrn.forward(&gpu.stream, &x_g, &mut y_g, &mut scale_g, s, batch, layout)
                    .unwrap();
                lrn.backward(
                    &gpu.stream,
                    &x_g,
                    &y_g,
                    &scale_g,
                    &dy_g,
                    &mut dx_g,
                    s,
                    batch,
                    layout,
                )
                .unwrap();
                assert_rounds_alike(storage, &what("y"), &back(gpu.down(&y_g)), &y);
                let scale_g = back(gpu.down(&scale_g));
                assert_rounds_alike(storage, &what("scale"), &scale_g, &scale);
                assert_rounds_alike(storage, &what("dx"), &back(gpu.down(&dx_g)), &dx);
            }
            Op::MaxPool(s) => {
                let x = stored(storage, in_len, next(), 2.0);
                let dy = stored(storage, out_len, next(), 1.0);
                let (mut y, mut dx) = (vec![0.0; out_len], vec![0.0; in_len]);
                cpu.maxpool_forward(&x, &mut y, s, batch).unwrap();
                cpu.maxpool_backward(&x, &y, &dy, &mut dx, s, batch)
                    .unwrap();
                let x_g = gpu.up::<H>(&to_layout(layout, layer.input, &x));
                let dy_g = gpu.up::<H>(&to_layout(layout, layer.output, &dy));
                let (mut y_g, mut dx_g) = (gpu.zeros::<H>(out_len), gpu.zeros::<H>(in_len));
                let pool = &gpu.kernels.pool;
                pool.forward(&gpu.stream, &x_g, &mut y_g, s, batch, layout)
                    .unwrap();
                pool.backward(&gpu.stream, &x_g, &y_g, &dy_g, &mut dx_g, s, batch, layout)
                    .unwrap();
                let y_g = from_layout(layout, layer.output, &gpu.down(&y_g));
                assert_eq!(y_g, y, "{}", what("y"));
                // Each input's gradient is a sum of at most a few outputs' in one order.
                let dx_g = from_layout(layout, layer.input, &gpu.down(&dx_g));
                assert_rounds_alike(storage, &what("dx"), &dx_g, &dx);
            }
            Op::Dropout { p } => {
                let features = layer.output.len();
                let mask = if towers == 1 {
                    DropoutMask::towers(*p, [0x5eed, 0xfeed], features / TOWERS, 1234)
                } else {
                    DropoutMask::tower(*p, 0x5eed, 1234)
                };
                let x = stored(storage, in_len, next(), 2.0);
                let mut y = vec![0.0; out_len];
                cpu.dropout_forward(&x, &mut y, &mask).unwrap();
                let x_g = gpu.up::<H>(&x);
                let mut y_g = gpu.zeros::<H>(out_len);
                gpu.kernels
                    .elementwise
                    .dropout(&gpu.stream, &x_g, &mut y_g, &mask, layout)
                    .unwrap();
                assert_eq!(gpu.down(&y_g), y, "{}", what("y"));
            }
        }
    }
    loss_update_and_input::<H>(&gpu, &mut cpu, precision);
}

/// A conv or fc layer: forward (bias, then each source), backward data,
/// filter and bias.
fn weighted<H: Host16>(
    gpu: &mut Gpu,
    cpu: &mut CpuDevice<f32>,
    layer: &PlannedLayer,
    sources: usize,
    batch: usize,
    next: &mut impl FnMut() -> u64,
) {
    let (storage, op) = (H::STORAGE, &layer.op);
    let layout = Layout::on_gpu(storage);
    let (blocks, outputs, in_len, out_len, plane) = match op {
        Op::Conv(s) => (
            s.block_len(),
            s.out_c,
            batch * s.in_c * s.in_h * s.in_w,
            batch * s.out_c * s.out_h * s.out_w,
            s.out_h * s.out_w,
        ),
        Op::Fc(s) => (
            s.block_len(),
            s.outputs,
            batch * s.inputs,
            batch * s.outputs,
            1,
        ),
        _ => unreachable!("conv or fc"),
    };
    // The CPU's weights are its f32 masters (it rounds them as it reads);
    // the GPU gets their 16-bit copies. Biases likewise.
    let w: Vec<Vec<f32>> = (0..sources)
        .map(|_| stored(Storage::Full, blocks, next(), 0.05))
        .collect();
    let bias = stored(Storage::Full, outputs, next(), 0.5);
    let x = stored(storage, sources * in_len, next(), 2.0);
    let dy = stored(storage, out_len, next(), 1.0);
    let (mut y, mut dx) = (vec![0.0; out_len], vec![0.0; sources * in_len]);
    let mut dw = vec![vec![0.0; blocks]; sources];
    let mut db = vec![0.0; outputs];
    let mut none = |_: &Vec<f32>| Ok(());
    let grad = Some(InputGrad {
        dx: &mut dx,
        queued: &mut none,
    });
    match op {
        Op::Conv(s) => {
            cpu.conv_forward(Input::Own(&x), &w, &bias, &mut y, s, batch)
                .unwrap();
            cpu.conv_backward(&x, &w, &dy, grad, &mut dw, &mut db, s, batch)
                .unwrap();
        }
        Op::Fc(s) => {
            cpu.fc_forward(Input::Own(&x), &w, &bias, &mut y, s, batch)
                .unwrap();
            cpu.fc_backward(&x, &w, &dy, grad, &mut dw, &mut db, s, batch)
                .unwrap();
        }
        _ => unreachable!("conv or fc"),
    }
    let w_g: Vec<CudaSlice<H>> = w
        .iter()
        .map(|w| gpu.up::<H>(&layout.to_device(layer, w)))
        .collect();
    let x_g = gpu.up::<H>(&to_layout(layout, layer.input, &x));
    let dy_g = gpu.up::<H>(&to_layout(layout, layer.output, &dy));
    let bias_g = gpu.up::<H>(&bias);
    // The channel changes every element of a channels-last map.
    let (rows, plane) = match layout {
        Layout::Nhwc => (batch * plane, 1),
        Layout::Nchw => (batch, plane),
    };
    let mut y_g = gpu.zeros::<H>(out_len);
    let mut dx_g = gpu.zeros::<H>(sources * in_len);
    let mut dw_g: Vec<CudaSlice<H>> = (0..sources).map(|_| gpu.zeros::<H>(blocks)).collect();
    let mut db_g = gpu.zeros::<H>(outputs);
    let Gpu {
        stream,
        kernels: k,
        convs: c,
        blas,
    } = gpu;
    k.elementwise
        .bias_fill(
            stream,
            &mut y_g,
            &bias_g,
            out_len,
            outputs as u32,
            plane as u32,
        )
        .unwrap();
    let part = |src: usize, len: usize| src * len..(src + 1) * len;
    for src in 0..sources {
        let x_src = x_g.slice(part(src, in_len));
        let mut dx_src = dx_g.slice_mut(part(src, in_len));
        match op {
            Op::Conv(s) => {
                c.forward(s, batch, &x_src, &w_g[src], &mut y_g).unwrap();
                c.backward_data(s, batch, &w_g[src], &dy_g, &mut dx_src)
                    .unwrap();
                c.backward_filter(s, batch, &x_src, &dy_g, &mut dw_g[src])
                    .unwrap();
            }
            Op::Fc(s) => {
                let dims = [batch, s.inputs, s.outputs];
                blas.forward(dims, &x_src, &w_g[src], &mut y_g).unwrap();
                blas.input_grad(dims, &w_g[src], &dy_g, &mut dx_src)
                    .unwrap();
                blas.weight_grad(dims, &x_src, &dy_g, &mut dw_g[src])
                    .unwrap();
            }
            _ => unreachable!("conv or fc"),
        }
    }
    let rows_path = plane == 1 && matches!(op, Op::Conv(_));
    // Chunked as the device chunks them.
    let shape = if rows_path {
        BiasGrad::over_rows(rows, outputs)
    } else {
        BiasGrad::over_images(rows, outputs, plane)
    };
    let mut partial = stream.alloc_zeros::<f32>(outputs * shape.chunks).unwrap();
    if rows_path {
        k.reduce
            .bias_grad_rows_partial(stream, &dy_g, &mut partial, shape)
            .unwrap();
    } else {
        k.reduce
            .bias_grad_partial(stream, &dy_g, &mut partial, shape)
            .unwrap();
    }
    k.reduce
        .bias_grad_finish(stream, &partial, &mut db_g, shape)
        .unwrap();
    // A source's products, and one rounding of the bias beside them.
    let name = match op {
        Op::Conv(_) => "conv",
        _ => "fc",
    };
    let y_g = from_layout(layout, layer.output, &gpu.down(&y_g));
    assert_near(storage, &format!("{name} y"), &y_g, &y, 4.0);
    let dx_g = from_layout(layout, layer.input, &gpu.down(&dx_g));
    assert_near(storage, &format!("{name} dx"), &dx_g, &dx, 2.0);
    for (src, g) in dw_g.iter().enumerate() {
        assert_near(
            storage,
            &format!("{name} dw[{src}]"),
            &layout.from_device(layer, gpu.down(g)),
            &dw[src],
            2.0,
        );
    }
    assert_near(
        storage,
        &format!("{name} dbias"),
        &gpu.down(&db_g),
        &db,
        2.0,
    );
}

/// The loss, the update with its 16-bit weight copy, the u8 input and the
/// overflow check.
fn loss_update_and_input<H: Host16>(gpu: &Gpu, cpu: &mut CpuDevice<f32>, precision: Precision) {
    let storage = precision.storage();
    let (stream, k) = (&gpu.stream, &gpu.kernels);
    // The loss: 1000 classes over two towers, a batch of 3.
    let (batch, per_tower, scale) = (3, 500, 1024.0);
    let logits = stored(storage, TOWERS * batch * per_tower, 7, 8.0);
    let labels = [3u32, 999, 512];
    let mut dlogits = vec![0.0; batch * per_tower];
    cpu.softmax_cross_entropy(&logits, &labels, 1, per_tower, scale, &mut dlogits)
        .unwrap();
    let want = cpu.take_loss_stats().unwrap()[0];
    let logits_g = gpu.up::<H>(&logits);
    let labels_g = stream.clone_htod(&labels).unwrap();
    let mut dlogits_g = gpu.zeros::<H>(batch * per_tower);
    let mut per_image = stream.alloc_zeros::<f64>(3 * batch).unwrap();
    let shape = Loss {
        batch,
        towers: TOWERS,
        per_tower,
        tower: 1,
        grad_scale: scale,
    };
    k.reduce
        .softmax_cross_entropy(
            stream,
            &logits_g,
            &labels_g,
            &mut dlogits_g,
            &mut per_image,
            shape,
        )
        .unwrap();
    assert_rounds_alike(storage, "dlogits", &gpu.down(&dlogits_g), &dlogits);
    let stats: Vec<f64> = stream.clone_dtoh(&per_image).unwrap();
    let loss: f64 = stats.chunks(3).map(|s| s[0]).sum();
    assert!(
        (loss - want.loss_sum).abs() <= 1e-9 * want.loss_sum.abs().max(1.0),
        "loss {loss} against {}",
        want.loss_sum
    );

    // The update: f32 masters and momentum, a 16-bit gradient, the copy.
    let n = 4099;
    let (mut w, mut v) = (
        stored(Storage::Full, n, 8, 0.05),
        stored(Storage::Full, n, 9, 0.01),
    );
    let g = stored(storage, n, 10, 1.0);
    let step = SgdStep {
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
    };
    let (mut w_g, mut v_g) = (gpu.up_f32(&w), gpu.up_f32(&v));
    let (g_g, mut copy_g) = (gpu.up::<H>(&g), gpu.zeros::<H>(n));
    k.elementwise
        .sgd_update_with_copy(stream, &mut w_g, &g_g, &mut v_g, &mut copy_g, step)
        .unwrap();
    // The size of each element's terms, before the CPU's update changes them.
    let terms: Vec<f32> = (0..n)
        .map(|i| {
            let decay = step.weight_decay * step.lr;
            2.0 * w[i].abs()
                + step.momentum * v[i].abs()
                + decay * w[i].abs()
                + step.lr * g[i].abs()
        })
        .collect();
    cpu.sgd_update(&mut w, &g, &mut v, step).unwrap();
    let w_after: Vec<f32> = stream.clone_dtoh(&w_g).unwrap();
    // Each side's f32 update of the same numbers, in its own order (and
    // FMA contractions): each of the few roundings within f32's epsilon of
    // the terms' size.
    for (i, (&a, &b)) in w_after.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= 4.0 * f32::EPSILON * terms[i],
            "w[{i}]: GPU {a}, CPU {b}"
        );
    }
    let copy = gpu.down(&copy_g);
    let rounded: Vec<f32> = w_after.iter().map(|&v| storage.round(v)).collect();
    assert_eq!(copy, rounded, "the 16-bit copy is the new master rounded");

    // The u8 input, rounded once from the CPU's exact f32: bit for bit.
    let (images, plane) = (2, 227 * 227);
    let mut rng = Rng::new(11);
    let pixels: Vec<u8> = (0..images * 3 * plane)
        .map(|_| rng.below(256) as u8)
        .collect();
    let offsets = stored(Storage::Full, images * 3, 12, 0.6);
    let mut want = vec![0.0; pixels.len()];
    cpu.input_from_u8(&pixels, &offsets, &mut want).unwrap();
    let (pixels_g, offsets_g) = (stream.clone_htod(&pixels).unwrap(), gpu.up_f32(&offsets));
    let mut y_g = gpu.zeros::<H>(pixels.len());
    let layout = Layout::on_gpu(storage);
    k.input
        .from_u8(
            stream,
            &pixels_g,
            &offsets_g,
            &mut y_g,
            pixels.len(),
            plane,
            layout,
        )
        .unwrap();
    let image = Shape::Map {
        c: 3,
        h: 227,
        w: 227,
    };
    let y_g = from_layout(layout, image, &gpu.down(&y_g));
    assert_eq!(y_g, want, "u8 input at {}", precision.name());

    // f32 images, rounded once as stored, channels last.
    let images = stored(Storage::Full, want.len(), 13, 2.0);
    let staged = gpu.up_f32(&images);
    let mut y_g = gpu.zeros::<H>(images.len());
    k.input
        .to_channels_last(stream, &staged.slice(..), &mut y_g, 3, plane)
        .unwrap();
    let rounded: Vec<f32> = images.iter().map(|&v| storage.round(v)).collect();
    let y_g = from_layout(Layout::Nhwc, image, &gpu.down(&y_g));
    assert_eq!(y_g, rounded, "f32 images stored channels last");

    // The overflow check sees a 16-bit infinity.
    let mut flag = stream.alloc_zeros::<u32>(1).unwrap();
    k.elementwise
        .flag_nonfinite(stream, &gpu.up::<H>(&g), &mut flag)
        .unwrap();
    assert_eq!(stream.clone_dtoh(&flag).unwrap(), [0]);
    let mut big = g.clone();
    big[17] = f32::INFINITY;
    k.elementwise
        .flag_nonfinite(stream, &gpu.up::<H>(&big), &mut flag)
        .unwrap();
    assert_eq!(stream.clone_dtoh(&flag).unwrap(), [1]);
}
