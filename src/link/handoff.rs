//! One-way messages between the two tower threads of one process: each
//! tower posts, in order, what the other takes in the same order. Posting
//! never waits; taking waits only until the other tower's thread has queued
//! its work that far (never for a GPU), and never past the pair's first
//! failure, the other tower's leaving, or the pair's timeout ([`Watch`]).
//! The copy link hands CUDA events over this way: the host orders the
//! record before the wait, the GPU orders the work.

use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use crate::watch::{Watch, other};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Shared by both towers of a pair.
pub struct Handoff<M> {
    state: Mutex<State<M>>,
    posted: Condvar,
    watch: Arc<Watch>,
}

struct State<M> {
    /// Messages for tower r, oldest first.
    inbox: [VecDeque<M>; TOWERS],
    /// How many of tower r's messages the other tower has taken.
    taken: [u64; TOWERS],
    /// A tower left (its thread ended); the other must not wait for it, nor
    /// take what it posted.
    abandoned: bool,
}

impl<M> Handoff<M> {
    /// A handoff for the pair `watch` looks after.
    pub fn new(watch: Arc<Watch>) -> Self {
        Handoff {
            state: Mutex::new(State {
                inbox: std::array::from_fn(|_| VecDeque::new()),
                taken: [0; TOWERS],
                abandoned: false,
            }),
            posted: Condvar::new(),
            watch,
        }
    }

    fn lock(&self, rank: usize) -> Result<MutexGuard<'_, State<M>>> {
        self.state.lock().map_err(|_| self.gone(rank))
    }

    /// Tower `rank` posts `message` for the other tower.
    pub fn post(&self, rank: usize, message: M) -> Result<()> {
        let mut state = self.lock(rank)?;
        if state.abandoned {
            return Err(self.gone(rank));
        }
        state.inbox[other(rank)].push_back(message);
        drop(state);
        self.posted.notify_all();
        Ok(())
    }

    /// Tower `rank` takes the other tower's oldest message and runs `use_`
    /// on it while the other cannot leave (so what the message names stays
    /// alive through `use_`), waiting for it if need be.
    pub fn take<R>(&self, rank: usize, use_: impl FnOnce(M) -> Result<R>) -> Result<R> {
        let state = self.lock(rank)?;
        let (_state, message) = self.watch.wait_on(rank, &self.posted, state, |state| {
            if state.abandoned {
                return Some(Err(self.gone(rank)));
            }
            let message = state.inbox[rank].pop_front()?;
            state.taken[other(rank)] += 1;
            Some(Ok(message))
        })?;
        // Under the lock, so the other tower cannot leave meanwhile.
        use_(message)
    }

    /// How many of tower `rank`'s messages the other tower has taken.
    pub fn taken_from(&self, rank: usize) -> Result<u64> {
        Ok(self.lock(rank)?.taken[rank])
    }

    /// Marks the handoff abandoned by one tower, releasing the other; once
    /// this returns, the other tower is not using, and will not take,
    /// anything posted here.
    pub fn abandon(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.abandoned = true;
        }
        self.posted.notify_all();
    }

    /// The pair's first failure, or that the other tower left.
    fn gone(&self, rank: usize) -> Error {
        self.watch.left_exchange(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn watch(timeout: Duration) -> Arc<Watch> {
        Arc::new(Watch::with_timeout(
            ["GPU 0".into(), "GPU 0".into()],
            timeout,
        ))
    }

    #[test]
    fn messages_arrive_in_order_and_posting_never_waits() {
        let handoff = Arc::new(Handoff::new(watch(Duration::from_secs(5))));
        // Tower 0 runs three posts ahead before tower 1 takes any.
        for k in 0..3 {
            handoff.post(0, k).unwrap();
        }
        assert_eq!(handoff.taken_from(0).unwrap(), 0);
        let h = Arc::clone(&handoff);
        let taker = std::thread::spawn(move || {
            (0..4).map(|_| h.take(1, Ok).unwrap()).collect::<Vec<i32>>()
        });
        std::thread::sleep(Duration::from_millis(30));
        handoff.post(0, 3).unwrap();
        assert_eq!(taker.join().unwrap(), [0, 1, 2, 3]);
        assert_eq!(handoff.taken_from(0).unwrap(), 4);
        assert_eq!(handoff.taken_from(1).unwrap(), 0);
    }

    #[test]
    fn a_failure_or_a_leaving_tower_releases_the_taker() {
        let w = watch(Duration::from_secs(60));
        let handoff = Arc::new(Handoff::<u8>::new(Arc::clone(&w)));
        let h = Arc::clone(&handoff);
        let start = Instant::now();
        let taker = std::thread::spawn(move || h.take(0, Ok));
        std::thread::sleep(Duration::from_millis(30));
        w.fail(1, &Error::Training("broke".into()));
        let e = taker.join().unwrap().unwrap_err().to_string();
        assert_eq!(e, "tower 1 (GPU 0): broke");

        let handoff = Arc::new(Handoff::<u8>::new(watch(Duration::from_secs(60))));
        handoff.post(1, 7).unwrap();
        handoff.abandon();
        // What the leaving tower posted is not taken.
        let e = handoff.take(0, Ok).unwrap_err().to_string();
        assert!(e.contains("stopped in the middle of an exchange"), "{e}");
        assert!(handoff.post(0, 1).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_tower_that_never_posts_is_named_after_the_timeout() {
        let handoff = Handoff::<u8>::new(watch(Duration::from_millis(100)));
        let start = Instant::now();
        let e = handoff.take(0, Ok).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e,
            "tower 1 (GPU 0): did not answer within 0.1 s while the other tower waited at an exchange"
        );
    }
}
