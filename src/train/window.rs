//! What a run says as it goes: loss, accuracy and speed over the steps
//! since the last progress line, and the progress bar.

use crate::device::LossStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;

/// Sums of [`LossStats`] over several batches.
#[derive(Debug, Default)]
pub struct Running {
    pub stats: LossStats,
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
            seconds: 0.0,
            opened: Instant::now(),
            waited_before: waited_s,
        }
    }

    /// The rate of `images` trained in the window's seconds.
    pub fn images_per_s(&self, images: usize) -> f64 {
        images as f64 / self.seconds.max(1e-9)
    }

    /// The fraction of the window's wall time spent waiting for data, when
    /// the stream has waited `waited_s` in all.
    pub fn data_wait(&self, waited_s: f64) -> f64 {
        (waited_s - self.waited_before) / self.opened.elapsed().as_secs_f64().max(1e-9)
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
}
