//! The link over host memory: both towers are threads of one process and
//! meet at a barrier around a shared slot per tower.

use super::rendezvous::Rendezvous;
use super::{Link, check_sizes, slice_of};
use crate::error::Result;
use crate::net::plan::TOWERS;
use crate::watch::Watch;
use std::sync::Arc;

/// One tower's end of the host-memory link, carrying `T` (f32 in training).
pub struct HostLink<T = f32> {
    rank: usize,
    shared: Arc<Rendezvous<Vec<T>>>,
    /// Rounds each reduce-scatter's sums as the towers store them (as a
    /// 16-bit exchange between GPUs returns its sums in 16 bits).
    store: fn(&mut [T]),
}

impl<T: Copy + Default + std::ops::AddAssign> HostLink<T> {
    /// Both ends of a fresh link between two CPU towers, rank 0 first.
    pub fn pair() -> [HostLink<T>; TOWERS] {
        HostLink::pair_in(&Arc::new(Watch::cpu()))
    }

    /// Both ends of a fresh link for the pair `watch` looks after.
    pub fn pair_in(watch: &Arc<Watch>) -> [HostLink<T>; TOWERS] {
        HostLink::pair_storing(watch, |_| {})
    }

    /// As [`HostLink::pair_in`], each reduce-scatter's sums then passed to
    /// `store` (which rounds them to the towers' storage).
    pub fn pair_storing(watch: &Arc<Watch>, store: fn(&mut [T])) -> [HostLink<T>; TOWERS] {
        let shared = Arc::new(Rendezvous::new(Arc::clone(watch)));
        std::array::from_fn(|rank| HostLink {
            rank,
            shared: Arc::clone(&shared),
            store,
        })
    }

    /// Puts `data` in this tower's slot and runs `read` over every tower's.
    fn exchange(&self, data: &[T], read: impl FnOnce(&[Vec<T>; TOWERS])) -> Result<()> {
        self.shared.meet(
            self.rank,
            |slot| {
                slot.clear();
                slot.extend_from_slice(data);
            },
            read,
        )
    }
}

impl<T> Drop for HostLink<T> {
    fn drop(&mut self) {
        self.shared.abandon();
    }
}

impl<T: Copy + Default + std::ops::AddAssign> Link<Vec<T>> for HostLink<T> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&mut self, local: &Vec<T>, gathered: &mut Vec<T>) -> Result<()> {
        let len = local.len();
        check_sizes("all-gather", len, gathered.len())?;
        self.exchange(local, |slots| {
            for (r, slot) in slots.iter().enumerate() {
                gathered[slice_of(r, len)].copy_from_slice(slot);
            }
        })
    }

    fn reduce_scatter(&mut self, full: &Vec<T>, local: &mut Vec<T>) -> Result<()> {
        check_sizes("reduce-scatter", local.len(), full.len())?;
        let own = slice_of(self.rank, local.len());
        self.exchange(full, |slots| {
            local.copy_from_slice(&slots[0][own.clone()]);
            for slot in &slots[1..] {
                for (l, &v) in local.iter_mut().zip(&slot[own.clone()]) {
                    *l += v;
                }
            }
            (self.store)(local);
        })
    }

    /// Nothing to wait for: each exchange is done when it returns.
    fn land(&mut self) -> Result<()> {
        Ok(())
    }

    /// No: both towers read the batch where it is, in host memory.
    fn splits_input(&self) -> bool {
        false
    }

    /// Nothing to order: each exchange has copied what it read before it returns.
    fn end_pass(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_gather_and_reduce_scatter_between_threads() {
        let results: Vec<(Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = HostLink::<f32>::pair()
                .into_iter()
                .map(|mut link| {
                    scope.spawn(move || {
                        let r = link.rank() as f32;
                        let local = vec![r + 1.0; 3];
                        let mut gathered = vec![0.0; 6];
                        link.all_gather(&local, &mut gathered).unwrap();
                        let full: Vec<f32> = (0..6).map(|i| i as f32 * (r + 1.0)).collect();
                        let mut reduced = vec![0.0; 3];
                        link.reduce_scatter(&full, &mut reduced).unwrap();
                        (gathered, reduced)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (gathered, _) in &results {
            assert_eq!(gathered, &[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
        }
        // Tower r keeps elements 3r..3r+3 of full0 + full1 = 3·i.
        assert_eq!(results[0].1, vec![0.0, 3.0, 6.0]);
        assert_eq!(results[1].1, vec![9.0, 12.0, 15.0]);
    }

    #[test]
    fn a_tower_that_leaves_releases_the_other() {
        let [mut first, second] = HostLink::<f32>::pair();
        let waiter = std::thread::spawn(move || {
            let mut gathered = vec![0.0; 2];
            first.all_gather(&vec![1.0], &mut gathered)
        });
        drop(second);
        assert!(waiter.join().unwrap().is_err());
    }
}
