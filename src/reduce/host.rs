//! The gradient average over host memory: the replicas are thread groups of
//! one process (the CPU's `--replicas R`). Each layer's gradients meet in a
//! slot per replica and are summed in replica order, so the result does not
//! depend on which thread came first. In a run of several nodes the sum of
//! this node's replicas is then summed over the nodes ([`NodeSum`]).

use super::{Reduce, ReplicaWatch};
use crate::device::cpu::Real;
use crate::error::{Error, Result};
use crate::net::params::LayerParams;
use crate::nodes::sum::NodeSum;
use crate::watch::POLL;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Tower `rank`'s end of the average for one replica.
pub struct HostReduce<T> {
    replica: usize,
    group: Arc<Group<T>>,
}

/// Shared by tower `rank` of every replica.
struct Group<T> {
    state: Mutex<Round<T>>,
    turn: Condvar,
    replicas: Arc<ReplicaWatch>,
}

/// One average: each replica's scaled gradients, and the sum once all are in.
struct Round<T> {
    slots: Vec<Vec<T>>,
    arrived: Vec<bool>,
    generation: u64,
    sum: Vec<T>,
    /// The sum over the other nodes of the run, if it has several.
    nodes: Option<NodeSum>,
}

impl<T: Real> HostReduce<T> {
    /// One end per replica for one tower rank, replica 0 first; with
    /// `nodes`, the sum goes on over the other nodes' replicas.
    pub fn group(replicas: &Arc<ReplicaWatch>, nodes: Option<NodeSum>) -> Vec<HostReduce<T>> {
        let count = replicas.count();
        let group = Arc::new(Group {
            state: Mutex::new(Round {
                slots: vec![Vec::new(); count],
                arrived: vec![false; count],
                generation: 0,
                sum: Vec::new(),
                nodes,
            }),
            turn: Condvar::new(),
            replicas: Arc::clone(replicas),
        });
        (0..count)
            .map(|replica| HostReduce {
                replica,
                group: Arc::clone(&group),
            })
            .collect()
    }

    /// Puts `share · data` in this replica's slot, waits for every replica,
    /// and returns the sum over replicas in replica order.
    fn meet(&self, data: impl Iterator<Item = T>, share: T) -> Result<Vec<T>> {
        let group = &*self.group;
        let mut state = self.lock()?;
        let slot = &mut state.slots[self.replica];
        slot.clear();
        slot.extend(data.map(|v| v * share));
        state.arrived[self.replica] = true;
        let generation = state.generation;
        if state.arrived.iter().all(|&a| a) {
            let mut sum = std::mem::take(&mut state.slots[0]);
            for slot in &state.slots[1..] {
                if slot.len() != sum.len() {
                    return Err(Error::Training(
                        "replicas all-reduced gradients of different sizes".into(),
                    ));
                }
                for (s, &v) in sum.iter_mut().zip(slot) {
                    *s += v;
                }
            }
            if let Some(nodes) = &mut state.nodes {
                let replicas = &group.replicas;
                let alive = || {
                    replicas.watch(self.replica).check()?;
                    replicas.check_others(self.replica)
                };
                nodes.sum(&mut sum, &alive)?;
            }
            state.sum = sum;
            state.arrived.fill(false);
            state.generation += 1;
            group.turn.notify_all();
            return Ok(state.sum.clone());
        }
        state = self.wait_for(state, generation)?;
        Ok(state.sum.clone())
    }

    /// Waits until the round `generation` is summed; fails as soon as any
    /// tower of any replica fails, and after the timeout naming a replica
    /// that never came.
    fn wait_for<'a>(
        &'a self,
        mut state: MutexGuard<'a, Round<T>>,
        generation: u64,
    ) -> Result<MutexGuard<'a, Round<T>>> {
        let replicas = &self.group.replicas;
        let own = replicas.watch(self.replica);
        let deadline = Instant::now() + own.timeout();
        while state.generation == generation {
            own.check()?;
            replicas.check_others(self.replica)?;
            if Instant::now() >= deadline {
                let missing = state.arrived.iter().position(|&a| !a).unwrap_or(0);
                return Err(replicas.lost(self.replica, missing));
            }
            state = self
                .group
                .turn
                .wait_timeout(state, POLL * 20)
                .map_err(|_| self.poisoned())?
                .0;
        }
        Ok(state)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Round<T>>> {
        self.group.state.lock().map_err(|_| self.poisoned())
    }

    fn poisoned(&self) -> Error {
        self.group.replicas.failure().unwrap_or_else(|| {
            Error::Training("a replica panicked in the gradient all-reduce".into())
        })
    }
}

impl<T: Real> Reduce<Vec<T>> for HostReduce<T> {
    fn layer(&mut self, grads: &mut LayerParams<Vec<T>>, share: f64) -> Result<()> {
        let data = grads
            .weights
            .iter()
            .chain(std::iter::once(&grads.bias))
            .flat_map(|b| b.iter().copied());
        let sum = self.meet(data, T::of(share))?;
        let mut from = sum.into_iter();
        for buf in grads
            .weights
            .iter_mut()
            .chain(std::iter::once(&mut grads.bias))
        {
            for (v, s) in buf.iter_mut().zip(from.by_ref()) {
                *v = s;
            }
        }
        Ok(())
    }

    /// Nothing is left running: each layer's average is written when
    /// [`Reduce::layer`] returns.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::Watch;
    use std::time::Duration;

    fn replicas(count: usize, timeout: Duration) -> Arc<ReplicaWatch> {
        Arc::new(ReplicaWatch::new(
            (0..count)
                .map(|r| {
                    Arc::new(Watch::with_timeout(
                        [format!("CPU, replica {r}"), format!("CPU, replica {r}")],
                        timeout,
                    ))
                })
                .collect(),
        ))
    }

    #[test]
    fn three_replicas_get_the_weighted_sum_in_replica_order() {
        let group = replicas(3, Duration::from_secs(30));
        let ends = HostReduce::<f64>::group(&group, None);
        let shares = [0.5, 0.25, 0.25];
        let threads: Vec<_> = ends
            .into_iter()
            .enumerate()
            .map(|(r, mut end)| {
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for layer in 0..4 {
                        let x = (r + 1) as f64 * 10f64.powi(layer);
                        let mut grads = LayerParams {
                            weights: vec![vec![x, -x], vec![2.0 * x]],
                            bias: vec![x + 1.0],
                        };
                        end.layer(&mut grads, shares[r]).unwrap();
                        out.push(grads);
                    }
                    out
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for layer in 0..4 {
            // Σ share_r · (r + 1) · 10^layer, by hand: 0.5·1 + 0.25·2 + 0.25·3 = 1.75.
            let x = 1.75 * 10f64.powi(layer as i32);
            for got in &results {
                let g = &got[layer];
                assert_eq!(g.weights, vec![vec![x, -x], vec![2.0 * x]]);
                assert_eq!(g.bias, vec![x + 1.0]);
            }
        }
    }

    #[test]
    fn a_failed_replica_releases_the_others_and_is_the_error_reported() {
        let group = replicas(2, Duration::from_secs(60));
        let mut ends = HostReduce::<f32>::group(&group, None);
        let waiting = {
            let mut end = ends.remove(0);
            std::thread::spawn(move || {
                let mut grads = LayerParams {
                    weights: vec![vec![1.0]],
                    bias: vec![1.0],
                };
                end.layer(&mut grads, 0.5)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        group
            .watch(1)
            .fail(0, &Error::Training("out of memory".into()));
        let error = waiting.join().unwrap().unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(error.to_string(), "tower 0 (CPU, replica 1): out of memory");
        assert_eq!(group.failure().unwrap().to_string(), error.to_string());
    }

    #[test]
    fn a_replica_that_never_comes_is_named_after_the_timeout() {
        let group = replicas(2, Duration::from_millis(100));
        let mut end = HostReduce::<f32>::group(&group, None).remove(1);
        let mut grads = LayerParams {
            weights: vec![vec![1.0]],
            bias: vec![1.0],
        };
        let error = end.layer(&mut grads, 0.5).unwrap_err().to_string();
        assert!(
            error.starts_with("replica 0 did not reach the gradient all-reduce within 0.1 s"),
            "{error}"
        );
    }
}
