//! Proof of the split (SPEC.md, "Reference implementations"): the two towers
//! compute the same function as the single-device twin with `groups = 2` in
//! the layers that read one tower, LRN within each group, and SPEC.md's
//! weight layout. The twin here is written from the definitions, in f64, one
//! multiply-add at a time; it shares nothing with the towers but the layer
//! table and the dropout mask stream.

use alexnet::device::cpu::{Real, dropout_keeps};
use alexnet::net::params::{TwinTensor, twin_shapes};
use alexnet::net::plan::{Op, Plan, TOWERS};
use alexnet::rng::Rng;
use alexnet::tower::{ParamSet, dropout_key_for};
use alexnet::towers::{Batch, TowerPair};
use std::sync::Arc;

/// Visits every multiply-add `(input, weight, output)` index triple of a
/// grouped convolution (twin channels: `TOWERS × per-tower`, except the
/// image that the first layer reads, which all its filters see).
fn conv_triples(op: &Op, first: bool, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
    let Op::Conv(s) = op else { unreachable!() };
    let groups = if s.sources == 1 && !first { TOWERS } else { 1 };
    let cin = if first { s.in_c } else { TOWERS * s.in_c };
    let cout = TOWERS * s.out_c;
    let (in_pg, out_pg, k) = (cin / groups, cout / groups, s.kernel);
    for n in 0..batch {
        for o in 0..cout {
            let g = o / out_pg;
            for cl in 0..in_pg {
                let c = g * in_pg + cl;
                for ky in 0..k {
                    for kx in 0..k {
                        let wi = ((o * in_pg + cl) * k + ky) * k + kx;
                        for oy in 0..s.out_h {
                            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                            if iy < 0 || iy >= s.in_h as isize {
                                continue;
                            }
                            for ox in 0..s.out_w {
                                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                                if ix < 0 || ix >= s.in_w as isize {
                                    continue;
                                }
                                let xi =
                                    ((n * cin + c) * s.in_h + iy as usize) * s.in_w + ix as usize;
                                let yi = ((n * cout + o) * s.out_h + oy) * s.out_w + ox;
                                f(xi, wi, yi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The same for a grouped fully connected layer.
fn fc_triples(op: &Op, first: bool, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
    let Op::Fc(s) = op else { unreachable!() };
    let groups = if s.sources == 1 && !first { TOWERS } else { 1 };
    let inputs = if first { s.inputs } else { TOWERS * s.inputs };
    let outputs = TOWERS * s.outputs;
    let (in_pg, out_pg) = (inputs / groups, outputs / groups);
    for n in 0..batch {
        for o in 0..outputs {
            let g = o / out_pg;
            for il in 0..in_pg {
                f(n * inputs + g * in_pg + il, o * in_pg + il, n * outputs + o);
            }
        }
    }
}

struct Twin {
    plan: Plan,
    /// Weight and bias per parameter layer, in the twin's layout.
    params: Vec<(Vec<f64>, Vec<f64>)>,
}

struct Pass {
    /// Input of each layer, then the logits.
    acts: Vec<Vec<f64>>,
    loss: f64,
    /// The smallest gap, relative to the window's max, between a pool
    /// window's largest input and a distinct runner-up. Where it is below f32
    /// rounding, f32 and f64 may pick different inputs as the max.
    min_pool_gap: f64,
}

impl Twin {
    /// Forward pass; dropout masks from `dropout_key` as the towers draw them.
    fn forward(&self, images: &[f64], labels: &[u32], dropout_key: u64) -> Pass {
        let batch = labels.len();
        let mut acts = vec![images.to_vec()];
        let mut slot = 0;
        let mut min_pool_gap = f64::INFINITY;
        for (i, layer) in self.plan.layers.iter().enumerate() {
            let x = acts.last().unwrap();
            let out_len = TOWERS * batch * layer.output.len();
            let mut y = vec![0.0; out_len];
            match &layer.op {
                op @ Op::Conv(s) => {
                    let (w, b) = &self.params[slot];
                    let plane = s.out_h * s.out_w;
                    for (j, v) in y.iter_mut().enumerate() {
                        *v = b[(j / plane) % (TOWERS * s.out_c)];
                    }
                    conv_triples(op, i == 0, batch, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
                }
                op @ Op::Fc(s) => {
                    let (w, b) = &self.params[slot];
                    for (j, v) in y.iter_mut().enumerate() {
                        *v = b[j % (TOWERS * s.outputs)];
                    }
                    fc_triples(op, i == 0, batch, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
                }
                Op::Relu => {
                    for (v, &xv) in y.iter_mut().zip(x) {
                        *v = xv.max(0.0);
                    }
                }
                Op::Tanh => {
                    for (v, &xv) in y.iter_mut().zip(x) {
                        *v = xv.tanh();
                    }
                }
                Op::Lrn(s) => {
                    let (alpha, beta, k) = (f64::from(s.alpha), f64::from(s.beta), f64::from(s.k));
                    for (j, v) in y.iter_mut().enumerate() {
                        let (c, p) = ((j / s.plane) % (TOWERS * s.c), j % s.plane);
                        let image = j / (s.plane * TOWERS * s.c);
                        let sum: f64 = lrn_window(c, s.c, s.size)
                            .map(|cj| x[(image * TOWERS * s.c + cj) * s.plane + p].powi(2))
                            .sum();
                        *v = x[j] / (k + alpha * sum).powf(beta);
                    }
                }
                Op::MaxPool(s) => {
                    for (j, v) in y.iter_mut().enumerate() {
                        *v = pool_window(s, j).map(|xi| x[xi]).fold(f64::MIN, f64::max);
                        let runner_up = pool_window(s, j)
                            .map(|xi| x[xi])
                            .filter(|&u| u != *v)
                            .fold(f64::MIN, f64::max);
                        if *v > 0.0 {
                            min_pool_gap = min_pool_gap.min((*v - runner_up) / *v);
                        }
                    }
                }
                Op::Dropout { p } => {
                    let units = layer.output.len();
                    for (j, v) in y.iter_mut().enumerate() {
                        let keep = dropout_mask(dropout_key, i, units, j, *p);
                        *v = keep * x[j];
                    }
                }
            }
            slot += usize::from(layer.has_params());
            acts.push(y);
        }
        let logits = acts.last().unwrap();
        let classes = self.plan.classes();
        let mut loss = 0.0;
        for (n, &label) in labels.iter().enumerate() {
            let z = &logits[n * classes..][..classes];
            let log_sum = z.iter().map(|v| v.exp()).sum::<f64>().ln();
            loss += log_sum - z[label as usize];
        }
        Pass {
            acts,
            loss: loss / batch as f64,
            min_pool_gap,
        }
    }

    /// Backward pass; the gradient of every weight and bias.
    fn backward(&self, pass: &Pass, labels: &[u32], dropout_key: u64) -> Vec<(Vec<f64>, Vec<f64>)> {
        let batch = labels.len();
        let classes = self.plan.classes();
        let logits = pass.acts.last().unwrap();
        let mut dy = vec![0.0; logits.len()];
        for (n, &label) in labels.iter().enumerate() {
            let z = &logits[n * classes..][..classes];
            let sum: f64 = z.iter().map(|v| v.exp()).sum();
            for c in 0..classes {
                let target = if c == label as usize { 1.0 } else { 0.0 };
                dy[n * classes + c] = (z[c].exp() / sum - target) / batch as f64;
            }
        }
        let mut grads = vec![(Vec::new(), Vec::new()); self.params.len()];
        let mut slot = self.params.len();
        for (i, layer) in self.plan.layers.iter().enumerate().rev() {
            let (x, y) = (&pass.acts[i], &pass.acts[i + 1]);
            let mut dx = vec![0.0; x.len()];
            match &layer.op {
                op @ (Op::Conv(_) | Op::Fc(_)) => {
                    slot -= 1;
                    let (w, b) = &self.params[slot];
                    let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; b.len()]);
                    let per_bias = dy.len() / (batch * b.len());
                    for (j, g) in dy.iter().enumerate() {
                        db[(j / per_bias) % b.len()] += g;
                    }
                    let mut visit = |xi: usize, wi: usize, yi: usize| {
                        dw[wi] += dy[yi] * x[xi];
                        dx[xi] += dy[yi] * w[wi];
                    };
                    match op {
                        Op::Conv(_) => conv_triples(op, i == 0, batch, &mut visit),
                        _ => fc_triples(op, i == 0, batch, &mut visit),
                    }
                    grads[slot] = (dw, db);
                }
                Op::Relu => {
                    for j in 0..x.len() {
                        dx[j] = if y[j] > 0.0 { dy[j] } else { 0.0 };
                    }
                }
                Op::Tanh => {
                    for j in 0..x.len() {
                        dx[j] = dy[j] * (1.0 - y[j] * y[j]);
                    }
                }
                Op::Lrn(s) => {
                    let (alpha, beta, k) = (f64::from(s.alpha), f64::from(s.beta), f64::from(s.k));
                    let channels = TOWERS * s.c;
                    let scale = |image: usize, c: usize, p: usize| {
                        k + alpha
                            * lrn_window(c, s.c, s.size)
                                .map(|cj| x[(image * channels + cj) * s.plane + p].powi(2))
                                .sum::<f64>()
                    };
                    // y[j] = x[j] · scale[j]^−β, so ∂y[j]/∂x[c] follows from the product rule.
                    for (j, d) in dx.iter_mut().enumerate() {
                        let (c, p) = ((j / s.plane) % channels, j % s.plane);
                        let image = j / (s.plane * channels);
                        let mut sum = dy[j] * scale(image, c, p).powf(-beta);
                        for cj in lrn_window(c, s.c, s.size) {
                            let jj = (image * channels + cj) * s.plane + p;
                            let sc = scale(image, cj, p);
                            sum -=
                                dy[jj] * x[jj] * beta * sc.powf(-beta - 1.0) * 2.0 * alpha * x[j];
                        }
                        *d = sum;
                    }
                }
                Op::MaxPool(s) => {
                    for (j, g) in dy.iter().enumerate() {
                        let first = pool_window(s, j).find(|&xi| x[xi] == y[j]).unwrap();
                        dx[first] += g;
                    }
                }
                Op::Dropout { p } => {
                    let units = layer.output.len();
                    for j in 0..x.len() {
                        dx[j] = dropout_mask(dropout_key, i, units, j, *p) * dy[j];
                    }
                }
            }
            dy = dx;
        }
        grads
    }
}

/// Channels normalized together with `c`: its own group's, within n/2.
fn lrn_window(c: usize, per_group: usize, size: usize) -> impl Iterator<Item = usize> {
    let group = c / per_group;
    let lo = (c.saturating_sub(size / 2)).max(group * per_group);
    let hi = (c + size / 2).min(group * per_group + per_group - 1);
    lo..=hi
}

/// Input indices of the pooling window of twin output `j`.
fn pool_window(s: &alexnet::net::plan::PoolShape, j: usize) -> impl Iterator<Item = usize> {
    let plane = j / (s.out_h * s.out_w);
    let (oy, ox) = ((j / s.out_w) % s.out_h, j % s.out_w);
    let (in_h, in_w, size, stride) = (s.in_h, s.in_w, s.size, s.stride);
    (0..size).flat_map(move |dy| {
        (0..size).filter_map(move |dx| {
            let (iy, ix) = (oy * stride + dy, ox * stride + dx);
            (iy < in_h && ix < in_w).then_some((plane * in_h + iy) * in_w + ix)
        })
    })
}

/// The towers' mask for twin unit `j`: tower `t` owns units `t·units ..`.
fn dropout_mask(key: u64, layer: usize, units: usize, j: usize, p: f32) -> f64 {
    let (n, unit) = (j / (TOWERS * units), j % (TOWERS * units));
    let (tower, u) = (unit / units, unit % units);
    if dropout_keeps(dropout_key_for(key, layer, tower), n * units + u, p) {
        1.0 / (1.0 - f64::from(p))
    } else {
        0.0
    }
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).powi(2))
        .sum();
    let norm: f64 = b.iter().map(|y| y * y).sum();
    (diff / norm).sqrt()
}

fn check_split<T: Real>(preset: &str, batch: usize) {
    let plan = Plan::load(preset).unwrap();
    let mut rng = Rng::new(11);
    // He-scaled weights and small random biases: about half the ReLUs active.
    let tensors: Vec<TwinTensor> = twin_shapes(&plan)
        .into_iter()
        .map(|(name, shape)| {
            let len = shape.iter().product();
            let data = if name.ends_with(".bias") {
                (0..len)
                    .map(|_| (0.2 * rng.uniform() - 0.1) as f32)
                    .collect()
            } else {
                let std = (2.0 / shape[1..].iter().product::<usize>() as f64).sqrt();
                (0..len).map(|_| (std * rng.normal()) as f32).collect()
            };
            TwinTensor { name, shape, data }
        })
        .collect();
    let images: Vec<f32> = (0..batch * plan.input.len())
        .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
        .collect();
    let labels: Vec<u32> = (0..batch)
        .map(|_| rng.below(plan.classes()) as u32)
        .collect();
    let dropout_key = 99;

    let plan = Arc::new(plan);
    let towers = TowerPair::cpu::<T>(Arc::clone(&plan), batch, &tensors).unwrap();
    let step = Batch {
        images: Arc::new(images.clone().into()),
        labels: Arc::new(labels.clone()),
    };
    let stats = towers.train_step(&step, dropout_key, None).unwrap();
    let logits = towers.logits().unwrap();
    let grads = towers.download(ParamSet::Gradients).unwrap();

    let twin = Twin {
        plan: (*plan).clone(),
        params: tensors
            .chunks(2)
            .map(|wb| {
                let widen = |t: &TwinTensor| t.data.iter().map(|&v| f64::from(v)).collect();
                (widen(&wb[0]), widen(&wb[1]))
            })
            .collect(),
    };
    let images64: Vec<f64> = images.iter().map(|&v| f64::from(v)).collect();
    let pass = twin.forward(&images64, &labels, dropout_key);
    let twin_grads = twin.backward(&pass, &labels, dropout_key);

    // Where a pool window's two largest inputs are closer than f32 rounding,
    // f32 towers may route that window's gradient to the other input, a
    // legitimate difference upstream of it; the f64 towers must still agree.
    let near_tie = std::mem::size_of::<T>() == 4 && pass.min_pool_gap < 2e-6;
    let gradient_tolerance = if near_tie { 1e-3 } else { 1e-5 };
    eprintln!(
        "{preset} in {}: smallest pool gap {:e}, gradient tolerance {gradient_tolerance:e}",
        std::any::type_name::<T>(),
        pass.min_pool_gap
    );
    let err = relative_error(&logits, pass.acts.last().unwrap());
    assert!(err < 1e-5, "{preset}: logits differ by {err:e}");
    let loss = stats.loss_sum / batch as f64;
    assert!(
        (loss - pass.loss).abs() < 1e-5 * pass.loss.abs(),
        "{preset}: loss {loss} vs {}",
        pass.loss
    );
    let twin_flat = twin_grads.iter().flat_map(|(w, b)| [w, b]);
    for (tower_grad, twin_grad) in grads.iter().zip(twin_flat) {
        let err = relative_error(&tower_grad.data, twin_grad);
        assert!(
            err < gradient_tolerance,
            "{preset} in {}: gradient of {} differs by {err:e}",
            std::any::type_name::<T>(),
            tower_grad.name
        );
    }
    assert_eq!(grads.len(), 2 * twin_grads.len());
}

#[test]
fn f64_towers_equal_the_grouped_twin_on_the_small_preset() {
    check_split::<f64>("small", 8);
}

#[test]
fn f64_towers_equal_the_grouped_twin_on_the_paper_preset() {
    check_split::<f64>("paper", 2);
}

#[test]
fn f32_towers_equal_the_grouped_twin_on_the_small_preset() {
    check_split::<f32>("small", 8);
}

#[test]
fn f32_towers_equal_the_grouped_twin_on_the_paper_preset() {
    check_split::<f32>("paper", 2);
}

#[test]
fn f64_towers_equal_the_grouped_twin_on_the_figure_1_tanh_preset() {
    check_split::<f64>("figure1-tanh", 4);
}

#[test]
fn f32_towers_equal_the_grouped_twin_on_the_figure_1_tanh_preset() {
    check_split::<f32>("figure1-tanh", 4);
}
