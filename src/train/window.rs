//! What a run says as it goes: loss, accuracy and speed over the steps
//! since the last progress line, the stuck-loss hint, and the progress bar.

use crate::device::LossStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// Sums of [`LossStats`] over several batches.
#[derive(Default)]
pub struct Running {
    stats: LossStats,
    pub images: usize,
}

impl Running {
    /// Adds one batch of `images` images.
    pub fn add(&mut self, s: LossStats, images: usize) {
        self.stats.loss_sum += s.loss_sum;
        self.stats.top1 += s.top1;
        self.stats.top5 += s.top5;
        self.images += images;
    }

    /// Mean cross-entropy per image.
    pub fn loss(&self) -> f64 {
        self.stats.loss_sum / self.images.max(1) as f64
    }

    pub fn top1(&self) -> f64 {
        self.stats.top1 as f64 / self.images.max(1) as f64
    }

    pub fn top5(&self) -> f64 {
        self.stats.top5 as f64 / self.images.max(1) as f64
    }
}

/// The training steps since the last progress line.
pub struct Window {
    pub running: Running,
    /// Seconds spent in those steps (loading and training).
    pub seconds: f64,
    /// When the window opened, and the data wait counted by then.
    opened: Instant,
    waited_before: f64,
}

impl Window {
    /// A window opening now, when the stream has waited `waited_s` for data.
    pub fn open(waited_s: f64) -> Window {
        Window {
            running: Running::default(),
            seconds: 0.0,
            opened: Instant::now(),
            waited_before: waited_s,
        }
    }

    pub fn images_per_s(&self) -> f64 {
        self.running.images as f64 / self.seconds.max(1e-9)
    }

    /// The fraction of the window's wall time spent waiting for data, when
    /// the stream has waited `waited_s` in all.
    pub fn data_wait(&self, waited_s: f64) -> f64 {
        (waited_s - self.waited_before) / self.opened.elapsed().as_secs_f64().max(1e-9)
    }
}

/// A smoothed loss within this fraction of ln(classes) counts as "not learning".
const STUCK_BAND: f64 = 0.05;
/// Steps near ln(classes) before the hint.
pub const STUCK_STEPS: usize = 300;
/// Weight of each step's loss in the smoothed loss (about a 50-step window).
const SMOOTHING: f64 = 0.02;

/// Watches for the known stall of the paper's N(0, 0.01²) initialization
/// on narrow nets: a smoothed loss stuck at chance, ln(classes).
pub struct StuckWatch {
    classes: usize,
    chance: f64,
    smoothed: Option<f64>,
    steps: usize,
    hinted: bool,
}

impl StuckWatch {
    pub fn new(classes: usize) -> StuckWatch {
        StuckWatch {
            classes,
            chance: (classes as f64).ln(),
            smoothed: None,
            steps: 0,
            hinted: false,
        }
    }

    /// Takes one step's mean loss; the hint, once, when the loss has stayed
    /// at chance for [`STUCK_STEPS`] steps.
    pub fn observe(&mut self, loss: f64) -> Option<String> {
        let smooth = self.smoothed.map_or(loss, |s| s + SMOOTHING * (loss - s));
        self.smoothed = Some(smooth);
        let near = (smooth - self.chance).abs() < STUCK_BAND * self.chance;
        self.steps = if near { self.steps + 1 } else { 0 };
        if self.steps < STUCK_STEPS || self.hinted {
            return None;
        }
        self.hinted = true;
        Some(format!(
            "hint: the loss has stayed near ln({}) = {:.3}, chance level, for {STUCK_STEPS} steps: \
             the paper's N(0, 0.01²) initialization is known to stall here; try --init he, or a smaller --lr",
            self.classes, self.chance
        ))
    }
}

/// What the progress bar says beside the steps and the ETA.
pub fn bar_message(loss: f64, images_per_s: f64) -> String {
    format!("loss {loss:.4}  {images_per_s:.1} img/s")
}

/// The progress bar: steps, loss, images/s and the ETA on `target` (stderr,
/// which indicatif leaves blank when it is not a terminal; hidden with `--quiet`).
pub fn progress_bar(total: usize, done: usize, target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .expect("a valid template"),
    );
    bar.set_position(done as u64);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    #[test]
    fn the_progress_bar_shows_steps_loss_speed_and_eta() {
        let term = InMemoryTerm::new(4, 120);
        let bar = progress_bar(
            1000,
            250,
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        bar.set_message(bar_message(1.2345, 678.9));
        bar.set_position(251);
        bar.tick();
        let shown = term.contents();
        for part in ["251/1000 steps", "loss 1.2345", "678.9 img/s", "ETA"] {
            assert!(shown.contains(part), "{part:?} not in {shown:?}");
        }
    }

    #[test]
    fn the_stuck_hint_comes_once_after_its_steps_at_chance_and_never_when_learning() {
        let chance = 10f64.ln();
        let mut watch = StuckWatch::new(10);
        for step in 1..STUCK_STEPS {
            assert_eq!(watch.observe(chance), None, "step {step}");
        }
        let hint = watch.observe(chance).expect("the hint at step 300");
        assert!(hint.contains("ln(10) = 2.303"), "{hint}");
        assert_eq!(watch.observe(chance), None, "only once");
        let mut learning = StuckWatch::new(10);
        for step in 0..2 * STUCK_STEPS {
            assert_eq!(learning.observe(0.5 * chance), None, "step {step}");
        }
    }
}
