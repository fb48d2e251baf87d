//! What the two towers of a pair know of each other, so that neither ever
//! waits for a tower that has failed or stopped answering: a barrier they
//! meet at once their devices are built (before any collective library is
//! called), the pair's first failure, and how long one tower waits for the
//! other before it declares it lost.
//!
//! Every wait for the other tower goes through here: the start barrier, the
//! host-memory rendezvous of the host and copy links, and the polled waits
//! of the NCCL link and of a GPU stream that carries NCCL work. A failing
//! tower records its error first and releases every waiter; the caller's
//! thread reports that first error, naming the tower and where it ran.

use crate::error::{Error, Result};
use crate::net::plan::TOWERS;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The environment variable that overrides [`DEFAULT_TIMEOUT`], in seconds.
pub const TIMEOUT_VAR: &str = "ALEXNET_TOWER_TIMEOUT_S";
/// How long a tower waits for the other at the start barrier, at an
/// exchange, or for GPU work that depends on the other tower.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a polled wait looks again, after its first [`SPIN`].
pub(crate) const POLL: Duration = Duration::from_millis(1);
/// How long a polled wait only yields between looks (a GPU step's wait is
/// usually short, and a sleep would add to it).
pub(crate) const SPIN: Duration = Duration::from_millis(5);

/// How long a tower (or a node) waits for another: [`TIMEOUT_VAR`]'s
/// seconds, or [`DEFAULT_TIMEOUT`].
pub fn timeout() -> Result<Duration> {
    match std::env::var(TIMEOUT_VAR) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(text) => text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::Input(format!(
                    "{TIMEOUT_VAR}={text}: give a positive number of seconds"
                ))
            }),
    }
}

/// Shared by both towers of a pair and the thread that drives them.
pub struct Watch {
    state: Mutex<State>,
    changed: Condvar,
    timeout: Duration,
    places: [String; TOWERS],
    /// The watches of the other replicas of a run ([`Watch::join`]): this
    /// pair's own failure is passed on to them, so that no replica waits
    /// for one that has failed.
    peers: OnceLock<Vec<Weak<Watch>>>,
}

#[derive(Default)]
struct State {
    arrived: usize,
    failure: Option<Failure>,
}

/// The pair's first failure.
#[derive(Debug, Clone)]
struct Failure {
    tower: usize,
    message: String,
    input: bool,
    /// Another replica's failure, passed on: `message` is its whole error.
    passed_on: bool,
}

impl Watch {
    /// A watch for towers running at `places` (e.g. "GPU 1"), with the
    /// timeout of [`TIMEOUT_VAR`] or [`DEFAULT_TIMEOUT`].
    pub fn new(places: [String; TOWERS]) -> Result<Watch> {
        Ok(Watch::with_timeout(places, timeout()?))
    }

    /// A watch with an explicit timeout.
    pub fn with_timeout(places: [String; TOWERS], timeout: Duration) -> Watch {
        Watch {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            timeout,
            places,
            peers: OnceLock::new(),
        }
    }

    /// Makes the watches of a run's replicas pass their pair's first
    /// failure on to each other (once; later calls change nothing).
    pub fn join(watches: &[Arc<Watch>]) {
        for (r, watch) in watches.iter().enumerate() {
            let others = watches
                .iter()
                .enumerate()
                .filter(|&(o, _)| o != r)
                .map(|(_, w)| Arc::downgrade(w))
                .collect();
            let _ = watch.peers.set(others);
        }
    }

    /// Both towers on the CPU.
    pub fn cpu() -> Watch {
        Watch::with_timeout(std::array::from_fn(|_| "CPU".into()), DEFAULT_TIMEOUT)
    }

    /// How long one tower waits for the other.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where tower `rank` runs.
    pub fn place(&self, rank: usize) -> &str {
        &self.places[rank]
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a thread panicked while holding it; the
        // state is two plain fields and stays meaningful.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `error` of tower `rank` as the pair's failure unless one is
    /// recorded already, and releases every waiter.
    pub fn fail(&self, rank: usize, error: &Error) {
        self.fail_with(rank, error.to_string(), error.is_input());
    }

    /// Records that tower `rank` did not answer within the timeout while
    /// `what`.
    pub fn lost(&self, rank: usize, what: &str) {
        let message = format!(
            "did not answer within {} s while {what}",
            self.timeout.as_secs_f64()
        );
        self.fail_with(rank, message, false);
    }

    fn fail_with(&self, rank: usize, message: String, input: bool) {
        if self.record(rank, message, input, false) {
            let shown = self.failure().map(|e| e.to_string()).unwrap_or_default();
            for peer in self.peers.get().into_iter().flatten() {
                if let Some(peer) = peer.upgrade() {
                    peer.record(rank, shown.clone(), input, true);
                }
            }
        }
    }

    /// Records a failure unless one is recorded already, and releases every
    /// waiter; whether this one was recorded.
    fn record(&self, tower: usize, message: String, input: bool, passed_on: bool) -> bool {
        let mut state = self.lock();
        let first = state.failure.is_none();
        if first {
            state.failure = Some(Failure {
                tower,
                message,
                input,
                passed_on,
            });
        }
        drop(state);
        self.changed.notify_all();
        first
    }

    /// The pair's first failure as an error naming the tower and its place
    /// (an input error stays one, for exit status 2).
    pub fn failure(&self) -> Option<Error> {
        let failure = self.lock().failure.clone()?;
        Some(if failure.passed_on && !failure.input {
            Error::Training(failure.message)
        } else if failure.input {
            Error::Input(failure.message)
        } else {
            Error::Tower {
                tower: failure.tower,
                place: self.places[failure.tower].clone(),
                message: failure.message,
            }
        })
    }

    /// The pair's own first failure: [`Watch::failure`] unless that was
    /// passed on from another replica.
    pub fn own_failure(&self) -> Option<Error> {
        let passed_on = self.lock().failure.as_ref()?.passed_on;
        if passed_on { None } else { self.failure() }
    }

    /// Fails with the pair's first failure, if there is one.
    pub fn check(&self) -> Result<()> {
        self.failure().map_or(Ok(()), Err)
    }

    /// The start barrier: tower `rank` has built its device and waits until
    /// the other has too. Fails at once with the first failure when either
    /// tower fails, and after the timeout naming the tower that never came.
    pub fn arrive(&self, rank: usize) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut state = self.lock();
        state.arrived += 1;
        self.changed.notify_all();
        while state.arrived < TOWERS && state.failure.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(state);
                self.lost(other(rank), "building its device");
                return Err(self.failure().expect("just recorded"));
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(state);
        self.check()
    }

    /// Waits on `turn` with `state` until `answer` gives the wait's outcome
    /// (it runs under the lock each time the state may have changed; `None`
    /// waits on). Fails with the pair's first failure as soon as either tower
    /// fails (looked for every few milliseconds, since a failure elsewhere is
    /// recorded without `turn`), and after the timeout, marking the other
    /// tower lost at an exchange. The lock is still held when it returns.
    pub fn wait_on<'a, S, R>(
        &self,
        rank: usize,
        turn: &Condvar,
        mut state: MutexGuard<'a, S>,
        mut answer: impl FnMut(&mut S) -> Option<Result<R>>,
    ) -> Result<(MutexGuard<'a, S>, R)> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(outcome) = answer(&mut state) {
                return outcome.map(|r| (state, r));
            }
            self.check()?;
            if Instant::now() >= deadline {
                drop(state);
                self.lost(other(rank), "the other tower waited at an exchange");
                return Err(self.left_exchange(rank));
            }
            state = turn
                .wait_timeout(state, POLL * 20)
                .map_err(|_| self.left_exchange(rank))?
                .0;
        }
    }

    /// The pair's first failure, or that the tower other than `rank` left
    /// in the middle of an exchange.
    pub fn left_exchange(&self, rank: usize) -> Error {
        self.failure().unwrap_or_else(|| Error::Tower {
            tower: rank,
            place: self.place(rank).to_string(),
            message: "the other tower stopped in the middle of an exchange".into(),
        })
    }

    /// Polls `done` until it says yes: for waits that cannot block on a
    /// condition variable (a GPU event, an NCCL communicator's state). Fails
    /// with the first failure as soon as either tower fails, with `done`'s
    /// own error, or after the timeout naming the other tower as lost while
    /// `what`.
    pub fn poll(&self, rank: usize, what: &str, done: impl FnMut() -> Result<bool>) -> Result<()> {
        self.poll_for(other(rank), what, done)
    }

    /// As [`Watch::poll`], naming tower `lost` after the timeout: the
    /// waiting tower itself where no other tower is waited for (the
    /// grouped network's one thread waiting for its GPU).
    pub fn poll_for(
        &self,
        lost: usize,
        what: &str,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check()?;
            if done()? {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= self.timeout {
                self.lost(lost, what);
                return self.check();
            }
            if waited < SPIN {
                std::thread::yield_now();
            } else {
                std::thread::sleep(POLL);
            }
        }
    }
}

/// The other tower of a pair.
pub fn other(rank: usize) -> usize {
    (rank + 1) % TOWERS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn places() -> [String; TOWERS] {
        ["GPU 0".into(), "GPU 1".into()]
    }

    /// A failure in one replica's pair ends a poll of another's at once
    /// (a GPU stream's wait polls only its own pair's watch), naming the
    /// failed tower; that pair's own failure stays apart from the passed-on one.
    #[test]
    fn joined_watches_pass_a_failure_on() {
        let watches: Vec<Arc<Watch>> = (0..3)
            .map(|_| Arc::new(Watch::with_timeout(places(), Duration::from_secs(60))))
            .collect();
        Watch::join(&watches);
        watches[1].fail(0, &Error::Training("out of memory".into()));
        let start = Instant::now();
        let waited = watches[2].poll(1, "waiting for its GPU", || Ok(false));
        assert!(start.elapsed() < Duration::from_secs(5));
        let message = waited.unwrap_err().to_string();
        assert!(message.contains("out of memory"), "{message}");
        assert!(message.contains("GPU 0"), "{message}");
        assert!(watches[2].own_failure().is_none());
        assert!(watches[1].own_failure().is_some());
    }

    #[test]
    fn both_arrive_and_pass() {
        let watch = Arc::new(Watch::with_timeout(places(), Duration::from_secs(5)));
        let w = Arc::clone(&watch);
        let other = std::thread::spawn(move || w.arrive(1));
        watch.arrive(0).unwrap();
        other.join().unwrap().unwrap();
    }

    #[test]
    fn a_failing_tower_releases_the_barrier_with_its_error() {
        let watch = Arc::new(Watch::with_timeout(places(), Duration::from_secs(60)));
        let w = Arc::clone(&watch);
        let waiter = std::thread::spawn(move || w.arrive(0));
        std::thread::sleep(Duration::from_millis(50));
        watch.fail(1, &Error::cuda("opening GPU 1", "out of memory"));
        watch.fail(0, &Error::Training("a later failure".into()));
        let e = waiter.join().unwrap().unwrap_err().to_string();
        assert_eq!(e, "tower 1 (GPU 1): opening GPU 1: out of memory");
    }

    #[test]
    fn a_tower_that_never_comes_is_named_after_the_timeout() {
        let watch = Watch::with_timeout(places(), Duration::from_millis(100));
        let start = Instant::now();
        let e = watch.arrive(0).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e,
            "tower 1 (GPU 1): did not answer within 0.1 s while building its device"
        );
    }

    #[test]
    fn a_poll_names_the_other_tower_or_the_one_it_is_told() {
        let watch = Watch::with_timeout(places(), Duration::from_millis(20));
        let e = watch.poll(0, "waiting", || Ok(false)).unwrap_err();
        assert!(e.to_string().starts_with("tower 1 (GPU 1): "), "{e}");
        let watch = Watch::with_timeout(places(), Duration::from_millis(20));
        let e = watch.poll_for(0, "running", || Ok(false)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tower 0 (GPU 0): did not answer within 0.02 s while running"
        );
    }

    #[test]
    fn polling_stops_at_the_other_towers_failure() {
        let watch = Arc::new(Watch::with_timeout(places(), Duration::from_secs(60)));
        let w = Arc::clone(&watch);
        let failer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.fail(0, &Error::Input("--batch 0: bad".into()));
        });
        let e = watch.poll(1, "waiting", || Ok(false)).unwrap_err();
        failer.join().unwrap();
        assert!(e.is_input(), "{e}");
    }
}
