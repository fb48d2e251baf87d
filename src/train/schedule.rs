//! Learning-rate schedules: the paper's divide-by-10 when the validation
//! error stops improving (§5), a step schedule, and cosine decay.

use serde::{Deserialize, Serialize};

/// Which schedule, and its constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// §5: "divide the learning rate by 10 when the validation error rate
    /// stopped improving": multiply by `factor` after `patience` epochs
    /// without a lower top-1 error (by at least `threshold`), at most `max_drops`
    /// times (the paper dropped it three times).
    Plateau {
        factor: f32,
        patience: usize,
        threshold: f64,
        max_drops: usize,
    },
    /// Multiply by `gamma` every `every` epochs.
    Step { every: usize, gamma: f32 },
    /// From the base rate down to `min_lr` along half a cosine over the run's steps.
    Cosine { min_lr: f32 },
    /// The base rate throughout.
    Constant,
}

/// The default: cosine decay to 0 over the run. A run is given as a
/// number of epochs, and cosine decay spends all of them, ending at a small
/// rate however few there are; the paper's plateau rule needs epochs enough
/// to see the error stall, and on a short run either cuts the rate too soon
/// (on one noisy epoch) or too late to settle.
impl Default for Schedule {
    fn default() -> Self {
        Schedule::Cosine { min_lr: 0.0 }
    }
}

impl Schedule {
    /// The paper's rule (§5): divide by 10 once the error has not improved
    /// by 0.1 % for 2 epochs (so one noisy epoch does not cut the rate), 3 times at most.
    pub fn plateau() -> Self {
        Schedule::Plateau {
            factor: 0.1,
            patience: 2,
            threshold: 1e-3,
            max_drops: 3,
        }
    }
}

/// What a schedule remembers between epochs; saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The rate before any per-step shaping (what plateau and step change).
    pub lr: f32,
    /// The lowest validation top-1 error so far.
    pub best_error: Option<f64>,
    /// Epochs since it last improved.
    pub stale_epochs: usize,
    pub drops: usize,
}

impl ScheduleState {
    pub fn new(base_lr: f32) -> Self {
        ScheduleState {
            lr: base_lr,
            best_error: None,
            stale_epochs: 0,
            drops: 0,
        }
    }
}

/// A learning rate as people write it: six significant digits at most,
/// `1e-5` rather than f32's `1.0000001e-5`.
pub fn show_lr(lr: f32) -> String {
    let text = format!("{lr:.5e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
            format!("{mantissa}e{exponent}")
        }
        None => text,
    }
}

impl Schedule {
    /// Checks the constants (against the base rate `lr`), naming the bad one.
    pub fn validate(&self, lr: f32) -> Result<(), String> {
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(format!("[schedule] {key} = {value}: {why}"))
        };
        match *self {
            Schedule::Plateau {
                factor,
                patience,
                threshold,
                ..
            } => {
                if !(factor > 0.0 && factor < 1.0) {
                    return bad("factor", &factor, "must be between 0 and 1");
                }
                if patience == 0 {
                    return bad("patience", &patience, "must be at least 1");
                }
                if !(0.0..1.0).contains(&threshold) {
                    return bad("threshold", &threshold, "must be in [0, 1)");
                }
            }
            Schedule::Step { every, gamma } => {
                if every == 0 {
                    return bad("every", &every, "must be at least 1");
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return bad("gamma", &gamma, "must be in (0, 1]");
                }
            }
            Schedule::Cosine { min_lr } => {
                if !(min_lr >= 0.0 && min_lr <= lr) {
                    return bad(
                        "min_lr",
                        &min_lr,
                        &format!("must be in [0, the learning rate {lr}]"),
                    );
                }
            }
            Schedule::Constant => {}
        }
        Ok(())
    }

    /// The rate for `step` of `total_steps` (cosine shapes it per step).
    pub fn lr_at(
        &self,
        state: &ScheduleState,
        base_lr: f32,
        step: usize,
        total_steps: usize,
    ) -> f32 {
        match *self {
            Schedule::Cosine { min_lr } => {
                let t = step as f64 / total_steps.max(1) as f64;
                let shape = 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
                (f64::from(min_lr) + (f64::from(base_lr) - f64::from(min_lr)) * shape) as f32
            }
            _ => state.lr,
        }
    }

    /// Updates the state after epoch `epoch` (1-based) with its validation
    /// top-1 error; returns a line to print when the rate changed.
    pub fn end_epoch(
        &self,
        state: &mut ScheduleState,
        epoch: usize,
        val_error: f64,
    ) -> Option<String> {
        match *self {
            Schedule::Plateau {
                factor,
                patience,
                threshold,
                max_drops,
            } => {
                let improved = state
                    .best_error
                    .is_none_or(|best| val_error < best - threshold);
                if improved {
                    state.best_error = Some(val_error);
                    state.stale_epochs = 0;
                    return None;
                }
                state.stale_epochs += 1;
                if state.stale_epochs < patience || state.drops >= max_drops {
                    return None;
                }
                let old = state.lr;
                state.lr *= factor;
                state.drops += 1;
                state.stale_epochs = 0;
                Some(format!(
                    "validation error has not improved for {patience} epoch(s): learning rate {} -> {}",
                    show_lr(old),
                    show_lr(state.lr)
                ))
            }
            Schedule::Step { every, gamma } => {
                if !epoch.is_multiple_of(every) {
                    return None;
                }
                let old = state.lr;
                state.lr *= gamma;
                Some(format!(
                    "epoch {epoch}: learning rate {} -> {}",
                    show_lr(old),
                    show_lr(state.lr)
                ))
            }
            Schedule::Cosine { .. } | Schedule::Constant => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_divides_by_ten_when_validation_stops_improving() {
        let schedule = Schedule::plateau();
        let mut state = ScheduleState::new(0.01);
        assert!(schedule.end_epoch(&mut state, 1, 0.50).is_none());
        assert!(schedule.end_epoch(&mut state, 2, 0.40).is_none());
        // One noisy epoch does not drop the rate; two in a row do.
        assert!(schedule.end_epoch(&mut state, 3, 0.4005).is_none());
        let line = schedule.end_epoch(&mut state, 4, 0.41).expect("a drop");
        assert!(line.contains("1e-2 -> 1e-3"), "{line}");
        assert_eq!(show_lr(1.0000001e-5), "1e-5");
        assert_eq!(show_lr(0.0125), "1.25e-2");
        assert!((state.lr - 0.001).abs() < 1e-9);
        // Three drops at most, as in the paper.
        for epoch in 4..20 {
            schedule.end_epoch(&mut state, epoch, 0.9);
        }
        assert_eq!(state.drops, 3);
        assert!((state.lr - 1e-5).abs() < 1e-10);
    }

    #[test]
    fn bad_constants_are_refused_by_name() {
        let cases = [
            (
                Schedule::Step {
                    every: 0,
                    gamma: 0.1,
                },
                "every = 0",
            ),
            (
                Schedule::Step {
                    every: 2,
                    gamma: -0.1,
                },
                "gamma = -0.1",
            ),
            (Schedule::Cosine { min_lr: 0.5 }, "min_lr = 0.5"),
            (
                Schedule::Plateau {
                    factor: f32::NAN,
                    patience: 2,
                    threshold: 0.0,
                    max_drops: 3,
                },
                "factor = NaN",
            ),
        ];
        for (schedule, needle) in cases {
            let e = schedule.validate(0.01).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(Schedule::default().validate(0.01).is_ok());
        assert!(Schedule::plateau().validate(0.01).is_ok());
        assert!(Schedule::Cosine { min_lr: 0.001 }.validate(0.01).is_ok());
    }

    #[test]
    fn step_and_cosine_follow_their_formulas() {
        let step = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        let mut state = ScheduleState::new(1.0);
        for epoch in 1..=6 {
            step.end_epoch(&mut state, epoch, 0.0);
        }
        assert_eq!(state.lr, 0.125);
        let cosine = Schedule::Cosine { min_lr: 0.0 };
        let s = ScheduleState::new(1.0);
        assert_eq!(cosine.lr_at(&s, 1.0, 0, 100), 1.0);
        assert!((cosine.lr_at(&s, 1.0, 50, 100) - 0.5).abs() < 1e-6);
        assert!(cosine.lr_at(&s, 1.0, 100, 100).abs() < 1e-6);
    }
}
