//! Both towers, each on its own OS thread that owns its device and its end of
//! the link (GPU handles are not `Send`); the caller's thread hands them
//! batches over channels and waits for both.

use crate::data::input::Images;
use crate::device::cpu::{CpuDevice, Real};
use crate::device::cuda::{CudaDevice, CudaOptions};
use crate::device::faults::{self, Faulty};
use crate::device::{Device, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::link::Link;
use crate::link::copy::{CopyLink, CopyShared};
use crate::link::host::HostLink;
use crate::link::nccl::{self, NcclLink};
use crate::link::rendezvous::Rendezvous;
use crate::link::watch::Watch;
use crate::net::params::{TwinTensor, join_towers, split_twin};
use crate::net::plan::{Plan, TOWERS};
use crate::placement::Placement;
use crate::tower::{LayerTiming, ParamSet, Tower};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch both towers read: the same images (f32 NCHW, or u8 crops each
/// tower's device turns into its input) and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Arc<Images>,
    pub labels: Arc<Vec<u32>>,
}

enum Request {
    /// Forward; with a dropout key also backward and, with `sgd`, an update.
    Step {
        batch: Batch,
        dropout_key: Option<u64>,
        sgd: Option<SgdStep>,
    },
    Download(ParamSet),
    Upload(ParamSet, Vec<crate::net::params::LayerParams<Vec<f32>>>),
    Logits,
    Timings,
    Profile(bool),
}

enum Reply {
    Stats(LossStats),
    Params(Vec<crate::net::params::LayerParams<Vec<f32>>>),
    Logits(Vec<f32>),
    Timings(Vec<LayerTiming>),
    Done,
}

struct Worker {
    requests: Sender<Request>,
    replies: Receiver<Result<Reply>>,
    thread: JoinHandle<()>,
}

/// The two towers of one net, running.
pub struct TowerPair {
    plan: Arc<Plan>,
    workers: Vec<Worker>,
    watch: Arc<Watch>,
    link_note: String,
}

impl TowerPair {
    /// Both towers on the CPU, over host memory, with the twin's parameters
    /// `init`, computing in `T` (f32 for training, f64 for reference checks).
    pub fn cpu<T: Real>(plan: Arc<Plan>, batch: usize, init: &[TwinTensor]) -> Result<TowerPair> {
        let watch = Arc::new(Watch::new(["CPU".into(), "CPU".into()])?);
        let links: Vec<Mutex<Option<HostLink<T>>>> = HostLink::pair_in(&watch)
            .into_iter()
            .map(|l| Mutex::new(Some(l)))
            .collect();
        let pair = TowerPair::spawn(
            plan,
            batch,
            init,
            watch,
            |rank| faults::build(rank, || Ok(CpuDevice::<T>::default())),
            move |rank, _: &Faulty<CpuDevice<T>>| {
                let link = links[rank].lock().ok().and_then(|mut l| l.take());
                link.ok_or_else(|| Error::Training(format!("tower {rank}: link end already taken")))
            },
        )?;
        pair.ready()?;
        Ok(pair)
    }

    /// Both towers where `placement` says, with the twin's parameters `init`.
    /// One tower per GPU meets over NCCL; where NCCL is missing or fails to
    /// start, over peer copies ([`TowerPair::link_note`] says which and why).
    pub fn new(
        placement: Placement,
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
    ) -> Result<TowerPair> {
        match placement {
            Placement::Cpu => TowerPair::cpu::<f32>(plan, batch, init),
            Placement::OneGpu { ordinal, options } => {
                let mut pair = TowerPair::copies(plan, batch, init, [ordinal; TOWERS], options)?;
                pair.link_note = format!("towers meet by device copies on GPU {ordinal}");
                Ok(pair)
            }
            Placement::TwoGpus { ordinals, options } => {
                let why = match TowerPair::nccl(Arc::clone(&plan), batch, init, ordinals, options) {
                    Ok(pair) => return Ok(pair),
                    Err(e) if e.is_input() => return Err(e),
                    Err(e) => e.to_string(),
                };
                let mut pair = TowerPair::copies(plan, batch, init, ordinals, options)?;
                pair.link_note = format!(
                    "towers meet by peer copies between GPUs {} and {} ({why})",
                    ordinals[0], ordinals[1]
                );
                Ok(pair)
            }
        }
    }

    /// Tower r on GPU `ordinals[r]`, meeting by device copies.
    fn copies(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        ordinals: [usize; TOWERS],
        options: CudaOptions,
    ) -> Result<TowerPair> {
        let watch = Arc::new(Watch::new(ordinals.map(|g| format!("GPU {g}")))?);
        let shared: CopyShared = Arc::new(Rendezvous::new(Arc::clone(&watch)));
        let device_watch = Arc::clone(&watch);
        let pair = TowerPair::spawn(
            plan,
            batch,
            init,
            watch,
            watched_gpus(ordinals, options, device_watch),
            move |rank, device: &Faulty<CudaDevice>| {
                Ok(CopyLink::new(rank, device.inner(), Arc::clone(&shared)))
            },
        )?;
        pair.ready()?;
        Ok(pair)
    }

    /// Tower r on GPU `ordinals[r]`, meeting over NCCL; fails when NCCL is
    /// missing or any rank cannot join. No tower calls NCCL before both
    /// devices are built (the start barrier), and each polls its
    /// communicator's start against the other tower's failure.
    fn nccl(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        ordinals: [usize; TOWERS],
        options: CudaOptions,
    ) -> Result<TowerPair> {
        let version = nccl::version().map_err(|why| Error::cuda("NCCL", why))?;
        let id = nccl::new_id()?;
        let watch = Arc::new(Watch::new(ordinals.map(|g| format!("GPU {g}")))?);
        let (link_watch, device_watch) = (Arc::clone(&watch), Arc::clone(&watch));
        let mut pair = TowerPair::spawn(
            plan,
            batch,
            init,
            watch,
            watched_gpus(ordinals, options, device_watch),
            move |rank, device: &Faulty<CudaDevice>| {
                NcclLink::new(rank, TOWERS, id, device.inner(), Arc::clone(&link_watch))
            },
        )?;
        pair.ready()?;
        pair.link_note = format!(
            "towers meet over NCCL {version} between GPUs {} and {}",
            ordinals[0], ordinals[1]
        );
        Ok(pair)
    }

    /// Waits until both towers are built, returning the first failure.
    fn ready(&self) -> Result<()> {
        self.ask(|| Request::Profile(false)).map(drop)
    }

    /// How the towers meet, in one line.
    pub fn link_note(&self) -> &str {
        &self.link_note
    }

    /// Both towers, each on its own thread: `build(rank)` makes its device;
    /// the towers then meet at `watch`'s start barrier, so that no link is
    /// made (no collective library called) unless both devices exist; then
    /// `connect(rank, &device)` makes its end of the link. A tower that
    /// fails, at any point, records its error in `watch` before it stops,
    /// which releases the other tower wherever it waits.
    pub fn spawn<D, L, B, C>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        watch: Arc<Watch>,
        build: B,
        connect: C,
    ) -> Result<TowerPair>
    where
        D: Device + 'static,
        L: Link<D::Buf> + 'static,
        B: Fn(usize) -> Result<D> + Send + Sync + 'static,
        C: Fn(usize, &D) -> Result<L> + Send + Sync + 'static,
    {
        let split = split_twin(&plan, init)?;
        let make = Arc::new((build, connect));
        let mut workers = Vec::with_capacity(TOWERS);
        for (rank, host_params) in split.into_iter().enumerate() {
            let (requests, inbox) = channel::<Request>();
            let (outbox, replies) = channel::<Result<Reply>>();
            let place = watch.place(rank).to_string();
            let (plan, make, watch) = (Arc::clone(&plan), Arc::clone(&make), Arc::clone(&watch));
            let thread = std::thread::Builder::new()
                .name(format!("tower{rank}"))
                .spawn(move || {
                    // Declared first, so dropped last: a panic below is
                    // recorded once the tower (its link first) is gone.
                    let _on_panic = FailOnPanic {
                        watch: Arc::clone(&watch),
                        rank,
                    };
                    let (build, connect) = &*make;
                    let built = build(rank).and_then(|device| {
                        watch.arrive(rank)?;
                        let link = connect(rank, &device)?;
                        Tower::new(plan, device, link, batch, &host_params)
                    });
                    drop(host_params);
                    let mut tower = match built {
                        Ok(tower) => tower,
                        Err(e) => {
                            watch.fail(rank, &e);
                            let _ = outbox.send(Err(e));
                            return;
                        }
                    };
                    for request in inbox {
                        let reply = serve(&mut tower, request);
                        if let Err(e) = &reply {
                            // Recorded before the tower (its link first)
                            // is dropped, so the other tower is released
                            // with this error rather than a bare "stopped".
                            watch.fail(rank, e);
                        }
                        let failed = reply.is_err();
                        if outbox.send(reply).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::Tower {
                    tower: rank,
                    place,
                    message: format!("cannot start its thread: {e}"),
                })?;
            workers.push(Worker {
                requests,
                replies,
                thread,
            });
        }
        Ok(TowerPair {
            plan,
            workers,
            watch,
            link_note: "towers meet through host memory".into(),
        })
    }

    fn ask(&self, make: impl Fn() -> Request) -> Result<Vec<Reply>> {
        for (rank, w) in self.workers.iter().enumerate() {
            w.requests.send(make()).map_err(|_| self.stopped(rank))?;
        }
        (0..self.workers.len())
            .map(|rank| self.reply(rank))
            .collect()
    }

    /// Tower `rank`'s reply, or the pair's first failure as soon as either
    /// tower fails (never a wait for a tower that will not answer).
    fn reply(&self, rank: usize) -> Result<Reply> {
        let worker = &self.workers[rank];
        loop {
            match worker.replies.recv_timeout(REPLY_POLL) {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => return Err(self.watch.failure().unwrap_or(e)),
                Err(RecvTimeoutError::Timeout) => self.watch.check()?,
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped(rank)),
            }
        }
    }

    /// Asks tower 0 alone, for what does not involve the other tower.
    fn ask_first(&self, request: Request) -> Result<Reply> {
        let first = &self.workers[0];
        first.requests.send(request).map_err(|_| self.stopped(0))?;
        self.reply(0)
    }

    /// The pair's first failure, or that tower `rank`'s thread has ended.
    fn stopped(&self, rank: usize) -> Error {
        self.watch.failure().unwrap_or_else(|| Error::Tower {
            tower: rank,
            place: self.watch.place(rank).to_string(),
            message: "its thread has stopped".into(),
        })
    }

    /// One training step: forward, backward and, with `sgd`, the update.
    pub fn train_step(
        &self,
        batch: &Batch,
        dropout_key: u64,
        sgd: Option<SgdStep>,
    ) -> Result<LossStats> {
        let replies = self.ask(|| Request::Step {
            batch: batch.clone(),
            dropout_key: Some(dropout_key),
            sgd,
        })?;
        first_stats(replies)
    }

    /// Forward only, dropout off.
    pub fn evaluate(&self, batch: &Batch) -> Result<LossStats> {
        let replies = self.ask(|| Request::Step {
            batch: batch.clone(),
            dropout_key: None,
            sgd: None,
        })?;
        first_stats(replies)
    }

    /// The last forward pass's logits, `[image][class]` (both towers hold them; tower 0's).
    pub fn logits(&self) -> Result<Vec<f32>> {
        match self.ask_first(Request::Logits)? {
            Reply::Logits(l) => Ok(l),
            _ => unreachable!("a logits request answers with logits"),
        }
    }

    /// Tower 0's per-layer wall times of the last step (see [`Tower::timings`]).
    pub fn timings(&self) -> Result<Vec<LayerTiming>> {
        match self.ask_first(Request::Timings)? {
            Reply::Timings(t) => Ok(t),
            _ => unreachable!("a timings request answers with timings"),
        }
    }

    /// Makes both towers wait for their device after each layer (see [`Tower::set_profile`]).
    pub fn set_profile(&self, on: bool) -> Result<()> {
        self.ask(|| Request::Profile(on)).map(drop)
    }

    /// Replaces weights, gradients or momentum with the twin's tensors `twin`.
    pub fn upload(&self, which: ParamSet, twin: &[TwinTensor]) -> Result<()> {
        let split = split_twin(&self.plan, twin)?;
        for ((rank, w), params) in self.workers.iter().enumerate().zip(split) {
            w.requests
                .send(Request::Upload(which, params))
                .map_err(|_| self.stopped(rank))?;
        }
        for rank in 0..self.workers.len() {
            self.reply(rank)?;
        }
        Ok(())
    }

    /// Weights, gradients or momentum, joined into the twin's tensors.
    pub fn download(&self, which: ParamSet) -> Result<Vec<TwinTensor>> {
        let towers = self
            .ask(|| Request::Download(which))?
            .into_iter()
            .map(|r| match r {
                Reply::Params(p) => p,
                _ => unreachable!("a download answers with parameters"),
            })
            .collect::<Vec<_>>();
        Ok(join_towers(&self.plan, &towers))
    }
}

impl Drop for TowerPair {
    /// Ends both threads. After a failure a tower may never answer again (a
    /// hung device): it gets a short grace and is then left behind, to end
    /// with the process, rather than joined forever.
    fn drop(&mut self) {
        let failed = self.watch.failure().is_some();
        let grace = Instant::now() + Duration::from_secs(1);
        for w in self.workers.drain(..) {
            drop(w.requests);
            if failed {
                while !w.thread.is_finished() && Instant::now() < grace {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if !w.thread.is_finished() {
                    continue;
                }
            }
            let _ = w.thread.join();
        }
    }
}

/// How often the caller's thread, waiting for a reply, looks for a failure.
const REPLY_POLL: Duration = Duration::from_millis(20);

/// Builds tower `rank`'s device on GPU `ordinals[rank]`, watched by the
/// pair (its waits poll for the other tower's failure) and open to the
/// test-only fault hook: what both GPU links start their towers with.
fn watched_gpus(
    ordinals: [usize; TOWERS],
    options: CudaOptions,
    watch: Arc<Watch>,
) -> impl Fn(usize) -> Result<Faulty<CudaDevice>> + Send + Sync + 'static {
    move |rank| {
        faults::build(rank, || {
            CudaDevice::new(ordinals[rank], options).map(|d| d.watched(Arc::clone(&watch), rank))
        })
    }
}

/// Records a tower thread's panic in the pair's watch, so that the other
/// tower and the caller are released with it instead of waiting for the
/// timeout.
struct FailOnPanic {
    watch: Arc<Watch>,
    rank: usize,
}

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let bug = Error::Training("its thread panicked (a bug; the message is above)".into());
            self.watch.fail(self.rank, &bug);
        }
    }
}

fn first_stats(replies: Vec<Reply>) -> Result<LossStats> {
    match replies.first() {
        Some(Reply::Stats(s)) => Ok(*s),
        _ => unreachable!("a step answers with statistics"),
    }
}

fn serve<D: Device, L: Link<D::Buf>>(tower: &mut Tower<D, L>, request: Request) -> Result<Reply> {
    match request {
        Request::Step {
            batch,
            dropout_key,
            sgd,
        } => {
            let stats = tower.forward(&batch.images, &batch.labels, dropout_key)?;
            if dropout_key.is_some() {
                tower.backward()?;
                if let Some(step) = sgd {
                    tower.update(step)?;
                }
            }
            // A step's reply means the step is done, on a GPU too.
            tower.wait()?;
            Ok(Reply::Stats(stats))
        }
        Request::Download(which) => Ok(Reply::Params(tower.download(which)?)),
        Request::Upload(which, params) => {
            tower.upload(which, &params)?;
            Ok(Reply::Done)
        }
        Request::Logits => Ok(Reply::Logits(tower.logits()?)),
        Request::Timings => Ok(Reply::Timings(tower.timings().to_vec())),
        Request::Profile(on) => {
            tower.set_profile(on);
            Ok(Reply::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::faults::Fault;
    use crate::net::init::init_twin;
    use crate::net::spec::InitScheme;

    /// Runs a CPU pair whose tower 1 has `fault` until it fails, and
    /// returns the error and how long dropping the pair then took. The
    /// watch waits 60 s, so only a release ends the other tower's wait soon.
    fn fail_with(fault: Fault) -> (Error, Duration) {
        let plan = Arc::new(Plan::load("small").unwrap());
        let watch = Arc::new(Watch::with_timeout(
            ["CPU".into(), "CPU".into()],
            Duration::from_secs(60),
        ));
        let links = Mutex::new(HostLink::<f32>::pair_in(&watch).map(Some));
        let batch = 2;
        let pair = TowerPair::spawn(
            Arc::clone(&plan),
            batch,
            &init_twin(&plan, InitScheme::He, 1),
            watch,
            move |rank| {
                Faulty::new((rank == 1).then_some(fault), || {
                    Ok(CpuDevice::<f32>::default())
                })
            },
            move |rank, _: &Faulty<CpuDevice<f32>>| Ok(links.lock().unwrap()[rank].take().unwrap()),
        )
        .unwrap();
        let step = Batch {
            images: Arc::new(vec![0.5; batch * plan.input.len()].into()),
            labels: Arc::new(vec![0, 1]),
        };
        let sgd = SgdStep {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        let error = pair
            .ready()
            .and_then(|()| (1..=3).try_for_each(|k| pair.train_step(&step, k, Some(sgd)).map(drop)))
            .unwrap_err();
        let start = Instant::now();
        drop(pair);
        (error, start.elapsed())
    }

    #[test]
    fn a_failing_tower_releases_the_other_at_once() {
        for (fault, what) in [
            (Fault::Build, "the device does not build"),
            (Fault::Forward(2), "forward pass 2 fails"),
            (Fault::Backward(2), "backward pass 2 fails"),
        ] {
            let (error, dropping) = fail_with(fault);
            assert_eq!(
                error.to_string(),
                format!("tower 1 (CPU): injected fault (ALEXNET_FAULT): {what}")
            );
            // Both threads had ended: no grace was waited out.
            assert!(
                dropping < Duration::from_millis(500),
                "{fault:?}: {dropping:?}"
            );
        }
    }

    #[test]
    fn a_tower_that_panics_releases_the_other_with_the_panic() {
        let plan = Arc::new(Plan::load("small").unwrap());
        // A minute's timeout: only the panic's record ends the wait soon.
        let watch = Arc::new(Watch::with_timeout(
            ["CPU".into(), "CPU".into()],
            Duration::from_secs(60),
        ));
        let links = Mutex::new(HostLink::<f32>::pair_in(&watch).map(Some));
        let start = Instant::now();
        let pair = TowerPair::spawn(
            Arc::clone(&plan),
            2,
            &init_twin(&plan, InitScheme::He, 1),
            watch,
            move |rank| {
                assert_eq!(rank, 0, "a bug in tower 1's start");
                Ok(CpuDevice::<f32>::default())
            },
            move |rank, _: &CpuDevice<f32>| Ok(links.lock().unwrap()[rank].take().unwrap()),
        )
        .unwrap();
        let error = pair.ready().unwrap_err().to_string();
        drop(pair);
        assert!(
            error.contains("tower 1") && error.contains("panicked"),
            "{error}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
