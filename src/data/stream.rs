//! A run's batches without stalls: training batches epoch after epoch, the
//! next epoch's loader started while the current epoch's last batches are
//! still being taken, and each validation's loader started ahead of it. The
//! time the trainer spends waiting for a batch is counted.

use super::loader::Batches;
use super::loader::LoadedBatch;
use super::{Part, TrainingData};
use crate::error::Result;
use crate::rng::{Rng, derive};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// The shuffled image order of `epoch` (a pure function of the seed and the epoch).
pub fn epoch_order(seed: u64, epoch: usize, images: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..images).collect();
    Rng::new(derive(seed, 1_000_000 + epoch as u64)).shuffle(&mut order);
    order
}

/// Training batches from step `first` to `total`, and prefetched validations.
pub struct Stream {
    data: Arc<TrainingData>,
    seed: u64,
    batch: usize,
    /// Which part of each batch this process loads.
    part: Part,
    steps_per_epoch: usize,
    total: usize,
    /// The next step to hand out.
    step: usize,
    current: Option<Batches>,
    next_epoch: Option<Batches>,
    val: Option<Batches>,
    /// How many steps before an epoch end (or the last step) the next
    /// epoch's and the validation's loaders start.
    lead: usize,
    waited: Rc<Cell<f64>>,
}

impl Stream {
    /// The batches of steps `first..total` (of each, `part`), with loaders
    /// started `lead` steps ahead of each epoch end and validation.
    pub fn new(
        data: Arc<TrainingData>,
        seed: u64,
        (batch, part): (usize, Part),
        first: usize,
        total: usize,
        lead: usize,
    ) -> Stream {
        let steps_per_epoch = (data.train_len() / batch).max(1);
        let mut stream = Stream {
            data,
            seed,
            batch,
            part,
            steps_per_epoch,
            total,
            step: first,
            current: None,
            next_epoch: None,
            val: None,
            lead: lead.max(1),
            waited: Rc::new(Cell::new(0.0)),
        };
        stream.current = Some(stream.epoch_from(first));
        stream.look_ahead();
        stream
    }

    /// The batches of the epoch of `step`, from `step` on.
    fn epoch_from(&self, step: usize) -> Batches {
        let epoch = step / self.steps_per_epoch;
        let order = epoch_order(self.seed, epoch, self.data.train_len());
        self.data.train_batches(
            &order,
            (self.batch, self.part),
            step % self.steps_per_epoch,
            self.steps_per_epoch,
            self.seed,
            epoch,
        )
    }

    /// Starts the next epoch's and the next validation's loaders once they
    /// are at most `lead` steps away.
    fn look_ahead(&mut self) {
        let epoch_end = (self.step / self.steps_per_epoch + 1) * self.steps_per_epoch;
        if self.next_epoch.is_none() && epoch_end < self.total && epoch_end - self.step <= self.lead
        {
            self.next_epoch = Some(self.epoch_from(epoch_end));
        }
        if self.val.is_none()
            && self.step < self.total
            && epoch_end.min(self.total) - self.step <= self.lead
        {
            self.val = Some(self.data.val_batches(self.batch, self.part));
        }
    }

    /// The next training batch (`None` past the last step).
    pub fn next_batch(&mut self) -> Option<Result<LoadedBatch>> {
        if self.step >= self.total {
            return None;
        }
        if self.step.is_multiple_of(self.steps_per_epoch) && self.current.is_none() {
            self.current = Some(
                self.next_epoch
                    .take()
                    .unwrap_or_else(|| self.epoch_from(self.step)),
            );
        }
        let start = Instant::now();
        let batch = self.current.as_mut().and_then(Iterator::next);
        self.waited
            .set(self.waited.get() + start.elapsed().as_secs_f64());
        self.step += 1;
        if self.step.is_multiple_of(self.steps_per_epoch) {
            self.current = None;
        }
        self.look_ahead();
        batch
    }

    /// The validation batches, prefetched when the validation was near
    /// (every validation after the first comes at an epoch end or the last
    /// step); the wait for them counts as waiting for data.
    pub fn validation(&mut self) -> Batches {
        let batches = self
            .val
            .take()
            .unwrap_or_else(|| self.data.val_batches(self.batch, self.part));
        let waited = Rc::clone(&self.waited);
        self.look_ahead();
        Box::new(Timed { batches, waited })
    }

    /// Seconds spent waiting for batches so far.
    pub fn waited_s(&self) -> f64 {
        self.waited.get()
    }
}

/// Batches whose waits add to a counter.
struct Timed {
    batches: Batches,
    waited: Rc<Cell<f64>>,
}

impl Iterator for Timed {
    type Item = Result<LoadedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = Instant::now();
        let batch = self.batches.next();
        self.waited
            .set(self.waited.get() + start.elapsed().as_secs_f64());
        batch
    }
}
