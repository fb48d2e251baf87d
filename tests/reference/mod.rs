//! The grouped single-device twin of the two towers, written from the
//! definitions in f64, one multiply-add at a time: `groups = 2` in the
//! layers that read one tower, LRN within each group, the twin's weight
//! layout (docs/network.md). It shares nothing with the towers but the layer
//! table and the dropout mask stream. tests/twin.rs adds its backward pass.

use alexnet::device::cpu::dropout_keeps;
use alexnet::net::params::TwinTensor;
use alexnet::net::plan::{Op, Plan, TOWERS};
use alexnet::tower::dropout_key_for;

/// Visits every multiply-add `(input, weight, output)` index triple of a
/// grouped convolution (twin channels: `TOWERS × per-tower`, except the
/// image that the first layer reads, which all its filters see).
pub fn conv_triples(op: &Op, first: bool, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
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
pub fn fc_triples(op: &Op, first: bool, batch: usize, mut f: impl FnMut(usize, usize, usize)) {
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

pub struct Twin {
    pub plan: Plan,
    /// Weight and bias per parameter layer, in the twin's layout.
    pub params: Vec<(Vec<f64>, Vec<f64>)>,
}

impl Twin {
    /// The twin of `plan` with the twin tensors `tensors` (weight, bias,
    /// weight, bias, ... in layer order), widened to f64.
    pub fn new(plan: Plan, tensors: &[TwinTensor]) -> Twin {
        let widen = |t: &TwinTensor| t.data.iter().map(|&v| f64::from(v)).collect();
        Twin {
            plan,
            params: tensors
                .chunks(2)
                .map(|wb| (widen(&wb[0]), widen(&wb[1])))
                .collect(),
        }
    }

    /// Forward pass of `batch` images: the input of each layer, then the
    /// logits. Dropout masks from `dropout_key` as the towers draw them in
    /// training; `None` is test time, where dropout is the identity (the
    /// towers scale kept units by 1/(1 − p) in training instead).
    pub fn forward(&self, images: &[f64], batch: usize, dropout_key: Option<u64>) -> Vec<Vec<f64>> {
        let mut acts = vec![images.to_vec()];
        let mut slot = 0;
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
                    }
                }
                Op::Dropout { p } => {
                    let units = layer.output.len();
                    for (j, v) in y.iter_mut().enumerate() {
                        *v = match dropout_key {
                            Some(key) => dropout_mask(key, i, units, j, *p) * x[j],
                            None => x[j],
                        };
                    }
                }
            }
            slot += usize::from(layer.has_params());
            acts.push(y);
        }
        acts
    }
}

/// Channels normalized together with `c`: its own group's, within n/2.
pub fn lrn_window(c: usize, per_group: usize, size: usize) -> impl Iterator<Item = usize> {
    let group = c / per_group;
    let lo = (c.saturating_sub(size / 2)).max(group * per_group);
    let hi = (c + size / 2).min(group * per_group + per_group - 1);
    lo..=hi
}

/// Input indices of the pooling window of twin output `j`.
pub fn pool_window(s: &alexnet::net::plan::PoolShape, j: usize) -> impl Iterator<Item = usize> {
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
pub fn dropout_mask(key: u64, layer: usize, units: usize, j: usize, p: f32) -> f64 {
    let (n, unit) = (j / (TOWERS * units), j % (TOWERS * units));
    let (tower, u) = (unit / units, unit % units);
    if dropout_keeps(dropout_key_for(key, layer, tower), n * units + u, p) {
        1.0 / (1.0 - f64::from(p))
    } else {
        0.0
    }
}
