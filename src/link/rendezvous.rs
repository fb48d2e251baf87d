//! Where the two tower threads of one process meet: a slot per tower and a
//! barrier around it. The host link passes data through the slots; the
//! copy link passes device pointers. A tower never waits here for one that
//! has failed or left, nor longer than the pair's timeout ([`Watch`]).

use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use crate::watch::Watch;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Shared by both ends of a link.
pub struct Rendezvous<S> {
    state: Mutex<State<S>>,
    turn: Condvar,
    watch: Arc<Watch>,
}

#[derive(Default)]
struct State<S> {
    slots: [S; TOWERS],
    arrived: usize,
    generation: u64,
    /// A tower left (its thread ended); the other must not wait for it.
    abandoned: bool,
}

impl<S: Default> Rendezvous<S> {
    /// A meeting place for the pair `watch` looks after.
    pub fn new(watch: Arc<Watch>) -> Self {
        Rendezvous {
            state: Mutex::new(State::default()),
            turn: Condvar::new(),
            watch,
        }
    }
}

impl<S> Rendezvous<S> {
    /// Tower `rank` fills its slot with `put`, waits for every tower to do the
    /// same, runs `read` over all slots, and waits again so the slots can be
    /// reused.
    pub fn meet<R>(
        &self,
        rank: usize,
        put: impl FnOnce(&mut S),
        read: impl FnOnce(&[S; TOWERS]) -> R,
    ) -> Result<R> {
        let mut state = self.state.lock().map_err(|_| self.gone(rank))?;
        put(&mut state.slots[rank]);
        state = self.wait(rank, state)?;
        let result = read(&state.slots);
        drop(self.wait(rank, state)?);
        Ok(result)
    }

    /// Marks the link abandoned by one tower, releasing the other.
    pub fn abandon(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.abandoned = true;
        }
        self.turn.notify_all();
    }

    /// The pair this rendezvous belongs to.
    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    fn wait<'a>(
        &self,
        rank: usize,
        mut state: MutexGuard<'a, State<S>>,
    ) -> Result<MutexGuard<'a, State<S>>> {
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == TOWERS {
            state.arrived = 0;
            state.generation += 1;
            self.turn.notify_all();
            return Ok(state);
        }
        let (state, ()) = self.watch.wait_on(rank, &self.turn, state, |state| {
            if state.generation != generation {
                Some(Ok(()))
            } else if state.abandoned {
                Some(Err(self.gone(rank)))
            } else {
                None
            }
        })?;
        Ok(state)
    }

    /// The pair's first failure, or that the other tower left.
    fn gone(&self, rank: usize) -> Error {
        self.watch.left_exchange(rank)
    }
}
