//! How the replicas of one tower average their gradients: data parallelism
//! over copies of the two-tower pair (Krizhevsky, "One weird trick for
//! parallelizing convolutional neural networks", 2014). Tower r of every
//! replica meets tower r of every other after each parameter layer's
//! backward pass, so the average of one layer runs while the layers below
//! it are still being differentiated; the update then reads the average.
//!
//! [`ReplicaWatch`] is what every replica's towers know of the others: each
//! pair's [`Watch`], joined so that a pair's failure is passed on to every
//! other (any wait of any tower, a GPU stream's included, ends as soon as
//! any tower anywhere fails), and which replica failed first.

pub mod host;
pub mod nccl;

use crate::error::{Error, Result};
use crate::net::params::LayerParams;
use crate::watch::Watch;
use std::sync::{Arc, OnceLock};

/// One tower's end of the gradient average across replicas.
pub trait Reduce<B> {
    /// Starts replacing `grads` (one parameter layer's, weights then bias)
    /// with `Σ_replicas share · grads`, where `share` is this replica's
    /// fraction of the whole batch: the whole batch's mean gradient. It may
    /// return before the average is written (a GPU queues it).
    fn layer(&mut self, grads: &mut LayerParams<B>, share: f64) -> Result<()>;
    /// Waits (on the device, in stream order) until every average started
    /// this pass is written, before the update reads the gradients.
    fn finish(&mut self) -> Result<()>;
}

/// What the replicas of a run know of each other: every pair's watch, and
/// which replica failed first (the one whose error the caller reports).
pub struct ReplicaWatch {
    watches: Vec<Arc<Watch>>,
    origin: OnceLock<usize>,
}

impl ReplicaWatch {
    /// The replicas whose pairs `watches` look after, replica 0 first.
    pub fn new(watches: Vec<Arc<Watch>>) -> ReplicaWatch {
        Watch::join(&watches);
        ReplicaWatch {
            watches,
            origin: OnceLock::new(),
        }
    }

    /// How many replicas there are.
    pub fn count(&self) -> usize {
        self.watches.len()
    }

    /// Replica `replica`'s pair watch.
    pub fn watch(&self, replica: usize) -> &Arc<Watch> {
        &self.watches[replica]
    }

    /// Fails with the first failure of any replica but `replica`; the
    /// replica found failing is recorded as the origin unless one is
    /// already (a failure passed on from another is always recorded after
    /// the origin is set, so the origin is the first).
    pub fn check_others(&self, replica: usize) -> Result<()> {
        for (r, watch) in self.watches.iter().enumerate() {
            if r == replica {
                continue;
            }
            if let Some(e) = watch.own_failure() {
                let _ = self.origin.set(r);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Records that `replica` waited in vain for `missing` at the gradient
    /// average, and returns the error saying so.
    pub fn lost(&self, replica: usize, missing: usize) -> Error {
        let _ = self.origin.set(replica);
        Error::Training(format!(
            "replica {missing} did not reach the gradient all-reduce within {} s (replica {replica} waited)",
            self.watches[replica].timeout().as_secs_f64()
        ))
    }

    /// Polls `done` until it says yes, for replica `replica` (a GPU's NCCL
    /// communicator): fails as soon as any tower of any replica fails, with
    /// `done`'s own error, or after the timeout.
    pub fn poll(
        &self,
        replica: usize,
        what: &str,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let own = &self.watches[replica];
        let start = std::time::Instant::now();
        loop {
            own.check()?;
            self.check_others(replica)?;
            if done()? {
                return Ok(());
            }
            if start.elapsed() >= own.timeout() {
                let _ = self.origin.set(replica);
                return Err(Error::Training(format!(
                    "{what}: the other replicas did not answer within {} s (replica {replica} waited)",
                    own.timeout().as_secs_f64()
                )));
            }
            if start.elapsed() < crate::watch::SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(crate::watch::POLL);
            }
        }
    }

    /// The run's first failure: the origin's, or else that of the first
    /// replica that has one.
    pub fn failure(&self) -> Option<Error> {
        if let Some(&r) = self.origin.get()
            && let Some(e) = self.watches[r].own_failure()
        {
            return Some(e);
        }
        (self.watches.iter().find_map(|w| w.own_failure()))
            .or_else(|| self.watches.iter().find_map(|w| w.failure()))
    }
}

/// Bytes of gradients one tower all-reduces per step: every parameter of
/// the tower, in f32 (what `summary` and `bench` report).
pub fn bytes_per_step(tower_params: usize) -> usize {
    tower_params * std::mem::size_of::<f32>()
}
