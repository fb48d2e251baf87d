//! `alexnet plot RUN_DIR`: the run's loss, accuracy and learning-rate curves
//! and its towers' conv1 colour saturation from `metrics.jsonl`, drawn to
//! `RUN_DIR/curves.png` and `curves.svg`.

pub mod compare;
pub mod filters;

use crate::error::{Error, Result};
use crate::output::Staged;
use crate::train::metrics::{self, Metric};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The font the plots are lettered in, embedded so that no system font is needed.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// The curves of one run: (step, value) series.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Curves {
    pub train_loss: Vec<(f64, f64)>,
    pub train_top1: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub val_top1: Vec<(f64, f64)>,
    pub val_top5: Vec<(f64, f64)>,
    pub lr: Vec<(f64, f64)>,
    /// Each tower's conv1 colour saturation at each checkpoint ([`filters`]).
    pub saturation: [Vec<(f64, f64)>; 2],
}

impl Curves {
    /// Reads `RUN_DIR/metrics.jsonl`; lines it does not understand are skipped.
    pub fn read(run_dir: &Path) -> Result<Curves> {
        let mut c = Curves::default();
        for metric in metrics::read(run_dir)? {
            let at = metric.step() as f64;
            match metric {
                Metric::Train { loss, top1, lr, .. } => {
                    c.train_loss.push((at, loss));
                    c.train_top1.push((at, 100.0 * top1));
                    c.lr.push((at, f64::from(lr)));
                }
                Metric::Val {
                    loss, top1, top5, ..
                } => {
                    c.val_loss.push((at, loss));
                    c.val_top1.push((at, 100.0 * top1));
                    c.val_top5.push((at, 100.0 * top5));
                }
                Metric::Filters { saturation, .. } => {
                    for (series, s) in c.saturation.iter_mut().zip(saturation) {
                        series.push((at, s));
                    }
                }
            }
        }
        if c.train_loss.is_empty() {
            return Err(Error::File {
                path: run_dir.join("metrics.jsonl"),
                message: "holds no training metrics yet".into(),
            });
        }
        Ok(c)
    }
}

/// Draws `curves` to `RUN_DIR/curves.png` and `curves.svg`; returns both paths.
pub fn plot(run_dir: &Path, curves: &Curves) -> Result<[PathBuf; 2]> {
    // Registering twice (a second plot in one process) is harmless.
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let (png, svg) = (run_dir.join("curves.png"), run_dir.join("curves.svg"));
    let size = (2000, 450);
    let fail = |path: &Path, e: String| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot draw: {e}"),
    };
    let title = run_dir.display().to_string();
    let (png_out, svg_out) = (Staged::new(&png), Staged::new(&svg));
    draw(
        BitMapBackend::new(png_out.tmp(), size).into_drawing_area(),
        curves,
        &title,
    )
    .map_err(|e| fail(&png, e))?;
    draw(
        SVGBackend::new(svg_out.tmp(), size).into_drawing_area(),
        curves,
        &title,
    )
    .map_err(|e| fail(&svg, e))?;
    Ok([png_out.commit()?, svg_out.commit()?])
}

/// One curve of a panel: its legend, points and colour.
type Line<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    c: &Curves,
    title: &str,
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(e)?;
    let panels = root.split_evenly((1, 4));
    let last_step = c.train_loss.iter().map(|p| p.0).fold(1.0, f64::max);
    let steps = 0.0..last_step;
    let top = |series: &[&[(f64, f64)]]| {
        series
            .iter()
            .flat_map(|s| s.iter().map(|p| p.1))
            .fold(1e-12, f64::max)
            * 1.05
    };
    let panel = |area: &DrawingArea<DB, Shift>,
                 caption: &str,
                 y_label: &str,
                 y_max: f64,
                 lines: &[Line]|
     -> std::result::Result<(), String> {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(steps.clone(), 0.0..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_label)
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        for &(name, points, color) in lines {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(e)
    };
    let (train, val, val5) = (
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    );
    panel(
        &panels[0],
        "loss",
        "cross-entropy",
        top(&[&c.train_loss, &c.val_loss]),
        &[
            ("training", &c.train_loss, train),
            ("validation", &c.val_loss, val),
        ],
    )?;
    panel(
        &panels[1],
        "accuracy",
        "%",
        100.0,
        &[
            ("training top-1", &c.train_top1, train),
            ("validation top-1", &c.val_top1, val),
            ("validation top-5", &c.val_top5, val5),
        ],
    )?;
    panel(
        &panels[2],
        "learning rate",
        "lr",
        top(&[&c.lr]),
        &[("lr", &c.lr, train)],
    )?;
    panel(
        &panels[3],
        "conv1 colour saturation",
        "mean max−min of RGB",
        top(&[&c.saturation[0], &c.saturation[1]]),
        &[
            ("tower 1", &c.saturation[0], train),
            ("tower 2", &c.saturation[1], val),
        ],
    )?;
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_metrics_and_draws_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"kind":"train","step":10,"epoch":1,"loss":2.3,"top1":0.1,"images_per_s":100.0,"lr":0.01}"#,
            r#"{"kind":"train","step":20,"epoch":1,"loss":1.5,"top1":0.4,"images_per_s":100.0,"lr":0.01}"#,
            r#"{"kind":"val","step":20,"epoch":1,"loss":1.4,"top1":0.5,"top5":0.9}"#,
            r#"{"kind":"filters","step":20,"epoch":1,"saturation":[0.1,0.3]}"#,
            "not json",
        ];
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).unwrap();
        let curves = Curves::read(dir.path()).unwrap();
        assert_eq!(curves.train_loss, vec![(10.0, 2.3), (20.0, 1.5)]);
        assert_eq!(curves.val_top5, vec![(20.0, 90.0)]);
        // The rate is an f32 in training and in the metrics.
        let lr = f64::from(0.01f32);
        assert_eq!(curves.lr, vec![(10.0, lr), (20.0, lr)]);
        assert_eq!(curves.saturation, [vec![(20.0, 0.1)], vec![(20.0, 0.3)]]);
        let [png, svg] = plot(dir.path(), &curves).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("validation top-5")
                && svg.contains("conv1 colour saturation"),
            "{}",
            &svg[..200]
        );
    }

    #[test]
    fn a_run_without_metrics_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Curves::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl"), "{e}");
    }
}
