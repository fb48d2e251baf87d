//! Where the two towers run: two GPUs, one tower each (the paper's layout);
//! one GPU holding both, as one grouped network (the default there) or as
//! two towers on two streams (emulation mode, `--emulate`); or the CPU (one
//! thread per tower, host memory between them), chosen from `--cpu`,
//! `--gpus`, `--emulate`, `--precision` and what the machine has.

use crate::device::cuda::{CudaOptions, probe};
use crate::device::precision::{Precision, Storage};
use crate::error::{Error, Result};
use crate::net::plan::Plan;
use serde::Serialize;
use std::fmt;

/// Where the towers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Placement {
    /// One thread per tower, host memory between them, storing buffers as
    /// `precision` says (tf32 is exact f32 here).
    Cpu { precision: Precision },
    /// Both towers on GPU `ordinal` as one network, each layer's two
    /// halves in one grouped call on one stream: what the two towers
    /// compute, at one GPU's full speed.
    Grouped {
        ordinal: usize,
        options: CudaOptions,
    },
    /// Both towers on GPU `ordinal`, on two streams meeting by device
    /// copies (emulation mode): the two-GPU dataflow on one GPU.
    OneGpu {
        ordinal: usize,
        options: CudaOptions,
    },
    /// Tower r on GPU `ordinals[r]`, as the paper ran it.
    TwoGpus {
        ordinals: [usize; 2],
        options: CudaOptions,
    },
}

impl Placement {
    /// Whether the towers run on a GPU.
    pub fn is_gpu(&self) -> bool {
        !matches!(self, Placement::Cpu { .. })
    }

    /// The CPU in exact f32.
    pub fn cpu() -> Placement {
        Placement::Cpu {
            precision: Precision::Fp32,
        }
    }

    /// The precision the towers run at.
    pub fn precision(&self) -> Precision {
        match self {
            Placement::Cpu { precision } => *precision,
            Placement::Grouped { options, .. }
            | Placement::OneGpu { options, .. }
            | Placement::TwoGpus { options, .. } => match options.storage {
                Storage::Bf16 => Precision::Bf16,
                Storage::F16 => Precision::Fp16,
                Storage::Full if options.tf32 => Precision::Tf32,
                Storage::Full => Precision::Fp32,
            },
        }
    }

    /// Bytes of each element the towers exchange: 2 where a GPU stores 16
    /// bits, else 4 (the CPU's towers hold f32 at every precision).
    pub fn exchange_element_bytes(&self) -> usize {
        match self {
            Placement::Cpu { .. } => 4,
            Placement::Grouped { options, .. }
            | Placement::OneGpu { options, .. }
            | Placement::TwoGpus { options, .. } => match options.storage {
                Storage::Full => 4,
                Storage::Bf16 | Storage::F16 => 2,
            },
        }
    }

    /// This placement as it runs `plan`: where one grouped network cannot
    /// hold the plan, the grouped network's GPU in emulation mode instead,
    /// with why; every other placement as it is. Errors other than that
    /// refusal stand.
    pub fn for_plan(self, plan: &Plan) -> Result<(Placement, Option<String>)> {
        let Placement::Grouped { ordinal, options } = self else {
            return Ok((self, None));
        };
        match plan.grouped() {
            Ok(_) => Ok((self, None)),
            Err(why) if why.is_input() => Ok((
                Placement::OneGpu { ordinal, options },
                Some(why.to_string()),
            )),
            Err(why) => Err(why),
        }
    }

    /// The GPUs the towers run on, in tower order (none on the CPU).
    pub fn gpus(&self) -> Vec<usize> {
        match *self {
            Placement::Cpu { .. } => vec![],
            Placement::Grouped { ordinal, .. } | Placement::OneGpu { ordinal, .. } => vec![ordinal],
            Placement::TwoGpus { ordinals, .. } => ordinals.to_vec(),
        }
    }

    /// The placement `--cpu` and `--gpus LIST` ask for; with neither, GPUs 0
    /// and 1 where there are two or more, GPU 0 where there is one, else the
    /// CPU. One GPU runs the grouped network, or with `emulate` the two
    /// towers (emulation mode). Returns a one-line note saying what was
    /// chosen and why. The GPU stores 16 bits where `precision` asks it
    /// (bf16, fp16).
    pub fn choose(
        cpu: bool,
        gpus: Option<&str>,
        emulate: bool,
        precision: Precision,
    ) -> Result<(Placement, String)> {
        let on_cpu = Placement::Cpu { precision };
        let options = CudaOptions::at(precision);
        let (placement, note) = match (cpu, gpus) {
            (true, Some(_)) => return Err(Error::Input("--cpu and --gpus: choose one".into())),
            (true, None) => (on_cpu, format!("device: {on_cpu}")),
            (false, Some(list)) => {
                let placement = Placement::from_gpus(list, options)?.grouped_unless(emulate);
                (placement, format!("device: {placement}"))
            }
            (false, None) => match probe::gpu_count() {
                Ok(count) => Placement::default_for(count, options, emulate),
                Err(why) => (on_cpu, format!("device: {on_cpu} ({why})")),
            },
        };
        if emulate && !matches!(placement, Placement::OneGpu { .. }) {
            return Err(Error::Input(format!(
                "--emulate runs both towers on one GPU (--gpus N); it does not apply to {placement}"
            )));
        }
        Ok((placement, note))
    }

    /// Emulation mode as the grouped network on the same GPU, unless
    /// `emulate`; other placements as they are.
    fn grouped_unless(self, emulate: bool) -> Placement {
        match self {
            Placement::OneGpu { ordinal, options } if !emulate => {
                Placement::Grouped { ordinal, options }
            }
            other => other,
        }
    }

    /// The placement without `--cpu` or `--gpus` on a machine with `count`
    /// GPUs (at least one), and the note saying so.
    fn default_for(count: usize, options: CudaOptions, emulate: bool) -> (Placement, String) {
        if count >= 2 {
            let placement = Placement::TwoGpus {
                ordinals: [0, 1],
                options,
            };
            (
                placement,
                format!("device: {placement}; the paper's layout, the default with {count} GPUs"),
            )
        } else {
            let placement = Placement::OneGpu {
                ordinal: 0,
                options,
            }
            .grouped_unless(emulate);
            (
                placement,
                format!("device: {placement}; the default with one GPU"),
            )
        }
    }

    /// `--gpus LIST`: GPU ordinals separated by commas, each present, none twice.
    pub fn from_gpus(list: &str, options: CudaOptions) -> Result<Placement> {
        let bad = |why: String| Error::Input(format!("--gpus {list}: {why}"));
        let ordinals = gpu_list(list)?;
        if ordinals.len() > 2 {
            return Err(bad("the net has two towers: give one GPU or two".into()));
        }
        present(list, &ordinals)?;
        match ordinals[..] {
            [ordinal] => Ok(Placement::OneGpu { ordinal, options }),
            [a, b] => Ok(Placement::TwoGpus {
                ordinals: [a, b],
                options,
            }),
            _ => Err(bad("give one GPU or two".into())),
        }
    }

    /// `train --gpus LIST` with more than two GPUs: an even count, one pair
    /// of the net's towers (a replica) on each two GPUs in the order given.
    /// `None` for a list of one or two GPUs (one pair, [`Placement::from_gpus`]).
    pub fn replicas_from_gpus(list: &str, options: CudaOptions) -> Result<Option<Vec<Placement>>> {
        let ordinals = gpu_list(list)?;
        if ordinals.len() <= 2 {
            return Ok(None);
        }
        if !ordinals.len().is_multiple_of(2) {
            return Err(Error::Input(format!(
                "--gpus {list}: {} GPUs; replicas of the two-tower pair need an even count",
                ordinals.len()
            )));
        }
        present(list, &ordinals)?;
        Ok(Some(
            ordinals
                .chunks_exact(2)
                .map(|pair| Placement::TwoGpus {
                    ordinals: [pair[0], pair[1]],
                    options,
                })
                .collect(),
        ))
    }
}

/// The GPU ordinals of `--gpus LIST`, none twice.
fn gpu_list(list: &str) -> Result<Vec<usize>> {
    let bad = |why: String| Error::Input(format!("--gpus {list}: {why}"));
    let ordinals = list
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| bad(format!("`{s}` is not a GPU number")))
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, g) in ordinals.iter().enumerate() {
        if ordinals[..i].contains(g) {
            return Err(bad(format!("GPU {g} is listed twice")));
        }
    }
    Ok(ordinals)
}

/// Fails unless this machine has every GPU of `ordinals` (from `--gpus LIST`).
fn present(list: &str, ordinals: &[usize]) -> Result<()> {
    let bad = |why: String| Error::Input(format!("--gpus {list}: {why}"));
    let count = probe::gpu_count().map_err(bad)?;
    if let Some(g) = ordinals.iter().find(|&&g| g >= count) {
        return Err(bad(format!(
            "there is no GPU {g}; this machine has {count} (0..{})",
            count - 1
        )));
    }
    Ok(())
}

/// How a GPU placement's numbers are stored and computed, for its line.
fn gpu_numbers(options: &CudaOptions) -> String {
    match options.storage {
        Storage::Full if options.tf32 => ", TF32 allowed".into(),
        Storage::Full => String::new(),
        Storage::Bf16 => ", bf16 storage with f32 master weights".into(),
        Storage::F16 => ", fp16 storage with f32 master weights".into(),
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu { precision } => match precision {
                Precision::Fp32 => write!(f, "CPU, one thread per tower"),
                Precision::Tf32 => {
                    write!(f, "CPU, one thread per tower, tf32 (exact f32 on the CPU)")
                }
                Precision::Bf16 | Precision::Fp16 => write!(
                    f,
                    "CPU, one thread per tower, {} storage with f32 master weights",
                    precision.name()
                ),
            },
            Placement::Grouped { ordinal, options } => write!(
                f,
                "GPU {ordinal}, both towers as one grouped network{}",
                gpu_numbers(options)
            ),
            Placement::OneGpu { ordinal, options } => write!(
                f,
                "GPU {ordinal}, both towers on it (emulation mode){}",
                gpu_numbers(options)
            ),
            Placement::TwoGpus { ordinals, options } => write!(
                f,
                "GPUs {} and {}, one tower each{}",
                ordinals[0],
                ordinals[1],
                gpu_numbers(options)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grouped_network_runs_in_emulation_mode_a_net_it_cannot_hold() {
        let options = CudaOptions::default();
        let grouped = Placement::Grouped {
            ordinal: 3,
            options,
        };
        let paper = Plan::load("paper").unwrap();
        assert_eq!(grouped.for_plan(&paper).unwrap(), (grouped, None));
        let spec = crate::net::spec::NetSpec::parse(
            "name = \"own\"\nlayers = [{type = \"conv\", name = \"c\", filters = 4, kernel = 3}, \
             {type = \"fc\", name = \"own\", units = 2}]\n[input]\nchannels = 3\nsize = 16\n",
            std::path::Path::new("own.toml"),
        )
        .unwrap();
        let own = Plan::new(spec).unwrap();
        let (placement, why) = grouped.for_plan(&own).unwrap();
        assert_eq!(
            placement,
            Placement::OneGpu {
                ordinal: 3,
                options
            }
        );
        assert!(why.unwrap().contains("layer own"));
        let two = Placement::TwoGpus {
            ordinals: [0, 1],
            options,
        };
        assert_eq!(two.for_plan(&own).unwrap(), (two, None));
    }

    #[test]
    fn exchanges_count_the_bytes_each_device_stores() {
        let gpu = |precision| Placement::OneGpu {
            ordinal: 0,
            options: CudaOptions::at(precision),
        };
        let (full, half) = (size_of::<f32>(), size_of::<half::bf16>());
        for precision in [
            Precision::Fp32,
            Precision::Tf32,
            Precision::Bf16,
            Precision::Fp16,
        ] {
            // The CPU's towers hold f32 and round it at 16 bits.
            assert_eq!(Placement::Cpu { precision }.exchange_element_bytes(), full);
            let sixteen = matches!(precision, Precision::Bf16 | Precision::Fp16);
            let want = if sixteen { half } else { full };
            assert_eq!(
                gpu(precision).exchange_element_bytes(),
                want,
                "{precision:?}"
            );
        }
    }

    fn error(list: &str) -> String {
        Placement::from_gpus(list, CudaOptions::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn malformed_gpu_lists_are_named_before_any_gpu_is_asked_for() {
        assert_eq!(error("0,x"), "--gpus 0,x: `x` is not a GPU number");
        assert_eq!(error("1,1"), "--gpus 1,1: GPU 1 is listed twice");
        assert!(error("0,1,2").contains("two towers"));
        let replicas = |list| Placement::replicas_from_gpus(list, CudaOptions::default());
        assert_eq!(
            replicas("0,1,2").unwrap_err().to_string(),
            "--gpus 0,1,2: 3 GPUs; replicas of the two-tower pair need an even count"
        );
        assert_eq!(
            replicas("0,1,2,1").unwrap_err().to_string(),
            "--gpus 0,1,2,1: GPU 1 is listed twice"
        );
        assert_eq!(replicas("0,1").unwrap(), None);
    }

    #[test]
    fn two_gpus_or_more_get_the_papers_layout_by_default() {
        let options = CudaOptions::default();
        let (one, note) = Placement::default_for(1, options, false);
        assert_eq!(
            one,
            Placement::Grouped {
                ordinal: 0,
                options
            }
        );
        assert_eq!(
            note,
            "device: GPU 0, both towers as one grouped network; the default with one GPU"
        );
        let (emulated, note) = Placement::default_for(1, options, true);
        assert_eq!(
            emulated,
            Placement::OneGpu {
                ordinal: 0,
                options
            }
        );
        assert_eq!(
            note,
            "device: GPU 0, both towers on it (emulation mode); the default with one GPU"
        );
        for count in [2, 8] {
            let (two, note) = Placement::default_for(count, options, false);
            assert_eq!(
                two,
                Placement::TwoGpus {
                    ordinals: [0, 1],
                    options
                }
            );
            assert_eq!(
                note,
                format!(
                    "device: GPUs 0 and 1, one tower each; the paper's layout, the default with {count} GPUs"
                )
            );
        }
    }

    #[test]
    fn a_gpu_placement_stores_what_the_precision_asks() {
        for precision in [
            Precision::Fp32,
            Precision::Tf32,
            Precision::Bf16,
            Precision::Fp16,
        ] {
            let options = CudaOptions::at(precision);
            assert_eq!(options.storage, precision.storage());
            let gpu = Placement::OneGpu {
                ordinal: 0,
                options,
            };
            assert_eq!(gpu.precision(), precision);
            let line = gpu.to_string();
            match precision {
                Precision::Fp32 => assert!(line.ends_with("(emulation mode)"), "{line}"),
                Precision::Tf32 => assert!(line.ends_with(", TF32 allowed"), "{line}"),
                _ => assert!(
                    line.contains(&format!("{} storage", precision.name())),
                    "{line}"
                ),
            }
        }
        let (cpu, _) = Placement::choose(true, None, false, Precision::Bf16).unwrap();
        assert_eq!(cpu.precision(), Precision::Bf16);
    }

    #[test]
    fn cpu_and_gpus_together_are_refused() {
        let e = Placement::choose(true, Some("0"), false, Precision::Fp32).unwrap_err();
        assert!(e.is_input());
    }

    #[test]
    fn emulate_on_the_cpu_is_refused_naming_the_flag() {
        let e = Placement::choose(true, None, true, Precision::Fp32).unwrap_err();
        assert!(e.is_input());
        assert!(
            e.to_string()
                .starts_with("--emulate runs both towers on one GPU"),
            "{e}"
        );
        assert!(e.to_string().contains("does not apply to CPU"), "{e}");
    }
}
