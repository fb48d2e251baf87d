//! `alexnet plot --compare RUN_A RUN_B`: the paper's Figure 1, two runs'
//! training error against epochs with the 25 % line, and how many epochs
//! each took to reach it.

use super::{Curves, FONT};
use crate::error::{Error, Result};
use crate::output::Staged;
use crate::train::metrics::{self, Metric};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The training error the paper's Figure 1 measures the time to.
pub const TARGET: f64 = 25.0;

/// One run's training-error curve, in epochs and percent.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCurve {
    /// The run folder's name.
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl ErrorCurve {
    /// Reads `RUN_DIR/metrics.jsonl`: each progress line's training error
    /// (100 − top-1 over the steps since the line before) at the epoch its
    /// step ends, counting steps per epoch from the validations at epochs' ends.
    pub fn read(run_dir: &Path) -> Result<ErrorCurve> {
        let curves = Curves::read(run_dir)?;
        let steps_per_epoch = steps_per_epoch(run_dir)?;
        Ok(ErrorCurve {
            name: run_dir.file_name().map_or_else(
                || run_dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            points: curves
                .train_top1
                .iter()
                .map(|&(step, top1)| (step / steps_per_epoch, 100.0 - top1))
                .collect(),
        })
    }

    /// The first epoch at which the training error is at most `TARGET`,
    /// interpolated linearly between the progress lines around it.
    pub fn epochs_to_target(&self) -> Option<f64> {
        let mut before: Option<(f64, f64)> = None;
        for &(x, e) in &self.points {
            if e <= TARGET {
                return Some(match before {
                    Some((x0, e0)) => x0 + (x - x0) * (e0 - TARGET) / (e0 - e),
                    None => x,
                });
            }
            before = Some((x, e));
        }
        None
    }
}

/// Steps in one epoch: the step of the first validation that training went
/// on past into a later epoch (so one at an epoch's end), over its epoch.
fn steps_per_epoch(run_dir: &Path) -> Result<f64> {
    let lines = metrics::read(run_dir)?;
    let later_epoch = |after: usize, epoch: usize| {
        lines[after..]
            .iter()
            .any(|m| matches!(m, Metric::Train { epoch: e, .. } if *e > epoch))
    };
    lines
        .iter()
        .enumerate()
        .find_map(|(i, m)| match *m {
            Metric::Val { step, epoch, .. } if epoch > 0 && later_epoch(i, epoch) => {
                Some(step as f64 / epoch as f64)
            }
            _ => None,
        })
        .ok_or_else(|| Error::File {
            path: run_dir.join("metrics.jsonl"),
            message: "the run has not finished its first epoch: no epoch scale".into(),
        })
}

/// Draws both curves and the 25 % line to `out.png` and `out.svg`; returns both paths.
pub fn plot(out: &Path, runs: &[ErrorCurve; 2]) -> Result<[PathBuf; 2]> {
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let (png, svg) = (out.with_extension("png"), out.with_extension("svg"));
    let size = (800, 550);
    let fail = |path: &Path, e: String| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot draw: {e}"),
    };
    let (png_out, svg_out) = (Staged::new(&png), Staged::new(&svg));
    draw(
        BitMapBackend::new(png_out.tmp(), size).into_drawing_area(),
        runs,
    )
    .map_err(|e| fail(&png, e))?;
    draw(
        SVGBackend::new(svg_out.tmp(), size).into_drawing_area(),
        runs,
    )
    .map_err(|e| fail(&svg, e))?;
    Ok([png_out.commit()?, svg_out.commit()?])
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[ErrorCurve; 2],
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let last = runs
        .iter()
        .flat_map(|r| r.points.iter().map(|p| p.0))
        .fold(1e-9, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("training error (the paper's Figure 1)", ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..last, 0.0..100.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("epochs")
        .y_desc("training error rate (%)")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, TARGET), (last, TARGET)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(e)?
        .label("25 %")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
    let styles = [
        (RGBColor(31, 119, 180), false),
        (RGBColor(214, 39, 40), true),
    ];
    for (run, (colour, dashed)) in runs.iter().zip(styles) {
        let label = match run.epochs_to_target() {
            Some(x) => format!("{}: 25 % at epoch {x:.2}", run.name),
            None => format!("{}: never 25 %", run.name),
        };
        let style = colour.stroke_width(2);
        let series = if dashed {
            chart.draw_series(DashedLineSeries::new(
                run.points.iter().copied(),
                8,
                5,
                style,
            ))
        } else {
            chart.draw_series(LineSeries::new(run.points.iter().copied(), style))
        };
        series
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, name: &str, errors: &[f64]) -> PathBuf {
        let run = dir.join(name);
        std::fs::create_dir_all(&run).unwrap();
        // 4 steps per epoch, a progress line every 2 steps.
        let mut lines = Vec::new();
        for (i, e) in errors.iter().enumerate() {
            let step = 2 * (i + 1);
            let epoch = (step - 1) / 4 + 1;
            lines.push(format!(
                r#"{{"kind":"train","step":{step},"epoch":{epoch},"loss":1.0,"top1":{},"images_per_s":1.0,"lr":0.01}}"#,
                1.0 - e / 100.0
            ));
            if step % 4 == 0 {
                lines.push(format!(
                    r#"{{"kind":"val","step":{step},"epoch":{epoch},"loss":1.0,"top1":0.5,"top5":0.9}}"#
                ));
            }
        }
        std::fs::write(run.join("metrics.jsonl"), lines.join("\n")).unwrap();
        run
    }

    #[test]
    fn epochs_to_25_percent_interpolate_between_progress_lines() {
        let dir = tempfile::tempdir().unwrap();
        let fast = ErrorCurve::read(&run(dir.path(), "relu", &[80.0, 35.0, 15.0, 10.0])).unwrap();
        // Lines at epochs 0.5, 1, 1.5, 2: 35 % at 1.0, 15 % at 1.5, so 25 % at 1.25.
        assert_eq!(fast.points[1], (1.0, 35.0));
        assert!((fast.epochs_to_target().unwrap() - 1.25).abs() < 1e-12);
        let slow = ErrorCurve::read(&run(dir.path(), "tanh", &[90.0, 80.0, 60.0, 40.0])).unwrap();
        assert_eq!(slow.epochs_to_target(), None);
        let [png, svg] = plot(&dir.path().join("figure1"), &[fast, slow]).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(svg).unwrap();
        assert!(svg.contains("25 % at epoch 1.25") && svg.contains("never 25 %"));
    }

    #[test]
    fn a_run_short_of_one_epoch_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ErrorCurve::read(&run(dir.path(), "short", &[80.0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("first epoch"), "{e}");
    }
}
