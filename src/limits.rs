//! Limits checked before anything large is allocated: counts against the
//! range the program handles, and a job's predicted memory (what `summary`
//! prints) against the memory the device and the host have free.

use crate::error::{Error, Result};
use crate::net::buffers::BufferSizes;
use crate::net::plan::{Plan, TOWERS};
use crate::placement::Placement;

/// The largest batch any command takes.
pub const MAX_BATCH: u32 = 1 << 20;
/// The largest synthetic set, or count of images to evaluate: the shuffled
/// order alone takes 8 bytes an image.
pub const MAX_IMAGES: usize = 100_000_000;
/// The most image-decoding threads.
pub const MAX_WORKERS: u32 = 1024;
/// The largest image side `prepare` stores and `bench-data` crops.
pub const MAX_SIDE: u32 = 4096;

/// Bytes the host can still hand out (`MemAvailable` of /proc/meminfo), when known.
pub fn host_available() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// One tower's memory for a step at `batch`, in bytes, as `summary`
/// predicts it (weights, gradients, momentum, activations and their
/// gradients), computed in f64 so that no size can overflow.
pub fn tower_bytes(plan: &Plan, batch: usize) -> f64 {
    let params = plan.params_per_tower() as f64 * 4.0;
    let one = BufferSizes::new(plan, 1);
    3.0 * params + (one.kept() + one.gradients()) as f64 * 4.0 * batch as f64
}

/// Bytes as GiB, for messages.
fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// Refuses a `batch` whose towers would not fit where `placement` puts
/// them: both towers in host memory on the CPU, one GPU's free memory per
/// tower (two in emulation mode, the grouped network's whole on one GPU)
/// otherwise; the host then holds the batch's images.
pub fn check_fits(plan: &Plan, batch: usize, placement: Placement) -> Result<()> {
    // A net the grouped network cannot hold runs as two towers there.
    let (placement, _) = placement.for_plan(plan)?;
    let tower = tower_bytes(plan, batch);
    let too_big = |need: f64, have: f64, place: &str| {
        Error::Input(format!(
            "--batch {batch}: needs about {} ({} per tower, as `alexnet summary` estimates), {place} has {} free",
            gib(need),
            gib(tower),
            gib(have)
        ))
    };
    let host_need = match placement {
        Placement::Cpu { .. } => TOWERS as f64 * tower,
        _ => 2.0 * batch as f64 * plan.input.len() as f64 * 4.0,
    };
    if let Some(have) = host_available().filter(|&have| host_need > have) {
        return Err(too_big(host_need, have, "the host"));
    }
    let gpus: Vec<(usize, f64)> = match placement {
        Placement::Cpu { .. } => Vec::new(),
        Placement::Grouped { ordinal, .. } => {
            vec![(ordinal, tower_bytes(&plan.grouped()?, batch))]
        }
        Placement::OneGpu { ordinal, .. } => vec![(ordinal, TOWERS as f64 * tower)],
        Placement::TwoGpus { ordinals, .. } => ordinals.iter().map(|&o| (o, tower)).collect(),
    };
    for (ordinal, need) in gpus {
        let free = crate::device::cuda::probe::memory_free(ordinal)? as f64;
        if need > free {
            return Err(too_big(need, free, &format!("GPU {ordinal}")));
        }
    }
    Ok(())
}

/// Refuses a count above `max`, naming the flag.
pub fn check_count(flag: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(Error::Input(format!(
            "{flag} {value}: at most {max} (the largest this program takes)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_is_summarys_and_a_huge_batch_is_refused() {
        let plan = Plan::load("paper").unwrap();
        let m = crate::summary::MemoryEstimate::for_tower(&plan, 128);
        assert_eq!(tower_bytes(&plan, 128), m.total() as f64);
        let e = check_fits(&plan, MAX_BATCH as usize, Placement::cpu()).unwrap_err();
        assert!(
            e.to_string().starts_with("--batch 1048576: needs about"),
            "{e}"
        );
        assert!(e.is_input());
        assert!(check_count("--images", MAX_IMAGES + 1, MAX_IMAGES).is_err());
    }
}
