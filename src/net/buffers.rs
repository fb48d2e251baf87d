//! The batch-sized buffers one tower holds for training, in one table: the
//! tower allocates from it and `summary` counts it, so the two cannot drift.

use super::plan::{Op, Plan, TOWERS};

/// Elements of one layer's batch-sized buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerBuffers {
    /// Its output, and (as long) the gradient with respect to it.
    pub output: usize,
    /// Both towers' inputs, and their gradient, for a layer that reads both (§3.2).
    pub gathered: Option<usize>,
    /// `k + α Σ x²` of an LRN layer (§3.3), kept for the backward pass.
    pub lrn_scale: Option<usize>,
}

/// Elements of every batch-sized buffer of one tower at a batch size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferSizes {
    /// The tower's input images.
    pub input: usize,
    /// Its half of them, where the batch splits evenly: with both towers on
    /// one GPU each uploads half a batch and the halves meet on the GPU.
    pub input_part: Option<usize>,
    /// Per layer, in layer order.
    pub layers: Vec<LayerBuffers>,
    /// Both towers' logits, gathered (none in a grouped plan).
    pub logits: usize,
}

impl BufferSizes {
    /// The buffers of one tower of `plan` training at `batch`.
    pub fn new(plan: &Plan, batch: usize) -> BufferSizes {
        let layers = plan
            .layers
            .iter()
            .map(|layer| LayerBuffers {
                output: batch * layer.output.len(),
                gathered: layer
                    .both_towers
                    .then(|| TOWERS * batch * layer.input.len()),
                lrn_scale: matches!(layer.op, Op::Lrn(_)).then(|| batch * layer.output.len()),
            })
            .collect();
        BufferSizes {
            input: batch * plan.input.len(),
            input_part: batch
                .is_multiple_of(TOWERS)
                .then(|| batch / TOWERS * plan.input.len()),
            layers,
            // A tower holding every class (a grouped plan) gathers none.
            logits: if plan.towers == 1 {
                0
            } else {
                plan.towers * batch * plan.logits_per_tower()
            },
        }
    }

    /// Elements kept for the backward pass: the input, every output, the
    /// gathered inputs, the LRN scales and the logits.
    pub fn kept(&self) -> usize {
        self.input
            + self.logits
            + self
                .layers
                .iter()
                .map(|l| l.output + l.gathered.unwrap_or(0) + l.lrn_scale.unwrap_or(0))
                .sum::<usize>()
    }

    /// Elements of the gradients with respect to outputs and gathered inputs.
    pub fn gradients(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.output + l.gathered.unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper net's buffers at batch 1, counted by hand from its shapes
    /// (docs/network.md): 48×55×55 after conv1, and so on.
    #[test]
    fn the_paper_towers_buffers_follow_its_shapes() {
        let sizes = BufferSizes::new(&Plan::load("paper").unwrap(), 1);
        assert_eq!(sizes.input, 3 * 227 * 227);
        assert_eq!(sizes.logits, 2 * 500);
        let conv1 = 48 * 55 * 55;
        assert_eq!(sizes.layers[0].output, conv1);
        let lrn1 = sizes.layers[2];
        assert_eq!((lrn1.output, lrn1.lrn_scale), (conv1, Some(conv1)));
        let conv3 = sizes.layers[8];
        assert_eq!(conv3.gathered, Some(2 * 128 * 13 * 13));
        let fc6 = sizes.layers[15];
        assert_eq!((fc6.output, fc6.gathered), (2048, Some(2 * 128 * 6 * 6)));
        let at_4 = BufferSizes::new(&Plan::load("paper").unwrap(), 4);
        assert_eq!(at_4.kept(), 4 * sizes.kept());
        assert_eq!(at_4.gradients(), 4 * sizes.gradients());
    }

    /// The grouped net holds both towers' activations, gathers nothing and
    /// keeps its logits as its last output.
    #[test]
    fn the_grouped_net_holds_both_towers_buffers() {
        let towers = BufferSizes::new(&Plan::load("paper").unwrap(), 2);
        let grouped = BufferSizes::new(&Plan::load("paper").unwrap().grouped().unwrap(), 2);
        assert_eq!(grouped.logits, 0);
        assert!(grouped.layers.iter().all(|l| l.gathered.is_none()));
        for (g, t) in grouped.layers.iter().zip(&towers.layers) {
            assert_eq!(g.output, TOWERS * t.output);
        }
        assert_eq!(grouped.input, towers.input);
    }
}
