//! Where the two tower threads of one process meet: a slot per tower and a
//! barrier around it. The host link passes data through the slots; the
//! emulation link passes device pointers.

use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Shared by both ends of a link.
#[derive(Default)]
pub struct Rendezvous<S> {
    state: Mutex<State<S>>,
    turn: Condvar,
}

#[derive(Default)]
struct State<S> {
    slots: [S; TOWERS],
    arrived: usize,
    generation: u64,
    /// A tower left (its thread ended); the other must not wait for it.
    abandoned: bool,
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
        let mut state = self.state.lock().map_err(|_| gone(rank))?;
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
        while state.generation == generation {
            if state.abandoned {
                return Err(gone(rank));
            }
            state = self.turn.wait(state).map_err(|_| gone(rank))?;
        }
        Ok(state)
    }
}

fn gone(rank: usize) -> Error {
    Error::Tower {
        tower: rank,
        message: "the other tower stopped in the middle of an exchange".into(),
    }
}
