//! `alexnet summary`: shapes, parameters, multiply-adds and memory per layer,
//! and whether one tower fits the paper's 3 GB GTX 580.

use crate::net::buffers::BufferSizes;
use crate::net::plan::{Plan, TOWERS};
use std::fmt::Write;

/// Memory of the paper's GPUs, GTX 580 with 3 GB (§3.2).
pub const GTX580_BYTES: usize = 3 << 30;

/// One device's training memory at a batch size, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: usize,
    pub gradients: usize,
    pub momentum: usize,
    pub activations: usize,
    pub activation_gradients: usize,
}

impl MemoryEstimate {
    /// One tower's memory for training at `batch` (f32 everywhere).
    pub fn for_tower(plan: &Plan, batch: usize) -> Self {
        let params = plan.params_per_tower() * 4;
        let buffers = BufferSizes::new(plan, batch);
        let (kept, grads) = (buffers.kept(), buffers.gradients());
        MemoryEstimate {
            weights: params,
            gradients: params,
            momentum: params,
            activations: kept * 4,
            activation_gradients: grads * 4,
        }
    }

    /// The sum of all parts.
    pub fn total(&self) -> usize {
        self.weights + self.gradients + self.momentum + self.activations + self.activation_gradients
    }
}

/// What one GPU holds at its peak while training at a batch size, for a
/// number of towers on it: the tensors exactly (as the towers allocate
/// them), the cuDNN workspace as its bound. The CUDA context (and NCCL's
/// buffers, with two GPUs) the driver sizes; `bench` measures them before
/// the towers are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DevicePeak {
    /// Weights, gradients, momentum, activations, their gradients, labels,
    /// loss statistics and the copy link's scratch buffer, of every tower.
    pub tensors: usize,
    /// At most this much cuDNN workspace (one per tower).
    pub workspace_bound: usize,
}

impl DevicePeak {
    /// The peak of a GPU holding `towers` towers (1 with `--gpus 0,1`, 2 with `--gpus 0`).
    pub fn new(plan: &Plan, batch: usize, towers: usize) -> Self {
        let scratch = crate::link::exchanges(plan, batch)
            .iter()
            .filter(|e| e.direction == crate::link::Direction::ReduceScatter)
            .map(|e| e.elements * 4)
            .max()
            .unwrap_or(0);
        // The input staged in turns (f32 images at most: u8 crops and their
        // offsets take less), the labels (u32) in turns, and per-image loss
        // statistics (3 × f64). Towers sharing a GPU each stage and hold
        // their half of an even batch, then gather the whole.
        use crate::device::cuda::{INPUT_TURNS, LABEL_TURNS};
        let part = BufferSizes::new(plan, batch)
            .input_part
            .filter(|_| towers > 1);
        let staged = part.unwrap_or(batch * plan.input.len());
        let per_batch = INPUT_TURNS * staged * 4
            + part.unwrap_or(0) * 4
            + LABEL_TURNS * batch * 4
            + batch * 3 * 8;
        let tower = MemoryEstimate::for_tower(plan, batch).total() + scratch + per_batch;
        DevicePeak {
            tensors: towers * tower,
            workspace_bound: towers * crate::device::cuda::WORKSPACE_LIMIT,
        }
    }

    /// The most the towers may hold.
    pub fn upper(&self) -> usize {
        self.tensors + self.workspace_bound
    }
}

/// Bytes as MiB or GiB.
pub fn bytes(n: usize) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

/// Thousands separated by commas.
pub fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report `alexnet summary` prints.
pub fn render(plan: &Plan, batch: usize) -> String {
    let mut s = String::new();
    let spec = &plan.spec;
    let _ = writeln!(
        s,
        "preset {}: {}×{}×{} input, {} classes, {} towers (each row is one tower; both are alike)\n",
        spec.name,
        spec.input.channels,
        spec.input.size,
        spec.input.size,
        plan.classes(),
        TOWERS
    );
    let _ = writeln!(
        s,
        "{:<10} {:<6} {:>13} {:>12} {:>12} {:>12}",
        "layer", "reads", "output", "params", "MACs/image", "act/image"
    );
    for layer in &plan.layers {
        let reads = if layer.both_towers { "both" } else { "own" };
        let macs = layer.macs();
        let macs = if macs > 0 {
            format!("{:.1} M", macs as f64 / 1e6)
        } else {
            "-".into()
        };
        let params = if layer.has_params() {
            grouped(layer.params())
        } else {
            "-".into()
        };
        let act = layer.output.len() * 4;
        let _ = writeln!(
            s,
            "{:<10} {:<6} {:>13} {:>12} {:>12} {:>9.1} KB",
            layer.name,
            reads,
            layer.output.to_string(),
            params,
            macs,
            act as f64 / 1e3
        );
    }
    let _ = writeln!(
        s,
        "\nwhole net: {} parameters, {:.1} M multiply-adds per image (forward)",
        grouped(plan.params()),
        plan.macs() as f64 / 1e6
    );
    let _ = writeln!(
        s,
        "replicas (train --replicas R, or --gpus with 2R GPUs): each tower all-reduces {} of gradients per step with its replicas (a ring sends and receives 2(R−1)/R of that)",
        bytes(crate::reduce::bytes_per_step(plan.params_per_tower()))
    );
    memory(&mut s, plan, batch);
    s
}

/// One tower's training memory at `batch`, and each GPU's predicted peak.
fn memory(s: &mut String, plan: &Plan, batch: usize) {
    let m = MemoryEstimate::for_tower(plan, batch);
    let _ = writeln!(
        s,
        "training memory per device (one tower) at batch {batch}:"
    );
    let _ = writeln!(
        s,
        "  weights {}, gradients {}, momentum {}",
        bytes(m.weights),
        bytes(m.gradients),
        bytes(m.momentum)
    );
    let _ = writeln!(
        s,
        "  activations kept for backward {}, their gradients {}",
        bytes(m.activations),
        bytes(m.activation_gradients)
    );
    let fits = if m.total() <= GTX580_BYTES {
        "fits"
    } else {
        "does not fit"
    };
    let _ = writeln!(s, "  total {}: {fits} a 3 GB GTX 580", bytes(m.total()));
    let _ = writeln!(
        s,
        "predicted peak per GPU at batch {batch}, besides the CUDA context:"
    );
    let mut peaks = vec![
        (
            DevicePeak::new(plan, batch, 1),
            "one tower per GPU (--gpus 0,1)",
        ),
        (
            DevicePeak::new(plan, batch, 2),
            "both towers in emulation mode (--gpus 0 --emulate)",
        ),
    ];
    // A net whose towers one grouped network cannot hold has no such line.
    if let Ok(grouped) = plan.grouped() {
        peaks.insert(
            1,
            (
                DevicePeak::new(&grouped, batch, 1),
                "both towers as one grouped network (--gpus 0)",
            ),
        );
    }
    for (peak, how) in peaks {
        let _ = writeln!(
            s,
            "  {how}: {} to {} (tensors {}, cuDNN workspace at most {})",
            bytes(peak.tensors),
            bytes(peak.upper()),
            bytes(peak.tensors),
            bytes(peak.workspace_bound)
        );
    }
    let _ = writeln!(
        s,
        "  not counted: the CUDA context (and NCCL's buffers), which the driver sizes;\n  \
         `bench` on a GPU measures them and compares the rest with this prediction"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_summary_reads_the_spec_totals() {
        let text = render(&Plan::load("paper").unwrap(), 128);
        assert!(text.contains("60,965,224 parameters"), "{text}");
        assert!(text.contains("724.4 M multiply-adds per image"), "{text}");
        for shape in ["48×55×55", "48×27×27", "128×13×13", "128×6×6"] {
            assert!(text.contains(shape), "{shape}");
        }
        assert!(text.contains(": fits a 3 GB GTX 580"), "{text}");
        for placement in ["(--gpus 0,1)", "(--gpus 0)", "(--gpus 0 --emulate)"] {
            assert!(text.contains(placement), "{placement}: {text}");
        }
        // One grouped network holds less than emulation mode's two towers.
        let plan = Plan::load("paper").unwrap();
        let grouped = DevicePeak::new(&plan.grouped().unwrap(), 128, 1);
        assert!(grouped.tensors < DevicePeak::new(&plan, 128, 2).tensors);
    }

    #[test]
    fn memory_grows_with_the_batch() {
        let plan = Plan::load("paper").unwrap();
        let (small, large) = (
            MemoryEstimate::for_tower(&plan, 1),
            MemoryEstimate::for_tower(&plan, 2048),
        );
        assert_eq!(small.weights, 60_965_224 / 2 * 4);
        assert!(large.total() > GTX580_BYTES);
        assert!(render(&plan, 2048).contains("does not fit"));
    }

    #[test]
    fn a_device_peak_counts_what_the_towers_allocate() {
        use crate::device::cpu::CpuDevice;
        use crate::link::host::HostLink;
        use crate::net::init::init_twin;
        use crate::net::params::split_twin;
        use crate::net::spec::InitScheme;
        use crate::tower::Tower;
        use std::sync::Arc;
        let plan = Arc::new(Plan::load("small").unwrap());
        let batch = 3;
        let params = split_twin(&plan, &init_twin(&plan, InitScheme::He, 1)).unwrap();
        let [link, _other] = HostLink::pair();
        let tower = Tower::new(
            Arc::clone(&plan),
            CpuDevice::<f32>::default(),
            link,
            batch,
            &params[0],
        )
        .unwrap();
        // Counted independently: every weight and bias three times (weights,
        // gradients, momentum) and every batch-sized buffer the tower holds.
        let held: usize = params[0]
            .iter()
            .map(|l| l.bias.len() + l.weights.iter().map(Vec::len).sum::<usize>())
            .sum();
        let independent = 4 * (3 * held + tower.activation_elements());
        let peak = DevicePeak::new(&plan, batch, 1);
        let extras = peak.tensors - independent;
        // Only the staged input and labels, the loss statistics and the
        // copy scratch remain.
        let conv3_input = batch
            * plan
                .layers
                .iter()
                .find(|l| l.both_towers)
                .unwrap()
                .input
                .len();
        let staged = 2 * batch * plan.input.len() * 4 + 3 * batch * 4;
        assert_eq!(extras, staged + batch * 24 + conv3_input * 4);
        assert_eq!(DevicePeak::new(&plan, batch, 2).tensors, 2 * peak.tensors);
        assert_eq!(peak.upper() - peak.tensors, 4 << 30);
    }

    #[test]
    fn the_grouped_networks_peak_counts_what_it_allocates() {
        use crate::device::cpu::CpuDevice;
        use crate::link::solo::SoloLink;
        use crate::net::init::init_twin;
        use crate::net::params::twin_as_grouped;
        use crate::net::spec::InitScheme;
        use crate::tower::Tower;
        use std::sync::Arc;
        let plan = Plan::load("small").unwrap();
        let grouped = Arc::new(plan.grouped().unwrap());
        let batch = 3;
        let params = twin_as_grouped(&plan, &init_twin(&plan, InitScheme::He, 1)).unwrap();
        let tower = Tower::new(
            Arc::clone(&grouped),
            CpuDevice::<f32>::default(),
            SoloLink,
            batch,
            &params,
        )
        .unwrap();
        // Every weight and bias of the whole net three times, every buffer
        // it holds; then the whole batch staged, the labels and the loss
        // statistics, and no exchange scratch.
        let held: usize = params
            .iter()
            .map(|l| l.bias.len() + l.weights.iter().map(Vec::len).sum::<usize>())
            .sum();
        assert_eq!(held, plan.params());
        let independent = 4 * (3 * held + tower.activation_elements());
        let staged = 2 * batch * plan.input.len() * 4 + 3 * batch * 4 + batch * 24;
        let peak = DevicePeak::new(&grouped, batch, 1);
        assert_eq!(peak.tensors, independent + staged);
    }
}
