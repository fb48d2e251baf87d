//! Named parameters and their two layouts: per tower (one weight block per
//! source tower, as cuda-convnet2 held them) and the single-device twin's
//! (`groups = 2`, docs/network.md: rows `0..out` are tower 0, input columns
//! `0..in` are source tower 0).

use super::plan::{Op, Plan, PlannedLayer, TOWERS};
use crate::error::{Error, Result};

/// One layer's parameters in one tower: a weight block per source tower, then the bias.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams<B> {
    pub weights: Vec<B>,
    pub bias: B,
}

/// A tensor of the single-device twin, named like PyTorch's `conv1.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Block geometry of one parameter layer: (outputs, inputs per source, kernel area, sources).
fn block_dims(layer: &PlannedLayer) -> Option<(usize, usize, usize, usize)> {
    match layer.op {
        Op::Conv(c) => Some((c.out_c, c.in_c, c.kernel * c.kernel, c.sources)),
        Op::Fc(f) => Some((f.outputs, f.inputs, 1, f.sources)),
        _ => None,
    }
}

/// The twin's tensor names and shapes, in layer order (weight, then bias).
pub fn twin_shapes(plan: &Plan) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for layer in &plan.layers {
        match layer.op {
            Op::Conv(c) => {
                let k = c.kernel;
                out.push((
                    format!("{}.weight", layer.name),
                    vec![TOWERS * c.out_c, c.sources * c.in_c, k, k],
                ));
                out.push((format!("{}.bias", layer.name), vec![TOWERS * c.out_c]));
            }
            Op::Fc(f) => {
                out.push((
                    format!("{}.weight", layer.name),
                    vec![TOWERS * f.outputs, f.sources * f.inputs],
                ));
                out.push((format!("{}.bias", layer.name), vec![TOWERS * f.outputs]));
            }
            _ => {}
        }
    }
    out
}

/// Twin index of element (o, i, q) of tower `t`'s block for source `s`.
fn twin_index(
    (out, inputs, area, sources): (usize, usize, usize, usize),
    t: usize,
    s: usize,
    o: usize,
    i: usize,
    q: usize,
) -> usize {
    (((t * out + o) * sources + s) * inputs + i) * area + q
}

/// The tensor `name` of `tensors`, which must have `shape`.
fn find<'a>(tensors: &'a [TwinTensor], name: &str, shape: &[usize]) -> Result<&'a TwinTensor> {
    let t = tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| Error::Input(format!("missing tensor {name}")))?;
    if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
        return Err(Error::Input(format!(
            "tensor {name} has shape {:?}, the net needs {shape:?}",
            t.shape
        )));
    }
    Ok(t)
}

/// The twin's tensors as the parameters of the grouped network
/// ([`Plan::grouped`] of `plan`), which are the twin's layout itself: each
/// layer's weight tensor as its one block, then its bias.
pub fn twin_as_grouped(plan: &Plan, tensors: &[TwinTensor]) -> Result<Vec<LayerParams<Vec<f32>>>> {
    twin_shapes(plan)
        .chunks(2)
        .map(|pair| {
            Ok(LayerParams {
                weights: vec![find(tensors, &pair[0].0, &pair[0].1)?.data.clone()],
                bias: find(tensors, &pair[1].0, &pair[1].1)?.data.clone(),
            })
        })
        .collect()
}

/// The grouped network's parameters (or gradients) as the twin's tensors:
/// the inverse of [`twin_as_grouped`]; an error where a layer's tensors are
/// not the twin's shapes.
pub fn grouped_as_twin(plan: &Plan, params: Vec<LayerParams<Vec<f32>>>) -> Result<Vec<TwinTensor>> {
    let shapes = twin_shapes(plan);
    if params.len() * 2 != shapes.len() {
        return Err(Error::Training(format!(
            "the grouped network gave {} layers of parameters, the twin has {}",
            params.len(),
            shapes.len() / 2
        )));
    }
    let mut out = Vec::new();
    for (pair, layer) in shapes.chunks(2).zip(params) {
        let [weight]: [Vec<f32>; 1] = layer.weights.try_into().map_err(|w: Vec<_>| {
            Error::Training(format!("{}: {} weight blocks, not one", pair[0].0, w.len()))
        })?;
        for ((name, shape), data) in pair.iter().cloned().zip([weight, layer.bias]) {
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::Training(format!(
                    "{name}: {} values for the shape {shape:?}",
                    data.len()
                )));
            }
            out.push(TwinTensor { name, shape, data });
        }
    }
    Ok(out)
}

/// Splits twin tensors into each tower's parameters.
pub fn split_twin(plan: &Plan, tensors: &[TwinTensor]) -> Result<Vec<Vec<LayerParams<Vec<f32>>>>> {
    let find = |name: &str, shape: &[usize]| find(tensors, name, shape);
    let shapes = twin_shapes(plan);
    let mut towers: Vec<Vec<LayerParams<Vec<f32>>>> = vec![Vec::new(); TOWERS];
    let mut shape_iter = shapes.chunks(2);
    for layer in &plan.layers {
        let Some(dims @ (out, inputs, area, sources)) = block_dims(layer) else {
            continue;
        };
        let pair = shape_iter
            .next()
            .expect("twin_shapes lists every parameter layer");
        let weight = find(&pair[0].0, &pair[0].1)?;
        let bias = find(&pair[1].0, &pair[1].1)?;
        for (t, tower) in towers.iter_mut().enumerate() {
            let weights = (0..sources)
                .map(|s| {
                    let mut block = Vec::with_capacity(out * inputs * area);
                    for o in 0..out {
                        for i in 0..inputs {
                            let start = twin_index(dims, t, s, o, i, 0);
                            block.extend_from_slice(&weight.data[start..start + area]);
                        }
                    }
                    block
                })
                .collect();
            let bias = bias.data[t * out..(t + 1) * out].to_vec();
            tower.push(LayerParams { weights, bias });
        }
    }
    Ok(towers)
}

/// Joins both towers' parameters (or gradients) into the twin's tensors.
pub fn join_towers(plan: &Plan, towers: &[Vec<LayerParams<Vec<f32>>>]) -> Vec<TwinTensor> {
    let shapes = twin_shapes(plan);
    let mut out = Vec::with_capacity(shapes.len());
    let mut shape_iter = shapes.into_iter();
    let param_layers = plan.layers.iter().filter_map(block_dims);
    for (index, dims @ (out_c, inputs, area, sources)) in param_layers.enumerate() {
        let (weight_name, weight_shape) = shape_iter.next().expect("weight shape");
        let (bias_name, bias_shape) = shape_iter.next().expect("bias shape");
        let mut weight = vec![0.0; weight_shape.iter().product()];
        let mut bias = Vec::with_capacity(TOWERS * out_c);
        for (t, tower) in towers.iter().enumerate() {
            let layer = &tower[index];
            for (s, block) in layer.weights.iter().enumerate().take(sources) {
                for o in 0..out_c {
                    for i in 0..inputs {
                        let src = (o * inputs + i) * area;
                        let dst = twin_index(dims, t, s, o, i, 0);
                        weight[dst..dst + area].copy_from_slice(&block[src..src + area]);
                    }
                }
            }
            bias.extend_from_slice(&layer.bias);
        }
        out.push(TwinTensor {
            name: weight_name,
            shape: weight_shape,
            data: weight,
        });
        out.push(TwinTensor {
            name: bias_name,
            shape: bias_shape,
            data: bias,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_layout_follows_the_spec() {
        let plan = Plan::load("paper").unwrap();
        let shapes = twin_shapes(&plan);
        let get = |n: &str| shapes.iter().find(|(name, _)| name == n).unwrap().1.clone();
        assert_eq!(get("conv1.weight"), vec![96, 3, 11, 11]);
        assert_eq!(get("conv2.weight"), vec![256, 48, 5, 5]);
        assert_eq!(get("conv3.weight"), vec![384, 256, 3, 3]);
        assert_eq!(get("fc6.weight"), vec![4096, 9216]);
        assert_eq!(get("fc8.bias"), vec![1000]);
    }

    /// The twin's tensors of `plan`, element i of each holding `value(i)`.
    fn numbered_tensors(plan: &Plan, value: impl Fn(usize) -> f32) -> Vec<TwinTensor> {
        twin_shapes(plan)
            .into_iter()
            .map(|(name, shape)| {
                let n = shape.iter().product::<usize>();
                TwinTensor {
                    name,
                    shape,
                    data: (0..n).map(&value).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn split_then_join_is_the_identity_and_places_blocks_per_spec() {
        let plan = Plan::load("small").unwrap();
        let tensors = numbered_tensors(&plan, |i| i as f32);
        let towers = split_twin(&plan, &tensors).unwrap();
        assert_eq!(join_towers(&plan, &towers), tensors);
        // conv3 of `small`: twin [96, 64, 3, 3]; tower 1, source 0, output 0, input 0
        // is twin row 48, column 0: flat index 48 * 64 * 9.
        let conv3 = &towers[1][2];
        assert_eq!(conv3.weights.len(), 2);
        assert_eq!(conv3.weights[0][0], (48 * 64 * 9) as f32);
        // Source 1 starts at twin column 32.
        assert_eq!(conv3.weights[1][0], (48 * 64 * 9 + 32 * 9) as f32);
        assert_eq!(conv3.bias[0], 48.0);
    }

    /// The grouped network's blocks are the twin's tensors, whose lengths
    /// are what its plan's layers hold.
    #[test]
    fn the_grouped_layout_is_the_twins_and_fits_the_grouped_plan() {
        let plan = Plan::load("small").unwrap();
        let tensors = numbered_tensors(&plan, |i| (i % 97) as f32);
        let grouped = twin_as_grouped(&plan, &tensors).unwrap();
        let layers = plan.grouped().unwrap().layers;
        let param_layers: Vec<_> = layers.iter().filter(|l| l.has_params()).collect();
        assert_eq!(grouped.len(), param_layers.len());
        for (params, layer) in grouped.iter().zip(&param_layers) {
            assert_eq!(params.weights.len(), 1);
            assert_eq!(params.weights[0].len() + params.bias.len(), layer.params());
        }
        assert_eq!(grouped_as_twin(&plan, grouped.clone()).unwrap(), tensors);
        let mut cut = grouped;
        cut[0].bias.pop();
        assert!(grouped_as_twin(&plan, cut).is_err());
        let mut short = tensors.clone();
        short[1].data.pop();
        assert!(twin_as_grouped(&plan, &short).unwrap_err().is_input());
    }
}
