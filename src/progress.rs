//! Progress of long jobs (validation, `eval`, `predict` over folders,
//! `prepare`): a bar with the rate and the ETA on a terminal, or, in a log,
//! one line at each tenth of the work. Both go to stderr.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

/// How a job's progress is shown.
pub struct Progress {
    label: String,
    unit: &'static str,
    total: u64,
    done: u64,
    /// The bar on a terminal; `None` in a log.
    bar: Option<ProgressBar>,
    /// Lines in a log: the next count that prints one.
    next_line: u64,
    start: Instant,
    hidden: bool,
}

impl Progress {
    /// Progress over `total` `unit`s (e.g. "images") of the job `label`;
    /// `hidden` shows nothing.
    pub fn new(label: &str, unit: &'static str, total: usize, hidden: bool) -> Progress {
        let bar = (!hidden && std::io::stderr().is_terminal())
            .then(|| Progress::bar(label, unit, total as u64, ProgressDrawTarget::stderr()));
        Progress {
            label: label.into(),
            unit,
            total: total as u64,
            done: 0,
            bar,
            next_line: (total as u64).div_ceil(10).max(1),
            start: Instant::now(),
            hidden,
        }
    }

    fn bar(label: &str, unit: &str, total: u64, target: ProgressDrawTarget) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{label} {{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}"
            ))
            .expect("a valid template"),
        );
        bar
    }

    /// Counts `n` more done.
    pub fn add(&mut self, n: usize) {
        self.done += n as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        } else if !self.hidden && self.done >= self.next_line && self.done < self.total {
            eprintln!("{}", self.line());
            while self.next_line <= self.done {
                self.next_line += self.total.div_ceil(10).max(1);
            }
        }
    }

    /// Sets the count done to `done` (never backwards).
    pub fn set(&mut self, done: usize) {
        self.add((done as u64).saturating_sub(self.done) as usize);
    }

    /// The log line for the work done so far.
    fn line(&self) -> String {
        let seconds = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / seconds;
        let eta = (self.total - self.done.min(self.total)) as f64 / rate.max(1e-9);
        format!(
            "{}: {}/{} {}, {:.1} {}/s, ETA {:.0} s",
            self.label, self.done, self.total, self.unit, rate, self.unit, eta
        )
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::InMemoryTerm;

    #[test]
    fn a_log_gets_a_line_per_tenth_and_a_terminal_a_bar() {
        let mut p = Progress::new("eval", "images", 1000, false);
        p.bar = None;
        p.add(50);
        assert_eq!(p.next_line, 100);
        p.add(250);
        assert_eq!(p.next_line, 400);
        assert!(
            p.line().starts_with("eval: 300/1000 images, "),
            "{}",
            p.line()
        );
        let term = InMemoryTerm::new(4, 120);
        let bar = Progress::bar(
            "eval",
            "images",
            1000,
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        bar.set_position(300);
        bar.tick();
        let shown = term.contents();
        for part in ["eval", "300/1000 images", "/s", "ETA"] {
            assert!(shown.contains(part), "{part:?} not in {shown:?}");
        }
    }
}
