//! A checked network: every layer's shapes, parameter counts and
//! multiply-adds, resolved from a [`NetSpec`]. Shapes are per tower: one of
//! the paper's two, or, in [`Plan::grouped`], one that holds both.

use super::spec::{Layer, NetSpec};
use crate::error::{Error, Result};

/// Number of towers: the paper's two GPUs (§3.2).
pub const TOWERS: usize = 2;

/// The shape of one image's activations in one tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Feature maps, channels × height × width.
    Map { c: usize, h: usize, w: usize },
    /// A flat vector.
    Flat(usize),
}

impl Shape {
    /// Elements per image.
    pub fn len(&self) -> usize {
        match *self {
            Shape::Map { c, h, w } => c * h * w,
            Shape::Flat(n) => n,
        }
    }

    /// Whether the shape holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Shape::Map { c, h, w } => write!(f, "{c}×{h}×{w}"),
            Shape::Flat(n) => write!(f, "{n}"),
        }
    }
}

/// Geometry of a convolution reading `sources` inputs of `in_c` channels
/// each, its channels split into `groups` (1 in a tower; 2 where one
/// network holds both towers, tower g's filters reading only tower g's
/// channels, as cuda-convnet2's and PyTorch's grouped convolutions do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub sources: usize,
    pub groups: usize,
    pub in_c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl ConvShape {
    /// Elements of one source's weight block: out_c × (in_c / groups) × k × k.
    pub fn block_len(&self) -> usize {
        self.out_c * (self.in_c / self.groups) * self.kernel * self.kernel
    }

    /// The convolution of one group: what each group computes on its own.
    pub fn per_group(&self) -> ConvShape {
        ConvShape {
            groups: 1,
            in_c: self.in_c / self.groups,
            out_c: self.out_c / self.groups,
            ..*self
        }
    }
}

/// Geometry of a max-pool over `c` maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    pub c: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub size: usize,
    pub stride: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// LRN constants (paper §3.3); `alpha` multiplies the sum directly. The
/// maps are `groups` runs of `c` channels each, and a window never leaves
/// its run: one run in a tower, one per tower where a network holds both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrnShape {
    pub groups: usize,
    pub c: usize,
    pub plane: usize,
    pub size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
}

/// Geometry of a fully connected layer reading `sources` inputs of `inputs` features each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FcShape {
    pub sources: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl FcShape {
    /// Elements of one source's weight block: outputs × inputs.
    pub fn block_len(&self) -> usize {
        self.outputs * self.inputs
    }
}

/// What one planned layer computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv(ConvShape),
    Relu,
    Tanh,
    Lrn(LrnShape),
    MaxPool(PoolShape),
    Fc(FcShape),
    Dropout { p: f32 },
}

/// One layer with its resolved shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedLayer {
    /// The parameter name (`conv1`, `fc6`…) or the op's kind.
    pub name: String,
    pub op: Op,
    /// What one tower feeds in per image (one source's worth for `both_towers`).
    pub input: Shape,
    pub output: Shape,
    /// Reads both towers' previous outputs (an all-gather before it).
    pub both_towers: bool,
}

impl PlannedLayer {
    /// Weights and biases in one tower.
    pub fn params(&self) -> usize {
        match self.op {
            Op::Conv(c) => c.sources * c.block_len() + c.out_c,
            Op::Fc(f) => f.sources * f.block_len() + f.outputs,
            _ => 0,
        }
    }

    /// Multiply-adds per image in one tower.
    pub fn macs(&self) -> usize {
        match self.op {
            Op::Conv(c) => c.sources * c.block_len() * c.out_h * c.out_w,
            Op::Fc(f) => f.sources * f.block_len(),
            _ => 0,
        }
    }

    /// Whether the layer has weights.
    pub fn has_params(&self) -> bool {
        matches!(self.op, Op::Conv(_) | Op::Fc(_))
    }
}

/// A network whose shapes fit together.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub spec: NetSpec,
    /// The image, per image.
    pub input: Shape,
    pub layers: Vec<PlannedLayer>,
    /// How many towers run these layers: [`TOWERS`] (the paper's split,
    /// §3.2), or 1 for the grouped network holding both ([`Plan::grouped`]).
    pub towers: usize,
}

fn bad(spec: &NetSpec, index: usize, what: String) -> Error {
    Error::Input(format!(
        "preset {}: layer {} ({}): {what}",
        spec.name,
        index + 1,
        layer_kind(&spec.layers[index])
    ))
}

fn layer_kind(layer: &Layer) -> String {
    match layer {
        Layer::Conv { name, .. } | Layer::Fc { name, .. } => name.clone(),
        Layer::Relu => "relu".into(),
        Layer::Tanh => "tanh".into(),
        Layer::Lrn { .. } => "lrn".into(),
        Layer::MaxPool { .. } => "max_pool".into(),
        Layer::Dropout { .. } => "dropout".into(),
    }
}

/// Output length of a sliding window, or `None` when the window does not fit.
fn window_out(input: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    let padded = pad.checked_mul(2)?.checked_add(input)?;
    (kernel >= 1 && stride >= 1 && kernel <= padded).then(|| (padded - kernel) / stride + 1)
}

/// The most elements one tower's tensor may hold per image (or one weight
/// block): the 32-bit indexing of the GPU kernels and cuDNN.
pub const MAX_ELEMENTS: u128 = 1 << 31;
/// The most multiply-adds per image of one layer.
const MAX_MACS: u128 = 1 << 48;

/// Whether the product of `factors` is at most `limit`, computed without overflow.
fn within(factors: &[usize], limit: u128) -> bool {
    factors
        .iter()
        .try_fold(1u128, |p, &f| p.checked_mul(f as u128))
        .is_some_and(|p| p <= limit)
}

impl Plan {
    /// Resolves and checks every layer's shapes.
    pub fn new(spec: NetSpec) -> Result<Plan> {
        let input = Shape::Map {
            c: spec.input.channels,
            h: spec.input.size,
            w: spec.input.size,
        };
        if spec.input.channels == 0 || spec.input.size == 0 {
            return Err(Error::Input(format!(
                "preset {}: input channels and size must be at least 1",
                spec.name
            )));
        }
        if !within(
            &[spec.input.channels, spec.input.size, spec.input.size],
            MAX_ELEMENTS,
        ) {
            return Err(Error::Input(format!(
                "preset {}: input {}×{}×{} is over {MAX_ELEMENTS} values an image",
                spec.name, spec.input.channels, spec.input.size, spec.input.size
            )));
        }
        if spec.layers.is_empty() {
            return Err(Error::Input(format!("preset {}: no layers", spec.name)));
        }
        let mut names = std::collections::HashSet::new();
        let mut shape = input;
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (i, layer) in spec.layers.iter().enumerate() {
            let err = |what: String| bad(&spec, i, what);
            let (op, output, both) = plan_layer(layer, shape, &mut names).map_err(err)?;
            if both && i == 0 {
                return Err(err(
                    "the first layer reads the image, which both towers already share; \
                     both_towers needs a previous layer"
                        .into(),
                ));
            }
            layers.push(PlannedLayer {
                name: layer_kind(layer),
                op,
                input: shape,
                output,
                both_towers: both,
            });
            shape = output;
        }
        if !matches!(layers.last().map(|l| &l.op), Some(Op::Fc(_))) {
            return Err(Error::Input(format!(
                "preset {}: the last layer must be fc (its outputs are the logits)",
                spec.name
            )));
        }
        Ok(Plan {
            spec,
            input,
            layers,
            towers: TOWERS,
        })
    }

    /// The same net as one tower holding both (the single-device twin,
    /// docs/network.md): every layer twice as wide, tower t's units and
    /// channels the t-th half of each; a layer that reads its own tower only
    /// becomes a grouped convolution (or LRN) of [`TOWERS`] groups, and one
    /// that reads both an ordinary one over all channels. The first layer
    /// reads the image both towers share. Its parameters are the twin's
    /// tensors ([`crate::net::params::twin_as_grouped`]), its logits all
    /// classes in the twin's order, its dropout masks each tower's own
    /// ([`Plan::groups`]), so it computes what the two towers compute.
    pub fn grouped(&self) -> Result<Plan> {
        let g = TOWERS;
        let refuse = |layer: &PlannedLayer, why: &str| {
            Err(Error::Input(format!(
                "preset {}: layer {}: {why}, which one grouped network cannot hold",
                self.spec.name, layer.name
            )))
        };
        if self.towers != TOWERS {
            return Err(Error::Training("a grouped plan grouped again".into()));
        }
        let wide = |s: Shape| match s {
            Shape::Map { c, h, w } => Shape::Map { c: g * c, h, w },
            Shape::Flat(n) => Shape::Flat(g * n),
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let first = i == 0;
            let op = match layer.op {
                Op::Conv(c) => Op::Conv(ConvShape {
                    sources: 1,
                    groups: if first || layer.both_towers { 1 } else { g },
                    in_c: if first { c.in_c } else { g * c.in_c },
                    out_c: g * c.out_c,
                    ..c
                }),
                Op::Fc(f) if first || layer.both_towers => Op::Fc(FcShape {
                    sources: 1,
                    inputs: if first { f.inputs } else { g * f.inputs },
                    outputs: g * f.outputs,
                }),
                Op::Fc(_) => return refuse(layer, "an fc layer reads its own tower only"),
                _ if first => return refuse(layer, "the first layer has no weights"),
                Op::Lrn(l) => Op::Lrn(LrnShape { groups: g, ..l }),
                Op::MaxPool(p) => Op::MaxPool(PoolShape { c: g * p.c, ..p }),
                ref op @ (Op::Relu | Op::Tanh | Op::Dropout { .. }) => op.clone(),
            };
            layers.push(PlannedLayer {
                name: layer.name.clone(),
                op,
                input: if first {
                    layer.input
                } else {
                    wide(layer.input)
                },
                output: wide(layer.output),
                both_towers: false,
            });
        }
        Ok(Plan {
            spec: self.spec.clone(),
            input: self.input,
            layers,
            towers: 1,
        })
    }

    /// How many of the paper's towers each of this plan's towers holds:
    /// 1, or [`TOWERS`] for the grouped network.
    pub fn groups(&self) -> usize {
        TOWERS / self.towers
    }

    /// Loads a preset (or preset file) and checks it.
    pub fn load(preset: &str) -> Result<Plan> {
        Plan::new(NetSpec::load(preset)?)
    }

    /// Logits per tower (the last layer's units).
    pub fn logits_per_tower(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output.len())
    }

    /// Classes of the whole net: every tower's logits.
    pub fn classes(&self) -> usize {
        self.towers * self.logits_per_tower()
    }

    /// Parameters in the whole net (every tower).
    pub fn params(&self) -> usize {
        self.towers * self.params_per_tower()
    }

    /// Parameters one tower holds (the whole net, for the grouped network).
    pub fn params_per_tower(&self) -> usize {
        self.layers.iter().map(PlannedLayer::params).sum()
    }

    /// Multiply-adds per image in the whole net (every tower).
    pub fn macs(&self) -> usize {
        self.towers * self.layers.iter().map(PlannedLayer::macs).sum::<usize>()
    }
}

/// One layer's operation and output shape over `shape`, and whether it
/// reads both towers; or why it cannot be. `names` collects the names of
/// the layers with parameters, each at most once.
fn plan_layer(
    layer: &Layer,
    shape: Shape,
    names: &mut std::collections::HashSet<String>,
) -> std::result::Result<(Op, Shape, bool), String> {
    Ok(match *layer {
        Layer::Conv {
            ref name,
            filters,
            kernel,
            stride,
            pad,
            both_towers,
        } => {
            if !names.insert(name.clone()) || name.is_empty() {
                return Err(format!("name {name:?} is empty or used twice"));
            }
            let (op, out) = conv_layer(filters, kernel, stride, pad, both_towers, shape)?;
            (op, out, both_towers)
        }
        Layer::Relu => (Op::Relu, shape, false),
        Layer::Tanh => (Op::Tanh, shape, false),
        Layer::Lrn {
            size,
            alpha,
            beta,
            k,
        } => {
            let Shape::Map { c, h, w } = shape else {
                return Err(format!("needs feature maps, gets a vector of {shape}"));
            };
            let finite = alpha.is_finite() && beta.is_finite() && k.is_finite();
            if size % 2 == 0 || !(finite && alpha >= 0.0 && beta > 0.0 && k > 0.0) {
                return Err(format!(
                    "size {size}, alpha {alpha}, beta {beta}, k {k}: size must be odd, \
                     alpha ≥ 0, beta > 0 and k > 0, all finite"
                ));
            }
            let lrn = LrnShape {
                groups: 1,
                c,
                plane: h * w,
                size,
                alpha,
                beta,
                k,
            };
            (Op::Lrn(lrn), shape, false)
        }
        Layer::MaxPool { size, stride } => {
            let Shape::Map { c, h, w } = shape else {
                return Err(format!("needs feature maps, gets a vector of {shape}"));
            };
            let (Some(out_h), Some(out_w)) = (
                window_out(h, size, stride, 0),
                window_out(w, size, stride, 0),
            ) else {
                return Err(format!(
                    "window {size} / stride {stride} does not fit its {h}×{w} input"
                ));
            };
            let pool = PoolShape {
                c,
                in_h: h,
                in_w: w,
                size,
                stride,
                out_h,
                out_w,
            };
            (
                Op::MaxPool(pool),
                Shape::Map {
                    c,
                    h: out_h,
                    w: out_w,
                },
                false,
            )
        }
        Layer::Fc {
            ref name,
            units,
            both_towers,
        } => {
            if units == 0 {
                return Err("units must be at least 1".into());
            }
            let sources = if both_towers { TOWERS } else { 1 };
            if !within(&[sources, units, shape.len()], MAX_ELEMENTS) {
                return Err(format!(
                    "{units} units over {} inputs is over {MAX_ELEMENTS} weights",
                    sources * shape.len()
                ));
            }
            if !names.insert(name.clone()) || name.is_empty() {
                return Err(format!("name {name:?} is empty or used twice"));
            }
            let fc = FcShape {
                sources,
                inputs: shape.len(),
                outputs: units,
            };
            (Op::Fc(fc), Shape::Flat(units), both_towers)
        }
        Layer::Dropout { p } => {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("p = {p} must be in [0, 1)"));
            }
            (Op::Dropout { p }, shape, false)
        }
    })
}

/// A convolution layer's shape over `shape` (paper §3.5's conv layers),
/// or why it cannot be one.
fn conv_layer(
    filters: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    both_towers: bool,
    shape: Shape,
) -> std::result::Result<(Op, Shape), String> {
    let Shape::Map { c, h, w } = shape else {
        return Err(format!("needs feature maps, gets a vector of {shape}"));
    };
    if filters == 0 || stride == 0 || kernel == 0 {
        return Err("filters, kernel and stride must be at least 1".into());
    }
    if pad >= kernel {
        return Err(format!("pad {pad} must be below kernel {kernel}"));
    }
    let (Some(out_h), Some(out_w)) = (
        window_out(h, kernel, stride, pad),
        window_out(w, kernel, stride, pad),
    ) else {
        return Err(format!(
            "kernel {kernel} with pad {pad} does not fit its {h}×{w} input"
        ));
    };
    let sources = if both_towers { TOWERS } else { 1 };
    if !within(&[filters, out_h, out_w], MAX_ELEMENTS)
        || !within(&[sources, filters, c, kernel, kernel], MAX_ELEMENTS)
        || !within(
            &[sources, filters, c, kernel, kernel, out_h, out_w],
            MAX_MACS,
        )
    {
        return Err(format!(
            "{filters} filters of {kernel}×{kernel} over {c}×{h}×{w} is too large \
                 (at most {MAX_ELEMENTS} outputs or weights, {MAX_MACS} multiply-adds)"
        ));
    }
    let conv = ConvShape {
        sources,
        groups: 1,
        in_c: c,
        in_h: h,
        in_w: w,
        out_c: filters,
        kernel,
        stride,
        pad,
        out_h,
        out_w,
    };
    let out = Shape::Map {
        c: filters,
        h: out_h,
        w: out_w,
    };
    Ok((Op::Conv(conv), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures of docs/network.md, which were checked against Caffe's `bvlc_alexnet`.
    #[test]
    fn paper_preset_matches_the_spec() {
        let plan = Plan::load("paper").unwrap();
        assert_eq!(plan.params(), 60_965_224);
        assert_eq!(plan.classes(), 1000);
        let per_layer: Vec<(String, usize, usize)> = plan
            .layers
            .iter()
            .filter(|l| l.has_params())
            .map(|l| (l.name.clone(), TOWERS * l.params(), TOWERS * l.macs()))
            .collect();
        let expected_params = [
            34_944, 307_456, 885_120, 663_936, 442_624, 37_752_832, 16_781_312, 4_097_000,
        ];
        let expected_mmacs = [105.4, 223.9, 149.5, 112.1, 74.8, 37.7, 16.8, 4.1];
        for (i, (name, params, macs)) in per_layer.iter().enumerate() {
            assert_eq!(*params, expected_params[i], "{name} parameters");
            let mmacs = (*macs as f64 / 1e6 * 10.0).round() / 10.0;
            assert_eq!(mmacs, expected_mmacs[i], "{name} multiply-adds");
        }
        assert_eq!((plan.macs() as f64 / 1e5).round() / 10.0, 724.4);
        let maps: Vec<Shape> = plan.layers.iter().map(|l| l.output).collect();
        assert_eq!(
            maps[0],
            Shape::Map {
                c: 48,
                h: 55,
                w: 55
            }
        );
        assert_eq!(
            maps[3],
            Shape::Map {
                c: 48,
                h: 27,
                w: 27
            }
        );
        assert_eq!(
            maps[7],
            Shape::Map {
                c: 128,
                h: 13,
                w: 13
            }
        );
        assert_eq!(maps[14], Shape::Map { c: 128, h: 6, w: 6 });
    }

    /// The grouped paper net is the twin of docs/network.md: conv2, conv4
    /// and conv5 in two groups, conv3 and the fc layers over all channels,
    /// and as many weights and multiply-adds as the two towers.
    #[test]
    fn the_grouped_paper_net_is_the_single_device_twin() {
        let towers = Plan::load("paper").unwrap();
        let plan = towers.grouped().unwrap();
        assert_eq!((plan.towers, plan.groups()), (1, 2));
        assert_eq!(plan.params(), towers.params());
        assert_eq!(plan.macs(), towers.macs());
        assert_eq!(plan.classes(), 1000);
        assert!(plan.layers.iter().all(|l| !l.both_towers));
        let conv = |name: &str| match plan.layers.iter().find(|l| l.name == name).unwrap().op {
            Op::Conv(c) => (c.sources, c.groups, c.in_c, c.out_c, c.block_len()),
            ref op => panic!("{name} is {op:?}"),
        };
        assert_eq!(conv("conv1"), (1, 1, 3, 96, 96 * 3 * 121));
        assert_eq!(conv("conv2"), (1, 2, 96, 256, 256 * 48 * 25));
        assert_eq!(conv("conv3"), (1, 1, 256, 384, 384 * 256 * 9));
        assert_eq!(conv("conv4"), (1, 2, 384, 384, 384 * 192 * 9));
        let Op::Lrn(lrn) = plan.layers[2].op else {
            panic!("layer 3 is LRN")
        };
        assert_eq!((lrn.groups, lrn.c), (2, 48));
        assert_eq!(
            plan.layers[15].op,
            Op::Fc(FcShape {
                sources: 1,
                inputs: 9216,
                outputs: 4096
            })
        );
        assert_eq!(plan.layers[15].output, Shape::Flat(4096));
        assert_eq!(plan.layers[14].output, Shape::Map { c: 256, h: 6, w: 6 });
        assert!(plan.grouped().is_err(), "a grouped plan grouped again");
    }

    #[test]
    fn a_net_one_grouped_network_cannot_hold_is_refused_by_name() {
        let spec = spec_with(
            "layers = [{type = \"conv\", name = \"c\", filters = 4, kernel = 3}, {type = \"fc\", name = \"own\", units = 2}]",
        );
        let err = Plan::new(spec).unwrap().grouped().unwrap_err();
        assert!(err.is_input());
        assert!(err.to_string().contains("layer own"), "{err}");
        assert!(
            err.to_string()
                .contains("an fc layer reads its own tower only"),
            "{err}"
        );
    }

    fn spec_with(layers: &str) -> NetSpec {
        NetSpec::parse(
            &format!("name = \"t\"\n{layers}\n[input]\nchannels = 3\nsize = 16\n"),
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn shapes_that_do_not_fit_are_input_errors() {
        let cases = [
            (
                "layers = [{type = \"conv\", name = \"c\", filters = 4, kernel = 17}, {type = \"fc\", name = \"f\", units = 2}]",
                "does not fit",
            ),
            (
                "layers = [{type = \"fc\", name = \"f\", units = 2}, {type = \"conv\", name = \"c\", filters = 4, kernel = 3}, {type = \"fc\", name = \"g\", units = 2}]",
                "needs feature maps",
            ),
            (
                "layers = [{type = \"conv\", name = \"c\", filters = 4, kernel = 3}]",
                "last layer must be fc",
            ),
            (
                "layers = [{type = \"fc\", name = \"f\", units = 2, both_towers = true}]",
                "first layer",
            ),
            (
                "layers = [{type = \"lrn\", size = 4, alpha = 1e-4, beta = 0.75, k = 2.0}, {type = \"fc\", name = \"f\", units = 2}]",
                "odd",
            ),
            (
                "layers = [{type = \"dropout\", p = 1.0}, {type = \"fc\", name = \"f\", units = 2}]",
                "[0, 1)",
            ),
            (
                "layers = [{type = \"fc\", name = \"f\", units = 2}, {type = \"fc\", name = \"f\", units = 2}]",
                "used twice",
            ),
            (
                "layers = [{type = \"max_pool\", size = 3, stride = 0}, {type = \"fc\", name = \"f\", units = 2}]",
                "does not fit",
            ),
        ];
        for (layers, message) in cases {
            let err = Plan::new(spec_with(layers)).unwrap_err();
            assert!(err.is_input());
            assert!(err.to_string().contains(message), "{layers}: {err}");
        }
    }
}
