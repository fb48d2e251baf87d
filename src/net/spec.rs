//! The network as data: a table of one tower's layers, read from TOML.
//! Both towers run the same table; a layer marked `both_towers` reads the
//! concatenation of both towers' previous outputs (paper §3.2, Fig. 2).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The input image every tower sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Colour channels (3 for RGB).
    pub channels: usize,
    /// Height and width of the square crop fed to the network.
    pub size: usize,
}

/// One layer of a tower, in execution order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// Convolution with bias.
    Conv {
        name: String,
        filters: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        pad: usize,
        #[serde(default)]
        both_towers: bool,
    },
    /// Rectified linear unit (paper §3.1).
    Relu,
    /// Hyperbolic tangent, the saturating unit ReLUs are compared with in
    /// the paper's Figure 1.
    Tanh,
    /// Local response normalization across channels (paper §3.3):
    /// `b = a / (k + alpha * sum a^2)^beta` over `size` neighbouring channels.
    /// `alpha` multiplies the sum directly, as in the paper.
    Lrn {
        size: usize,
        alpha: f32,
        beta: f32,
        k: f32,
    },
    /// Max pooling; `stride < size` overlaps (paper §3.4).
    MaxPool { size: usize, stride: usize },
    /// Fully connected layer with bias.
    Fc {
        name: String,
        units: usize,
        #[serde(default)]
        both_towers: bool,
    },
    /// Inverted dropout with drop probability `p` (paper §4.2).
    Dropout { p: f32 },
}

fn one() -> usize {
    1
}

fn default_init() -> InitScheme {
    InitScheme::Caffe
}

/// A whole network: input and one tower's layer table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetSpec {
    pub name: String,
    /// The initialization `train` uses unless `--init` says otherwise.
    #[serde(default = "default_init")]
    pub init: InitScheme,
    pub input: InputSpec,
    pub layers: Vec<Layer>,
}

/// The built-in presets: name and TOML source.
pub const PRESETS: [(&str, &str); 4] = [
    ("paper", include_str!("../../presets/paper.toml")),
    ("small", include_str!("../../presets/small.toml")),
    (
        "figure1-relu",
        include_str!("../../presets/figure1-relu.toml"),
    ),
    (
        "figure1-tanh",
        include_str!("../../presets/figure1-tanh.toml"),
    ),
];

impl NetSpec {
    /// A built-in preset by name, or a TOML file when `name` is a path to one.
    pub fn load(name: &str) -> Result<NetSpec> {
        if let Some((_, source)) = PRESETS.iter().find(|(n, _)| *n == name) {
            return NetSpec::parse(source, Path::new(name));
        }
        let path = Path::new(name);
        if !path.exists() {
            let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(Error::Input(format!(
                "--preset {name}: no such preset or file (built-in presets: {})",
                known.join(", ")
            )));
        }
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        NetSpec::parse(&source, path)
    }

    /// Parses a TOML table; `origin` names it in errors.
    pub fn parse(source: &str, origin: &Path) -> Result<NetSpec> {
        toml::from_str(source).map_err(|e| Error::File {
            path: origin.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })
    }
}

/// Layers whose biases the paper sets to 1 (§5), Caffe to 0.1.
pub const POSITIVE_BIAS_LAYERS: [&str; 5] = ["conv2", "conv4", "conv5", "fc6", "fc7"];

/// How to draw the initial weights and biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InitScheme {
    /// Paper §5: weights N(0, 0.01²); biases 1 in conv2, conv4, conv5, fc6,
    /// fc7 and 0 elsewhere. Known to sit at loss ln(classes) for a while.
    Paper,
    /// Caffe's `bvlc_alexnet`: as the paper but std 0.005 in fc6 and fc7 and
    /// bias 0.1 instead of 1.
    Caffe,
    /// He et al. (2015): weights N(0, 2/fan_in), biases 0. Not the paper's;
    /// for the small presets, where std 0.01 starves the signal.
    He,
}

impl InitScheme {
    /// The standard deviation of `layer`'s weights, of fan-in `fan_in`.
    pub fn weight_std(self, layer: &str, fan_in: usize) -> f64 {
        match self {
            InitScheme::Paper => 0.01,
            InitScheme::Caffe if layer == "fc6" || layer == "fc7" => 0.005,
            InitScheme::Caffe => 0.01,
            InitScheme::He => (2.0 / fan_in as f64).sqrt(),
        }
    }

    /// The initial value of `layer`'s biases.
    pub fn bias(self, layer: &str) -> f32 {
        let positive = POSITIVE_BIAS_LAYERS.contains(&layer);
        match self {
            InitScheme::Paper if positive => 1.0,
            InitScheme::Caffe if positive => 0.1,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for (name, _) in PRESETS {
            let spec = NetSpec::load(name).unwrap();
            assert_eq!(spec.name, name);
        }
    }

    #[test]
    fn unknown_preset_is_an_input_error() {
        let err = NetSpec::load("nonesuch").unwrap_err();
        assert!(err.is_input());
        assert!(err.to_string().contains("nonesuch"));
    }

    #[test]
    fn malformed_file_names_the_file() {
        let err = NetSpec::parse(
            "name = \"x\"\n[input]\nchannels = 3\n",
            Path::new("bad.toml"),
        )
        .unwrap_err();
        assert!(err.is_input());
        assert!(err.to_string().starts_with("bad.toml:"), "{err}");
        let err = NetSpec::parse(
            "name = \"x\"\nlayers = [{type = \"conv\", name = \"c\", filters = 1, kernel = 1, colour = 2}]\n[input]\nchannels = 3\nsize = 8\n",
            Path::new("bad.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }
}
