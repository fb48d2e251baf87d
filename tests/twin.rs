//! Proof of the split (docs/network.md): the two towers compute the same
//! function as the single-device twin with `groups = 2` in the layers that
//! read one tower, LRN within each group, and the twin's weight layout. The
//! twin (tests/reference) is written from the definitions, in f64, one
//! multiply-add at a time; its backward pass is here. It shares nothing with
//! the towers but the layer table and the dropout mask stream. The grouped
//! network (both towers in one, as a single GPU runs them) is held to the
//! same twin and bounds.

mod reference;
mod update;

use alexnet::device::SgdStep;
use alexnet::device::cpu::Real;
use alexnet::device::precision::Storage;
use alexnet::net::init::init_twin;
use alexnet::net::params::{TwinTensor, twin_shapes};
use alexnet::net::plan::{Op, Plan, TOWERS};
use alexnet::net::spec::InitScheme;
use alexnet::rng::Rng;
use alexnet::tower::ParamSet;
use alexnet::towers::{Batch, TowerPair};
use reference::{Twin, conv_triples, dropout_mask, fc_triples, lrn_window, pool_window};
use std::collections::HashMap;
use std::sync::Arc;
use update::{UPDATE_ELEMENT_TOL, UPDATE_NORM_TOL, compare_updates};

/// A pool window whose two largest inputs are closer than the towers'
/// rounding: the towers may route its gradient to either.
#[derive(Debug, Clone, Copy)]
struct Tie {
    /// The pool layer, and the window (its output) in the twin's layout.
    layer: usize,
    window: usize,
    /// The input the twin routes the gradient to (the first largest), and
    /// the runner-up.
    first: usize,
    other: usize,
}

/// Every positive pool window of `acts` whose runner-up is within `rel_gap`
/// of its largest input, relative to it.
fn near_ties(plan: &Plan, acts: &[Vec<f64>], rel_gap: f64) -> Vec<Tie> {
    let mut ties = Vec::new();
    for (layer, l) in plan.layers.iter().enumerate() {
        let Op::MaxPool(s) = &l.op else { continue };
        let (x, y) = (&acts[layer], &acts[layer + 1]);
        for (window, &v) in y.iter().enumerate() {
            if v <= 0.0 {
                continue;
            }
            let first = pool_window(s, window).find(|&xi| x[xi] == v).unwrap();
            let other = pool_window(s, window)
                .filter(|&xi| xi != first)
                .max_by(|&a, &b| x[a].total_cmp(&x[b]))
                .unwrap();
            if (v - x[other]) / v < rel_gap {
                ties.push(Tie {
                    layer,
                    window,
                    first,
                    other,
                });
            }
        }
    }
    ties
}

/// Mean cross-entropy of `logits` against `labels`.
fn mean_loss(logits: &[f64], labels: &[u32], classes: usize) -> f64 {
    let mut loss = 0.0;
    for (n, &label) in labels.iter().enumerate() {
        let z = &logits[n * classes..][..classes];
        let log_sum = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        loss += log_sum - z[label as usize];
    }
    loss / labels.len() as f64
}

/// ∂loss/∂logits of [`mean_loss`].
fn dlogits(logits: &[f64], labels: &[u32], classes: usize) -> Vec<f64> {
    let batch = labels.len();
    let mut dy = vec![0.0; logits.len()];
    for (n, &label) in labels.iter().enumerate() {
        let z = &logits[n * classes..][..classes];
        let sum: f64 = z.iter().map(|v| v.exp()).sum();
        for c in 0..classes {
            let target = if c == label as usize { 1.0 } else { 0.0 };
            dy[n * classes + c] = (z[c].exp() / sum - target) / batch as f64;
        }
    }
    dy
}

/// What a backward pass gives.
struct Backward {
    /// The gradient of every weight and bias of the layers it ran through
    /// (empty for the others).
    grads: Vec<(Vec<f64>, Vec<f64>)>,
    /// The gradient of each pool layer's output (empty for the other layers).
    pool_dy: Vec<Vec<f64>>,
}

impl Twin {
    /// Backward pass through layers `..top` of a forward pass's `acts` from
    /// `dy`, the gradient of layer `top − 1`'s output. A pool window routes
    /// its gradient to its first largest input, or where `flips` holds it
    /// (by layer and window), to the input given there.
    fn backward(
        &self,
        acts: &[Vec<f64>],
        top: usize,
        mut dy: Vec<f64>,
        batch: usize,
        dropout_key: u64,
        flips: &HashMap<(usize, usize), usize>,
    ) -> Backward {
        let mut grads = vec![(Vec::new(), Vec::new()); self.params.len()];
        let mut pool_dy = vec![Vec::new(); self.plan.layers.len()];
        let mut slot = self.plan.layers[..top]
            .iter()
            .filter(|l| l.has_params())
            .count();
        for (i, layer) in self.plan.layers[..top].iter().enumerate().rev() {
            let (x, y) = (&acts[i], &acts[i + 1]);
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
                        let to = flips.get(&(i, j)).copied().unwrap_or_else(|| {
                            pool_window(s, j).find(|&xi| x[xi] == y[j]).unwrap()
                        });
                        dx[to] += g;
                    }
                    pool_dy[i] = dy;
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
        Backward { grads, pool_dy }
    }
}

/// How far the towers' `got` is from the twin's `want`: ‖got − want‖ /
/// ‖want‖, and the largest |got − want| beyond half an f32 ulp (the
/// rounding of what the towers hand back, f32 whatever they compute in),
/// relative to the largest |want|.
fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    let (mut diff, mut norm, mut worst, mut largest) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        let g64 = f64::from(g);
        let big = g.abs().max(w.abs() as f32);
        let half_ulp = (f64::from(f32::from_bits(big.to_bits() + 1)) - f64::from(big)) / 2.0;
        diff += (g64 - w).powi(2);
        norm += w * w;
        worst = worst.max((g64 - w).abs() - half_ulp);
        largest = largest.max(w.abs());
    }
    ((diff / norm).sqrt(), worst.max(0.0) / largest)
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// How close towers in `T` come to the f64 twin, norm-wise and element-wise
/// (beyond the rounding to f32, relative to the largest element), and how
/// close a pool window's two largest inputs must be for the towers to route
/// its gradient either way. f32 towers reach the twin to about 1e-6 in both;
/// f64 ones to f32's rounding norm-wise (6e-8), and element-wise to about
/// 1e-13 beyond it.
fn bounds<T: Real>() -> (f64, f64, f64) {
    if std::mem::size_of::<T>() == 4 {
        (1e-5, 1e-5, 1e-5)
    } else {
        (1e-7, 1e-10, 1e-12)
    }
}

/// The two ways the CPU runs the net: two towers on two threads, or both
/// as one grouped network.
#[derive(Debug, Clone, Copy)]
enum Arrangement {
    Towers,
    Grouped,
}

impl Arrangement {
    fn build<T: Real>(self, plan: &Arc<Plan>, batch: usize, init: &[TwinTensor]) -> TowerPair {
        match self {
            Arrangement::Towers => TowerPair::cpu::<T>(Arc::clone(plan), batch, init),
            Arrangement::Grouped => {
                TowerPair::cpu_grouped::<T>(Arc::clone(plan), batch, init, Storage::Full)
            }
        }
        .unwrap()
    }
}

fn check_split<T: Real>(preset: &str, batch: usize) {
    check::<T>(preset, batch, Arrangement::Towers);
}

fn check_grouped<T: Real>(preset: &str, batch: usize) {
    check::<T>(preset, batch, Arrangement::Grouped);
}

fn check<T: Real>(preset: &str, batch: usize, arrangement: Arrangement) {
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
    let towers = arrangement.build::<T>(&plan, batch, &tensors);
    let step = Batch {
        images: Arc::new(images.clone().into()),
        labels: Arc::new(labels.clone()),
    };
    let stats = towers.train_step(&step, dropout_key, None).unwrap();
    let logits = towers.logits().unwrap();
    let grads = towers.download(ParamSet::Gradients).unwrap();

    let twin = Twin::new((*plan).clone(), &tensors);
    let classes = plan.classes();
    let acts = twin.forward(&widen(&images), batch, Some(dropout_key));
    let twin_logits = acts.last().unwrap();
    let (norm_tol, element_tol, tie_gap) = bounds::<T>();
    let what = format!(
        "{preset} in {}, {arrangement:?}",
        std::any::type_name::<T>()
    );

    let (norm, element) = errors(&logits, twin_logits);
    eprintln!("{what}: logits differ by {norm:e} (norm), {element:e} (element)");
    assert!(
        norm < norm_tol && element < element_tol,
        "{what}: logits differ by {norm:e} (norm), {element:e} (largest element)"
    );
    let (loss, twin_loss) = (
        stats.loss_sum / batch as f64,
        mean_loss(twin_logits, &labels, classes),
    );
    eprintln!("{what}: loss {loss} against {twin_loss}");
    assert!(
        (loss - twin_loss).abs() < element_tol * twin_loss.abs(),
        "{what}: loss {loss} vs {twin_loss}"
    );

    let layers = plan.layers.len();
    let no_flips = HashMap::new();
    let dy = dlogits(twin_logits, &labels, classes);
    let base = twin.backward(&acts, layers, dy, batch, dropout_key, &no_flips);
    // Where a pool window's two largest inputs are closer than the towers'
    // rounding, the towers may route its gradient to the runner-up, a
    // legitimate difference below that layer. Each such tie's effect is the
    // backward pass below it of its gradient moved from one input to the
    // other (the backward pass is linear in it); the towers' gradients must
    // equal the twin's plus the effects of some of the ties, within the
    // same bounds as where there are none.
    let ties: Vec<Tie> = near_ties(&plan, &acts, tie_gap)
        .into_iter()
        .filter(|t| base.pool_dy[t.layer][t.window] != 0.0)
        .collect();
    let flat = |g: &[(Vec<f64>, Vec<f64>)]| -> Vec<Vec<f64>> {
        g.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).collect()
    };
    let effects: Vec<Vec<Vec<f64>>> = ties
        .iter()
        .map(|t| {
            let g = base.pool_dy[t.layer][t.window];
            let mut d = vec![0.0; acts[t.layer].len()];
            d[t.other] += g;
            d[t.first] -= g;
            flat(
                &twin
                    .backward(&acts, t.layer, d, batch, dropout_key, &no_flips)
                    .grads,
            )
        })
        .collect();
    let expected = flat(&base.grads);
    assert_eq!(grads.len(), expected.len());
    let norms: Vec<f64> = expected
        .iter()
        .map(|e| e.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    let largest_effect = effects
        .iter()
        .flat_map(|effect| effect.iter().zip(&norms))
        .map(|(d, n)| d.iter().map(|v| v * v).sum::<f64>().sqrt() / n)
        .fold(0.0f64, f64::max);
    let got: Vec<Vec<f64>> = grads.iter().map(|t| widen(&t.data)).collect();
    // Which ties the towers routed the other way: coordinate descent on the
    // squared error, each tensor weighted by its norm; then the bounds decide.
    let weight: Vec<f64> = norms.iter().map(|n| 1.0 / (n * n)).collect();
    let mut residual: Vec<Vec<f64>> = got
        .iter()
        .zip(&expected)
        .map(|(g, e)| g.iter().zip(e).map(|(a, b)| a - b).collect())
        .collect();
    let mut flipped = vec![false; ties.len()];
    for _ in 0..10 {
        let mut changed = false;
        for (k, effect) in effects.iter().enumerate() {
            let (mut along, mut size) = (0.0, 0.0);
            for ((r, d), w) in residual.iter().zip(effect).zip(&weight) {
                along += w * r.iter().zip(d).map(|(a, b)| a * b).sum::<f64>();
                size += w * d.iter().map(|v| v * v).sum::<f64>();
            }
            let sign = if flipped[k] { -1.0 } else { 1.0 };
            if sign * 2.0 * along > size {
                flipped[k] = !flipped[k];
                changed = true;
                for (r, d) in residual.iter_mut().zip(effect) {
                    for (a, b) in r.iter_mut().zip(d) {
                        *a -= sign * b;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut corrected = expected;
    for (effect, _) in effects.iter().zip(&flipped).filter(|(_, f)| **f) {
        for (c, d) in corrected.iter_mut().zip(effect) {
            for (a, b) in c.iter_mut().zip(d) {
                *a += b;
            }
        }
    }
    let routed: Vec<&Tie> = ties
        .iter()
        .zip(&flipped)
        .filter(|(_, f)| **f)
        .map(|(t, _)| t)
        .collect();
    eprintln!(
        "{what}: {} pool windows within {tie_gap:e} of a tie (the largest effect of one: \
         {largest_effect:e} of a gradient's norm), {} routed the other way: {routed:?}",
        ties.len(),
        routed.len()
    );
    let (mut worst_norm, mut worst_element) = (0.0f64, 0.0f64);
    for (tower, twin_g) in grads.iter().zip(&corrected) {
        let (norm, element) = errors(&tower.data, twin_g);
        worst_norm = worst_norm.max(norm);
        worst_element = worst_element.max(element);
        assert!(
            norm < norm_tol && element < element_tol,
            "{what}: gradient of {} differs by {norm:e} (norm), {element:e} (largest element)",
            tower.name
        );
    }
    eprintln!(
        "{what}: gradients differ by at most {worst_norm:e} (norm), {worst_element:e} (element)"
    );
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

#[test]
fn f64_grouped_net_equals_the_twin_on_the_small_preset() {
    check_grouped::<f64>("small", 8);
}

#[test]
fn f64_grouped_net_equals_the_twin_on_the_paper_preset() {
    check_grouped::<f64>("paper", 2);
}

#[test]
fn f32_grouped_net_equals_the_twin_on_the_paper_preset() {
    check_grouped::<f32>("paper", 2);
}

#[test]
fn f32_grouped_net_equals_the_twin_on_the_figure_1_tanh_preset() {
    check_grouped::<f32>("figure1-tanh", 4);
}

/// Three SGD steps of `plan` from `init` on the CPU in `T`, arranged as
/// `arrangement` says, the learning rate scaled by `lr_scale`: the weights
/// and momenta after.
fn three_steps<T: Real>(
    plan: &Arc<Plan>,
    init: &[TwinTensor],
    lr_scale: f32,
    arrangement: Arrangement,
) -> (Vec<TwinTensor>, Vec<TwinTensor>) {
    let batch = 8;
    let towers = arrangement.build::<T>(plan, batch, init);
    for step in 0..3u64 {
        let mut rng = Rng::new(100 + step);
        let images: Vec<f32> = (0..batch * plan.input.len())
            .map(|_| (2.0 * rng.uniform() - 1.0) as f32)
            .collect();
        let labels = (0..batch)
            .map(|_| rng.below(plan.classes()) as u32)
            .collect();
        let sgd = SgdStep {
            lr: 0.01 * lr_scale,
            momentum: 0.9,
            weight_decay: 5e-4,
        };
        let batch = Batch {
            images: Arc::new(images.into()),
            labels: Arc::new(labels),
        };
        towers.train_step(&batch, step, Some(sgd)).unwrap();
    }
    (
        towers.download(ParamSet::Weights).unwrap(),
        towers.download(ParamSet::Momentum).unwrap(),
    )
}

/// The check tests/gpu.rs and tests/nccl.rs make of a GPU's steps, on the
/// CPU: f32 steps pass it with room to spare, an update 1% off fails it.
#[test]
fn f32_steps_update_the_weights_as_f64_steps_do_and_a_1_percent_error_is_seen() {
    let plan = Arc::new(Plan::load("small").unwrap());
    let init = init_twin(&plan, InitScheme::He, 7);
    let (exact, _) = three_steps::<f64>(&plan, &init, 1.0, Arrangement::Towers);
    let (single, _) = three_steps::<f32>(&plan, &init, 1.0, Arrangement::Towers);
    match compare_updates(
        &init,
        &exact,
        &single,
        UPDATE_NORM_TOL / 20.0,
        UPDATE_ELEMENT_TOL / 20.0,
    ) {
        Ok((norm, element)) => {
            eprintln!(
                "f32 against f64 steps: updates differ by {norm:e} (norm), {element:e} (element)"
            )
        }
        Err(e) => panic!("f32 against f64 steps: {e}"),
    }
    let (off, _) = three_steps::<f64>(&plan, &init, 1.01, Arrangement::Towers);
    let e = compare_updates(&init, &exact, &off, UPDATE_NORM_TOL, UPDATE_ELEMENT_TOL)
        .expect_err("a learning rate 1% off is caught");
    assert!(e.contains("the updates differ by"), "{e}");
}

/// Training steps, dropout and momentum included: three f32 steps of the
/// grouped network leave the weights and momenta of three f64 steps of the
/// towers, as close as f32 towers come (the test above).
#[test]
fn three_f32_steps_of_the_grouped_net_update_as_f64_towers_do() {
    let plan = Arc::new(Plan::load("small").unwrap());
    let init = init_twin(&plan, InitScheme::He, 7);
    let (exact_w, exact_v) = three_steps::<f64>(&plan, &init, 1.0, Arrangement::Towers);
    let (grouped_w, grouped_v) = three_steps::<f32>(&plan, &init, 1.0, Arrangement::Grouped);
    let (norm, element) = compare_updates(
        &init,
        &exact_w,
        &grouped_w,
        UPDATE_NORM_TOL / 20.0,
        UPDATE_ELEMENT_TOL / 20.0,
    )
    .unwrap_or_else(|e| panic!("grouped f32 against f64 towers, weights: {e}"));
    eprintln!("grouped against towers: updates differ by {norm:e} (norm), {element:e} (element)");
    for (want, got) in exact_v.iter().zip(&grouped_v) {
        assert_eq!((&want.name, &want.shape), (&got.name, &got.shape));
        let (norm, element) = errors(&got.data, &widen(&want.data));
        eprintln!(
            "momentum of {}: {norm:e} (norm), {element:e} (element)",
            want.name
        );
        assert!(
            norm < UPDATE_NORM_TOL / 20.0 && element < UPDATE_ELEMENT_TOL / 20.0,
            "momentum of {} differs by {norm:e} (norm), {element:e} (element)",
            want.name
        );
    }
}
