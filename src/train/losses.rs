//! The training loss as the loop sees it. Each step's loss statistics stay
//! on the towers' devices until they are read, in a run, at a progress line
//! or before a checkpoint; each step is then folded in on its own, in step
//! order, exactly as if it had been read at once: the NaN check, the
//! smoothed loss behind the stuck-loss hint, and the window of the next
//! progress line.

use super::window::Running;
use crate::device::LossStats;
use crate::error::Result;
use crate::replicas::Replicas;

/// A smoothed loss within this fraction of ln(classes) counts as "not learning".
const STUCK_BAND: f64 = 0.05;
/// Steps near ln(classes) before the hint.
pub(super) const STUCK_STEPS: usize = 300;
/// Weight of each step's loss in the smoothed loss (about a 50-step window).
const SMOOTHING: f64 = 0.02;

/// The loss of the steps queued and read so far.
pub(super) struct Losses {
    /// Steps queued whose statistics are still on the devices: (step, images).
    queued: Vec<(usize, usize)>,
    /// Sums since the last progress line.
    pub window: Running,
    smoothed: Option<f64>,
    stuck_steps: usize,
    hinted: bool,
    classes: usize,
}

/// What a read found besides the sums.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Read {
    /// The first step (1-based) whose loss is NaN or infinite; the steps
    /// after it in the same read are not folded in.
    pub diverged_at: Option<usize>,
    /// The stuck-loss hint, the first time it applies.
    pub hint: Option<String>,
}

impl Losses {
    /// No steps yet, for a net of `classes` classes.
    pub fn new(classes: usize) -> Self {
        Losses {
            queued: Vec::new(),
            window: Running::default(),
            smoothed: None,
            stuck_steps: 0,
            hinted: false,
            classes,
        }
    }

    /// Step `step` (0-based) of `images` images is queued.
    pub fn queued(&mut self, step: usize, images: usize) {
        self.queued.push((step, images));
    }

    /// Reads the statistics of every queued step from `towers` and folds
    /// them in.
    pub fn read(&mut self, towers: &Replicas) -> Result<Read> {
        if self.queued.is_empty() {
            return Ok(Read::default());
        }
        let stats = towers.take_stats()?;
        if stats.len() != self.queued.len() {
            return Err(crate::error::Error::Training(format!(
                "{} steps queued but {} losses read",
                self.queued.len(),
                stats.len()
            )));
        }
        let steps = std::mem::take(&mut self.queued);
        Ok(self.fold(steps.into_iter().zip(stats)))
    }

    /// Folds in each step's statistics, in order.
    fn fold(&mut self, steps: impl IntoIterator<Item = ((usize, usize), LossStats)>) -> Read {
        let chance = (self.classes as f64).ln();
        let mut read = Read::default();
        for ((step, images), stats) in steps {
            if !stats.loss_sum.is_finite() {
                read.diverged_at = Some(step + 1);
                return read;
            }
            let loss = stats.loss_sum / images as f64;
            let smooth = self.smoothed.map_or(loss, |s| s + SMOOTHING * (loss - s));
            self.smoothed = Some(smooth);
            self.stuck_steps = if (smooth - chance).abs() < STUCK_BAND * chance {
                self.stuck_steps + 1
            } else {
                0
            };
            if self.stuck_steps >= STUCK_STEPS && !self.hinted {
                self.hinted = true;
                read.hint = Some(format!(
                    "hint: the loss has stayed near ln({}) = {chance:.3}, chance level, for {STUCK_STEPS} steps: \
                 the paper's N(0, 0.01²) initialization is known to stall here; try --init he, or a smaller --lr",
                    self.classes
                ));
            }
            self.window.add(stats, images);
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(loss_sum: f64, top1: usize) -> LossStats {
        LossStats {
            loss_sum,
            top1,
            top5: top1 + 1,
        }
    }

    #[test]
    fn a_run_read_at_once_sums_as_its_steps_one_by_one() {
        let steps: Vec<((usize, usize), LossStats)> = (0..7)
            .map(|k| ((k, 4), stats(0.1 * k as f64 + 1.0 / 3.0, k % 3)))
            .collect();
        let mut at_once = Losses::new(10);
        at_once.fold(steps.clone());
        // One by one, as the loop summed them when it read every step.
        let (mut loss_sum, mut top1, mut top5, mut images) = (0.0, 0, 0, 0);
        for (_, s) in &steps {
            loss_sum += s.loss_sum;
            top1 += s.top1;
            top5 += s.top5;
            images += 4;
        }
        let w = &at_once.window;
        assert_eq!(w.stats.loss_sum.to_bits(), loss_sum.to_bits());
        assert_eq!((w.stats.top1, w.stats.top5, w.images), (top1, top5, images));
        let mut in_two = Losses::new(10);
        in_two.fold(steps[..3].to_vec());
        in_two.fold(steps[3..].to_vec());
        assert_eq!(in_two.window.stats, at_once.window.stats);
        assert_eq!(
            in_two.smoothed.map(f64::to_bits),
            at_once.smoothed.map(f64::to_bits)
        );
    }

    #[test]
    fn the_first_non_finite_step_is_named() {
        let mut losses = Losses::new(10);
        let read = losses.fold([
            ((4, 2), stats(1.0, 0)),
            ((5, 2), stats(f64::NAN, 0)),
            ((6, 2), stats(f64::INFINITY, 0)),
        ]);
        assert_eq!(read.diverged_at, Some(6));
        assert_eq!(losses.window.images, 2);
    }

    #[test]
    fn the_hint_comes_once_after_the_stuck_steps() {
        let mut losses = Losses::new(10);
        let chance = 10f64.ln();
        let stuck = |from: usize, n: usize| (from..from + n).map(|k| ((k, 1), stats(chance, 0)));
        assert_eq!(losses.fold(stuck(0, STUCK_STEPS - 1)).hint, None);
        let hint = losses.fold(stuck(STUCK_STEPS - 1, 1)).hint.unwrap();
        assert!(hint.contains("ln(10) = 2.303"), "{hint}");
        assert_eq!(losses.fold(stuck(STUCK_STEPS, 5)).hint, None);
    }
}
