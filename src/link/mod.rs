//! How the towers meet (paper §3.2: "the GPUs communicate only in certain
//! layers"). Going forward an exchange is an all-gather: each tower gets both
//! towers' outputs, laid out `[tower][...]`. Going backward it is a summing
//! reduce-scatter: each tower gets the sum over towers of the gradient of its
//! own slice.
//!
//! The bookkeeping every link shares (which slice is whose, buffer sizes,
//! the exchanges of a step in call order) lives here as plain functions, so
//! the host link tests it on any machine for the GPU links too.

pub mod copy;
pub mod handoff;
pub mod host;
pub mod nccl;
pub mod rendezvous;
pub mod side;
pub mod solo;

use crate::error::{Error, Result};
use crate::net::plan::{Plan, TOWERS};
use std::ops::Range;

/// One tower's end of the link between the towers.
pub trait Link<B> {
    /// This tower's rank.
    fn rank(&self) -> usize;
    /// Starts `gathered[slice_of(r, len)] = local of tower r`, for every
    /// tower r: the result is there for work queued after [`Link::land`].
    fn all_gather(&mut self, local: &B, gathered: &mut B) -> Result<()>;
    /// Starts `local = Σ_r full of tower r [slice_of(rank, len)]`: the
    /// result is there for work queued after [`Link::land`].
    fn reduce_scatter(&mut self, full: &B, local: &mut B) -> Result<()>;
    /// Makes this tower's later work wait until the exchanges started so
    /// far have landed. Between the start and the landing the tower queues
    /// what does not depend on the exchange, which a link whose exchanges
    /// run beside the tower's work (on a stream of their own) overlaps with
    /// them; a link whose exchanges are done when they return has nothing
    /// to do here.
    fn land(&mut self) -> Result<()>;
    /// Whether both towers run on one device, so that each uploads only
    /// its half of a batch and an all-gather on the device (before the
    /// first layer) puts the halves together.
    fn splits_input(&self) -> bool;
    /// Ends a pass (a forward-only pass, or a training step after its last
    /// reduce-scatter): a pass sends each buffer once, and the next pass
    /// overwrites it, so a link whose exchanges return before the other
    /// tower has read what was sent makes this tower's later work wait for
    /// those reads here.
    fn end_pass(&mut self) -> Result<()>;
}

/// Where tower `rank`'s part of `local_len` elements lies in a gathered buffer.
pub fn slice_of(rank: usize, local_len: usize) -> Range<usize> {
    rank * local_len..(rank + 1) * local_len
}

/// Fails unless a gathered (or full) buffer of `gathered_len` elements holds
/// exactly one `local_len` slice per tower.
pub fn check_sizes(what: &str, local_len: usize, gathered_len: usize) -> Result<()> {
    if gathered_len != TOWERS * local_len {
        return Err(Error::Training(format!(
            "{what}: {gathered_len} elements for {TOWERS} towers of {local_len}"
        )));
    }
    Ok(())
}

/// The direction of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    AllGather,
    ReduceScatter,
}

/// One exchange of a training step, as each tower calls it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exchange {
    /// The layer that reads both towers (or `logits`).
    pub layer: String,
    pub direction: Direction,
    /// Elements each tower sends (its local slice).
    pub elements: usize,
}

/// Every exchange of one training step in the order each tower makes them:
/// an all-gather before each layer that reads both towers and one of the
/// logits, then, backward, a reduce-scatter after each such layer except the
/// first (whose input gradient nobody needs). A forward-only pass makes the
/// all-gathers alone.
pub fn exchanges(plan: &Plan, batch: usize) -> Vec<Exchange> {
    let both: Vec<(usize, &crate::net::plan::PlannedLayer)> = plan
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.both_towers)
        .collect();
    let gather = |name: &str, elements| Exchange {
        layer: name.to_string(),
        direction: Direction::AllGather,
        elements,
    };
    let mut out: Vec<Exchange> = both
        .iter()
        .map(|(_, l)| gather(&l.name, batch * l.input.len()))
        .collect();
    // A tower holding every class (a grouped plan) gathers no logits.
    if plan.towers > 1 {
        out.push(gather("logits", batch * plan.logits_per_tower()));
    }
    out.extend(
        both.iter()
            .rev()
            .filter(|(i, _)| *i > 0)
            .map(|(_, l)| Exchange {
                layer: l.name.clone(),
                direction: Direction::ReduceScatter,
                elements: batch * l.input.len(),
            }),
    );
    out
}

/// Bytes one tower sends in one training step, of `element_bytes` each
/// ([`crate::placement::Placement::exchange_element_bytes`]).
pub fn bytes_per_step(plan: &Plan, batch: usize, element_bytes: usize) -> usize {
    element_bytes
        * exchanges(plan, batch)
            .iter()
            .map(|e| e.elements)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::SgdStep;
    use crate::device::cpu::CpuDevice;
    use crate::link::host::HostLink;
    use crate::net::init::init_twin;
    use crate::net::spec::InitScheme;
    use crate::tower::ParamSet;
    use crate::towers::{Batch, TowerPair};
    use crate::watch::Watch;
    use std::sync::{Arc, Mutex};

    /// The host link, logging each call as an [`Exchange`].
    struct Recording {
        inner: HostLink,
        log: Arc<Mutex<Vec<Exchange>>>,
    }

    impl Recording {
        fn note(&self, direction: Direction, elements: usize) {
            self.log.lock().unwrap().push(Exchange {
                layer: String::new(),
                direction,
                elements,
            });
        }
    }

    impl Link<Vec<f32>> for Recording {
        fn rank(&self) -> usize {
            self.inner.rank()
        }
        fn all_gather(&mut self, local: &Vec<f32>, gathered: &mut Vec<f32>) -> Result<()> {
            self.note(Direction::AllGather, local.len());
            self.inner.all_gather(local, gathered)
        }
        fn reduce_scatter(&mut self, full: &Vec<f32>, local: &mut Vec<f32>) -> Result<()> {
            self.note(Direction::ReduceScatter, local.len());
            self.inner.reduce_scatter(full, local)
        }
        fn land(&mut self) -> Result<()> {
            self.inner.land()
        }
        fn splits_input(&self) -> bool {
            self.inner.splits_input()
        }
        fn end_pass(&mut self) -> Result<()> {
            self.inner.end_pass()
        }
    }

    /// The host link with its exchanges held back until [`Link::land`], as
    /// a GPU link's run beside the tower's work: until then what an
    /// exchange writes holds NaN, so a tower or device that reads it before
    /// landing spoils the step.
    struct Deferred {
        inner: HostLink,
        pending: Vec<Pending>,
        /// What [`Link::splits_input`] answers.
        splits: bool,
    }

    /// An exchange started and not landed: what it reads and writes, as
    /// a GPU holds them (by address, behind the tower's borrows).
    struct Pending {
        gather: bool,
        send: *const Vec<f32>,
        receive: *mut f32,
        receive_len: usize,
    }

    // SAFETY: a tower's link and the buffers it points into stay on that
    // tower's thread; the pointers are only followed there, in `land`.
    unsafe impl Send for Deferred {}

    impl Deferred {
        fn start(&mut self, gather: bool, send: &Vec<f32>, receive: &mut Vec<f32>) {
            receive.fill(f32::NAN);
            self.pending.push(Pending {
                gather,
                send,
                receive: receive.as_mut_ptr(),
                receive_len: receive.len(),
            });
        }
    }

    impl Link<Vec<f32>> for Deferred {
        fn rank(&self) -> usize {
            self.inner.rank()
        }
        fn all_gather(&mut self, local: &Vec<f32>, gathered: &mut Vec<f32>) -> Result<()> {
            self.start(true, local, gathered);
            Ok(())
        }
        fn reduce_scatter(&mut self, full: &Vec<f32>, local: &mut Vec<f32>) -> Result<()> {
            self.start(false, full, local);
            Ok(())
        }
        /// Reads what was sent now (so a tower that overwrote it after the
        /// start is caught), and fails if the tower wrote where the exchange
        /// writes before it landed.
        fn land(&mut self) -> Result<()> {
            for p in std::mem::take(&mut self.pending) {
                // SAFETY: the tower keeps its buffers until the pass ends,
                // and no exchange outlives its pass (`end_pass` below). The
                // tower may hold shared borrows of the received buffer while
                // this writes it, as a GPU writes behind them: that is the
                // point of the test, and outside what Rust's aliasing rules
                // (and Miri) accept; nothing here reads through those borrows
                // while it writes.
                let (send, receive) = unsafe {
                    (
                        (*p.send).clone(),
                        std::slice::from_raw_parts_mut(p.receive, p.receive_len),
                    )
                };
                if !receive.iter().all(|v| v.is_nan()) {
                    return Err(Error::Training("written before it landed".into()));
                }
                let mut landed = vec![0.0; p.receive_len];
                match p.gather {
                    true => self.inner.all_gather(&send, &mut landed)?,
                    false => self.inner.reduce_scatter(&send, &mut landed)?,
                }
                receive.copy_from_slice(&landed);
            }
            Ok(())
        }
        fn splits_input(&self) -> bool {
            self.splits
        }
        fn end_pass(&mut self) -> Result<()> {
            if !self.pending.is_empty() {
                return Err(Error::Training(format!(
                    "{} exchanges never landed",
                    self.pending.len()
                )));
            }
            self.inner.end_pass()
        }
    }

    /// Two training steps through [`Deferred`] give bit for bit what the
    /// host link gives: the tower waits for every exchange before it reads
    /// its result, and lands each before its pass ends; and so they do
    /// when each tower uploads half of each batch and gathers the rest.
    #[test]
    fn towers_read_no_exchange_before_it_lands() {
        for splits in [false, true] {
            deferred_steps_equal_host_steps(splits);
        }
    }

    fn deferred_steps_equal_host_steps(splits: bool) {
        let plan = Arc::new(Plan::load("small").unwrap());
        let batch = 4;
        let init = init_twin(&plan, InitScheme::He, 5);
        let watch = Arc::new(Watch::cpu());
        let ends = Mutex::new(HostLink::pair_in(&watch).map(Some));
        let deferred = TowerPair::spawn(
            Arc::clone(&plan),
            batch,
            &init,
            watch,
            |_| Ok(CpuDevice::<f32>::default()),
            move |rank, _: &CpuDevice<f32>| {
                let inner = ends.lock().unwrap()[rank].take().unwrap();
                let pending = Vec::new();
                Ok(Deferred {
                    inner,
                    pending,
                    splits,
                })
            },
        )
        .unwrap();
        let host = TowerPair::cpu::<f32>(Arc::clone(&plan), batch, &init).unwrap();
        let sgd = SgdStep {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
        };
        for step in 0..2u64 {
            let images: Vec<f32> = (0..batch * plan.input.len())
                .map(|i| ((i as u64 * 7 + step) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let batch = Batch {
                images: Arc::new(images.into()),
                labels: Arc::new(vec![0, 3, 7, 1]),
            };
            let want = host.train_step(&batch, step + 1, Some(sgd)).unwrap();
            let got = deferred.train_step(&batch, step + 1, Some(sgd)).unwrap();
            assert!(got.loss_sum.is_finite(), "step {step}: loss {got:?}");
            assert_eq!(got, want, "step {step}, split input {splits}");
        }
        let (want, got) = (
            host.download(ParamSet::Weights).unwrap(),
            deferred.download(ParamSet::Weights).unwrap(),
        );
        for (w, g) in want.iter().zip(&got) {
            assert!(
                w.data
                    .iter()
                    .zip(&g.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}, split input {splits}",
                w.name
            );
        }
    }

    #[test]
    fn a_training_step_makes_exactly_the_planned_exchanges() {
        for preset in ["small", "paper"] {
            let plan = Arc::new(Plan::load(preset).unwrap());
            let batch = 2;
            let logs: Vec<_> = (0..TOWERS)
                .map(|_| Arc::new(Mutex::new(Vec::new())))
                .collect();
            let watch = Arc::new(Watch::cpu());
            let ends = Mutex::new(HostLink::pair_in(&watch).map(Some));
            let made = logs.clone();
            let towers = TowerPair::spawn(
                Arc::clone(&plan),
                batch,
                &init_twin(&plan, InitScheme::He, 1),
                watch,
                |_| Ok(CpuDevice::<f32>::default()),
                move |rank, _: &CpuDevice<f32>| {
                    let inner = ends.lock().unwrap()[rank].take().unwrap();
                    let log = Arc::clone(&made[rank]);
                    Ok(Recording { inner, log })
                },
            )
            .unwrap();
            let size = plan.input.len();
            let step = Batch {
                images: Arc::new(vec![0.5; batch * size].into()),
                labels: Arc::new(vec![0, 1]),
            };
            let sgd = SgdStep {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 0.0,
            };
            towers.train_step(&step, 1, Some(sgd)).unwrap();
            let planned: Vec<(Direction, usize)> = exchanges(&plan, batch)
                .iter()
                .map(|e| (e.direction, e.elements))
                .collect();
            for log in &logs {
                let made: Vec<_> = log
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|e| (e.direction, e.elements))
                    .collect();
                assert_eq!(made, planned, "{preset}");
            }
        }
    }

    #[test]
    fn the_paper_net_exchanges_what_the_paper_says() {
        let plan = Plan::load("paper").unwrap();
        let layers: Vec<_> = exchanges(&plan, 1)
            .into_iter()
            .map(|e| (e.layer, e.direction, e.elements))
            .collect();
        use Direction::*;
        // conv3 reads pool2 (128×13×13 per tower); fc6 pool5 (128×6×6);
        // fc7 and fc8 2048 units; the logits 500 per tower.
        let expected = [
            ("conv3", AllGather, 128 * 13 * 13),
            ("fc6", AllGather, 128 * 6 * 6),
            ("fc7", AllGather, 2048),
            ("fc8", AllGather, 2048),
            ("logits", AllGather, 500),
            ("fc8", ReduceScatter, 2048),
            ("fc7", ReduceScatter, 2048),
            ("fc6", ReduceScatter, 128 * 6 * 6),
            ("conv3", ReduceScatter, 128 * 13 * 13),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|&(l, d, n)| (l.to_string(), d, n))
            .collect();
        assert_eq!(layers, expected);
        let elements = expected.iter().map(|e| e.2).sum::<usize>();
        assert_eq!(bytes_per_step(&plan, 1, 4), 4 * elements);
        assert_eq!(bytes_per_step(&plan, 1, 2), 2 * elements);
    }

    #[test]
    fn sizes_must_hold_one_slice_per_tower() {
        assert!(check_sizes("x", 3, 6).is_ok());
        assert!(check_sizes("x", 3, 7).is_err());
        assert_eq!(slice_of(1, 3), 3..6);
    }
}
