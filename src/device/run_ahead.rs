//! How far the host may run ahead of a device that runs asynchronously: an
//! event is recorded at the end of each queued step, and the host waits for
//! the one recorded `queued` steps earlier before it queues more, so that
//! at most `queued` steps are unfinished when [`RunAhead::end_step`]
//! returns.

use crate::error::Result;
use std::collections::VecDeque;

/// The end-of-step events of the steps still queued, oldest first.
pub struct RunAhead<E> {
    events: VecDeque<E>,
}

impl<E> Default for RunAhead<E> {
    fn default() -> Self {
        RunAhead {
            events: VecDeque::new(),
        }
    }
}

impl<E> RunAhead<E> {
    /// Notes `event`, recorded at the end of a step just queued, then
    /// waits (with `wait`) for the oldest events until at most `queued`
    /// steps are left unfinished.
    pub fn end_step(
        &mut self,
        event: E,
        queued: usize,
        mut wait: impl FnMut(&E) -> Result<()>,
    ) -> Result<()> {
        self.events.push_back(event);
        while self.events.len() > queued {
            if let Some(oldest) = self.events.front() {
                wait(oldest)?;
            }
            self.events.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn the_host_waits_for_the_step_queued_steps_earlier() {
        let mut ahead = RunAhead::default();
        let mut waited = Vec::new();
        for step in 0..6 {
            ahead
                .end_step(step, 2, |&e| {
                    waited.push((step, e));
                    Ok(())
                })
                .unwrap();
        }
        // Steps 0 and 1 queue freely; then step k waits for step k − 2.
        assert_eq!(waited, [(2, 0), (3, 1), (4, 2), (5, 3)]);
        // Asking for fewer drains to that many, oldest first.
        let mut drained = Vec::new();
        ahead
            .end_step(6, 0, |&e| {
                drained.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(drained, [4, 5, 6]);
    }

    #[test]
    fn a_failed_wait_keeps_the_event_and_fails() {
        let mut ahead = RunAhead::default();
        ahead.end_step(0, 1, |_| Ok(())).unwrap();
        let e = ahead
            .end_step(1, 1, |_| Err(Error::Training("lost".into())))
            .unwrap_err();
        assert_eq!(e.to_string(), "lost");
        let mut waited = Vec::new();
        ahead
            .end_step(2, 0, |&e| {
                waited.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(waited, [0, 1, 2]);
    }
}
