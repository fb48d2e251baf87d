//! Both towers, each on its own OS thread that owns its device and its end of
//! the link (GPU handles are not `Send`). The caller's thread hands each
//! tower typed work (a closure over the tower) and waits for both answers,
//! each on its own channel of the answer's type.
//!
//! A training step is queued, not waited for: a tower answers once its
//! device holds the step's work and at most [`RUN_AHEAD`] steps are
//! unfinished, and the loss statistics are read only when the caller asks
//! ([`TowerPair::take_stats`]).

use crate::data::input::Images;
use crate::device::cpu::{self, CpuDevice, Real};
use crate::device::cuda::buffer::StoredBuf;
use crate::device::cuda::kernels::Stored;
use crate::device::cuda::{CudaDevice, CudaOptions};
use crate::device::faults::{self, Faulty};
use crate::device::precision::Storage;
use crate::device::{Device, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::link::Link;
use crate::link::copy::{CopyLink, CopyShared};
use crate::link::host::HostLink;
use crate::link::nccl::{self, NcclLink};
use crate::link::solo::SoloLink;
use crate::net::params::{
    LayerParams, TwinTensor, grouped_as_twin, join_towers, split_twin, twin_as_grouped,
};
use crate::net::plan::{Plan, TOWERS};
use crate::placement::Placement;
use crate::reduce::Reduce;
use crate::reduce::host::HostReduce;
use crate::tower::{LayerTiming, ParamSet, Shard, Tower};
use crate::watch::Watch;
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

/// How many training steps a tower may have queued on its device, unfinished,
/// when it answers: the host prepares step k + 1 while the GPU runs step k,
/// and waits (for the event at the end of step k − 1) before it queues k + 2.
pub const RUN_AHEAD: usize = 2;

/// What a tower thread does for the caller, whatever its device and link.
trait Work {
    fn step(
        &mut self,
        batch: &Batch,
        dropout_key: Option<u64>,
        sgd: Option<SgdStep>,
        shard: Shard,
    ) -> Result<()>;
    fn scaled_pass(&mut self, batch: &Batch, dropout_key: u64, grad_scale: f32) -> Result<bool>;
    fn finish_step(&mut self, sgd: Option<SgdStep>) -> Result<()>;
    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>>;
    fn download(&mut self, which: ParamSet) -> Result<Vec<LayerParams<Vec<f32>>>>;
    fn upload(&mut self, which: ParamSet, params: &[LayerParams<Vec<f32>>]) -> Result<()>;
    fn logits(&mut self) -> Result<Vec<f32>>;
    fn timings(&self) -> Vec<LayerTiming>;
    fn set_profile(&mut self, on: bool);
}

impl<D: Device, L: Link<D::Buf>> Work for Tower<D, L> {
    fn step(
        &mut self,
        batch: &Batch,
        dropout_key: Option<u64>,
        sgd: Option<SgdStep>,
        shard: Shard,
    ) -> Result<()> {
        Tower::step(
            self,
            &batch.images,
            &batch.labels,
            dropout_key,
            sgd,
            shard,
            RUN_AHEAD,
        )
    }
    fn scaled_pass(&mut self, batch: &Batch, dropout_key: u64, grad_scale: f32) -> Result<bool> {
        Tower::scaled_pass(self, &batch.images, &batch.labels, dropout_key, grad_scale)
    }
    fn finish_step(&mut self, sgd: Option<SgdStep>) -> Result<()> {
        Tower::finish_step(self, sgd, RUN_AHEAD)
    }
    fn take_loss_stats(&mut self) -> Result<Vec<LossStats>> {
        Tower::take_loss_stats(self)
    }
    fn download(&mut self, which: ParamSet) -> Result<Vec<LayerParams<Vec<f32>>>> {
        Tower::download(self, which)
    }
    fn upload(&mut self, which: ParamSet, params: &[LayerParams<Vec<f32>>]) -> Result<()> {
        Tower::upload(self, which, params)
    }
    fn logits(&mut self) -> Result<Vec<f32>> {
        Tower::logits(self)
    }
    fn timings(&self) -> Vec<LayerTiming> {
        Tower::timings(self).to_vec()
    }
    fn set_profile(&mut self, on: bool) {
        Tower::set_profile(self, on);
    }
}

/// Both towers' answers to a pass given by [`TowerPair::start_pass`], to wait for.
pub struct Started(Vec<Receiver<Result<()>>>);

/// One piece of work for a tower thread; it answers on its own channel and
/// says whether the tower may go on (false after a failure).
type Job = Box<dyn FnOnce(&mut dyn Work) -> bool + Send>;

struct Worker {
    jobs: Sender<Job>,
    thread: JoinHandle<()>,
}

/// The two towers of one net, running: one thread each, or one thread
/// holding both as the grouped network ([`Plan::grouped`]).
pub struct TowerPair {
    /// The net's two-tower plan, whose twin tensors the caller gives and gets.
    plan: Arc<Plan>,
    /// The plan each thread runs: `plan`, or its grouped network.
    tower_plan: Arc<Plan>,
    workers: Vec<Worker>,
    watch: Arc<Watch>,
    link_note: String,
    /// Loss statistics read from the towers but not yet given to the
    /// caller (those of queued steps read along with an evaluation's).
    untaken: Mutex<Vec<LossStats>>,
}

impl TowerPair {
    /// Both towers on the CPU, over host memory, with the twin's parameters
    /// `init`, computing in `T` (f32 for training, f64 for reference checks).
    pub fn cpu<T: Real>(plan: Arc<Plan>, batch: usize, init: &[TwinTensor]) -> Result<TowerPair> {
        TowerPair::cpu_storing::<T>(plan, batch, init, Storage::Full)
    }

    /// As [`TowerPair::cpu`], both towers storing buffers and exchanges as
    /// `storage` says.
    pub fn cpu_storing<T: Real>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        storage: Storage,
    ) -> Result<TowerPair> {
        let watch = Arc::new(Watch::new(["CPU".into(), "CPU".into()])?);
        TowerPair::cpu_replica::<T>(plan, batch, init, watch, storage, 0, None)
    }

    /// Both towers on the CPU, looked after by `watch`; with `reduce`,
    /// replica `replica` of several, tower r averaging its gradients through
    /// `reduce[r]`. Returns once the towers are started, not built (the
    /// other replicas' towers start meanwhile); [`TowerPair::ready`] waits.
    /// Buffers and exchanges are stored as `storage` says.
    #[allow(clippy::too_many_arguments)]
    pub fn cpu_replica<T: Real>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        watch: Arc<Watch>,
        storage: Storage,
        replica: usize,
        reduce: Option<[HostReduce<T>; TOWERS]>,
    ) -> Result<TowerPair> {
        let links: Vec<Mutex<Option<HostLink<T>>>> =
            HostLink::pair_storing(&watch, cpu::rounder::<T>(storage))
                .into_iter()
                .map(|l| Mutex::new(Some(l)))
                .collect();
        let reduces: Vec<Mutex<Option<HostReduce<T>>>> = match reduce {
            Some(ends) => ends.into_iter().map(|r| Mutex::new(Some(r))).collect(),
            None => Vec::new(),
        };
        let several = !reduces.is_empty();
        let pair = TowerPair::spawn_replica(
            plan,
            batch,
            init,
            watch,
            move |rank| {
                faults::build_in(replica, rank, || Ok(CpuDevice::<T>::with_storage(storage)))
            },
            move |rank, _: &Faulty<CpuDevice<T>>| {
                let link = links[rank].lock().ok().and_then(|mut l| l.take());
                link.ok_or_else(|| Error::Training(format!("tower {rank}: link end already taken")))
            },
            move |rank, _: &Faulty<CpuDevice<T>>| {
                let end = reduces.get(rank).and_then(|r| r.lock().ok()?.take());
                Ok(end.map(|e| Box::new(e) as Box<dyn Reduce<Vec<T>>>))
            },
        )?;
        if !several {
            pair.ready()?;
        }
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
            Placement::Cpu { precision } => {
                TowerPair::cpu_storing::<f32>(plan, batch, init, precision.storage())
            }
            Placement::Grouped { options, .. }
            | Placement::OneGpu { options, .. }
            | Placement::TwoGpus { options, .. } => match options.storage {
                Storage::Full => TowerPair::gpus::<f32>(placement, plan, batch, init),
                Storage::Bf16 => TowerPair::gpus::<half::bf16>(placement, plan, batch, init),
                Storage::F16 => TowerPair::gpus::<half::f16>(placement, plan, batch, init),
            },
        }
    }

    /// Both towers on the GPUs of `placement`, their buffers stored as `S`.
    fn gpus<S: Stored>(
        placement: Placement,
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
    ) -> Result<TowerPair>
    where
        CudaDevice<S>: Device<Buf: StoredBuf<Elem = S>> + 'static,
    {
        match placement {
            Placement::Cpu { .. } => {
                Err(Error::Training("a GPU pair asked to run on the CPU".into()))
            }
            Placement::Grouped { ordinal, options } => {
                // A net one grouped network cannot hold runs as two towers
                // on the same GPU instead, and says so.
                if let (emulated, Some(why)) = placement.for_plan(&plan)? {
                    let mut pair = TowerPair::gpus::<S>(emulated, plan, batch, init)?;
                    pair.link_note = format!("{} (emulation mode: {why})", pair.link_note);
                    return Ok(pair);
                }
                let place = format!("GPU {ordinal}");
                let watch = Arc::new(Watch::new([place.clone(), place])?);
                let device_watch = Arc::clone(&watch);
                let build = move || {
                    faults::build(0, || {
                        CudaDevice::<S>::new(ordinal, options)
                            .map(|d| d.watched_alone(device_watch))
                    })
                };
                let note =
                    format!("both towers as one grouped network on GPU {ordinal}, one stream");
                TowerPair::grouped(plan, batch, init, watch, build, note)
            }
            Placement::OneGpu { ordinal, options } => {
                let mut pair =
                    TowerPair::copies::<S>(plan, batch, init, [ordinal; TOWERS], options)?;
                pair.link_note = format!("towers meet by device copies on GPU {ordinal}");
                Ok(pair)
            }
            Placement::TwoGpus { ordinals, options } => {
                let why =
                    match TowerPair::nccl::<S>(Arc::clone(&plan), batch, init, ordinals, options) {
                        Ok(pair) => return Ok(pair),
                        Err(e) if e.is_input() => return Err(e),
                        Err(e) => e.to_string(),
                    };
                let mut pair = TowerPair::copies::<S>(plan, batch, init, ordinals, options)?;
                pair.link_note = format!(
                    "towers meet by peer copies between GPUs {} and {} ({why})",
                    ordinals[0], ordinals[1]
                );
                Ok(pair)
            }
        }
    }

    /// Tower r on GPU `ordinals[r]`, meeting by device copies.
    fn copies<S: Stored>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        ordinals: [usize; TOWERS],
        options: CudaOptions,
    ) -> Result<TowerPair>
    where
        CudaDevice<S>: Device<Buf: StoredBuf<Elem = S>> + 'static,
    {
        let watch = Arc::new(Watch::new(ordinals.map(|g| format!("GPU {g}")))?);
        let shared = CopyShared::new(Arc::clone(&watch));
        let device_watch = Arc::clone(&watch);
        let one_gpu = ordinals[0] == ordinals[1];
        let pair = TowerPair::spawn(
            plan,
            batch,
            init,
            watch,
            watched_gpus(ordinals, options, device_watch),
            move |rank, device: &Faulty<CudaDevice<S>>| {
                CopyLink::new(rank, device.inner(), Arc::clone(&shared), one_gpu)
            },
        )?;
        pair.ready()?;
        Ok(pair)
    }

    /// Tower r on GPU `ordinals[r]`, meeting over NCCL; fails when NCCL is
    /// missing or any rank cannot join. No tower calls NCCL before both
    /// devices are built (the start barrier), and each polls its
    /// communicator's start against the other tower's failure.
    fn nccl<S: Stored>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        ordinals: [usize; TOWERS],
        options: CudaOptions,
    ) -> Result<TowerPair>
    where
        CudaDevice<S>: Device<Buf: StoredBuf<Elem = S>> + 'static,
    {
        let version =
            crate::device::cuda::nccl_lib::version().map_err(|why| Error::cuda("NCCL", why))?;
        let watch = Arc::new(Watch::new(ordinals.map(|g| format!("GPU {g}")))?);
        let mut pair = TowerPair::nccl_replica::<S, _>(
            plan,
            batch,
            init,
            ordinals,
            options,
            watch,
            |_, _| Ok(None),
        )?;
        pair.ready()?;
        pair.link_note = format!(
            "towers meet over NCCL {version} between GPUs {} and {}",
            ordinals[0], ordinals[1]
        );
        Ok(pair)
    }

    /// Tower r on GPU `ordinals[r]`, meeting over NCCL, looked after by
    /// `watch`, each tower given its end of the gradient average across
    /// replicas by `reduce(rank, &device)`. Returns once the towers are
    /// started, not built ([`TowerPair::ready`] waits): the other replicas'
    /// towers must start meanwhile to join the average's communicators.
    #[allow(clippy::type_complexity)]
    pub fn nccl_replica<S: Stored, R>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        ordinals: [usize; TOWERS],
        options: CudaOptions,
        watch: Arc<Watch>,
        reduce: R,
    ) -> Result<TowerPair>
    where
        CudaDevice<S>: Device<Buf: StoredBuf<Elem = S>> + 'static,
        R: Fn(
                usize,
                &CudaDevice<S>,
            ) -> Result<Option<Box<dyn Reduce<<CudaDevice<S> as Device>::Buf>>>>
            + Send
            + Sync
            + 'static,
    {
        let id = nccl::new_id()?;
        let (link_watch, device_watch) = (Arc::clone(&watch), Arc::clone(&watch));
        TowerPair::spawn_replica(
            plan,
            batch,
            init,
            watch,
            watched_gpus(ordinals, options, device_watch),
            move |rank, device: &Faulty<CudaDevice<S>>| {
                NcclLink::new(rank, TOWERS, id, device.inner(), Arc::clone(&link_watch))
            },
            move |rank, device: &Faulty<CudaDevice<S>>| reduce(rank, device.inner()),
        )
    }

    /// Waits until both towers are built, returning the first failure.
    pub fn ready(&self) -> Result<()> {
        self.set_profile(false)
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
        TowerPair::spawn_replica(plan, batch, init, watch, build, connect, |_, _: &D| {
            Ok(None)
        })
    }

    /// As [`TowerPair::spawn`], each tower then given its end of the
    /// gradient average across replicas by `reduce(rank, &device)` (`None`
    /// for the only replica).
    pub fn spawn_replica<D, L, B, C, R>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        watch: Arc<Watch>,
        build: B,
        connect: C,
        reduce: R,
    ) -> Result<TowerPair>
    where
        D: Device + 'static,
        L: Link<D::Buf> + 'static,
        B: Fn(usize) -> Result<D> + Send + Sync + 'static,
        C: Fn(usize, &D) -> Result<L> + Send + Sync + 'static,
        R: Fn(usize, &D) -> Result<Option<Box<dyn Reduce<D::Buf>>>> + Send + Sync + 'static,
    {
        let split = split_twin(&plan, init)?;
        let make = Arc::new((build, connect, reduce));
        let mut workers = Vec::with_capacity(TOWERS);
        for (rank, host_params) in split.into_iter().enumerate() {
            let (plan, make, arrivals) = (Arc::clone(&plan), Arc::clone(&make), Arc::clone(&watch));
            workers.push(spawn_worker(rank, &watch, move || {
                let (build, connect, reduce) = &*make;
                let device = build(rank)?;
                arrivals.arrive(rank)?;
                let link = connect(rank, &device)?;
                let reduce = reduce(rank, &device)?;
                let tower = Tower::new(plan, device, link, batch, &host_params)?;
                Ok(match reduce {
                    Some(r) => tower.with_reduce(r),
                    None => tower,
                })
            })?);
        }
        Ok(TowerPair {
            tower_plan: Arc::clone(&plan),
            plan,
            workers,
            watch,
            link_note: "towers meet through host memory".into(),
            untaken: Mutex::new(Vec::new()),
        })
    }

    /// Both towers as one grouped network ([`Plan::grouped`]) on the device
    /// `build` makes, on one thread with nothing to exchange: what the two
    /// towers compute, in half the calls, each twice as large. Waits until
    /// it is built.
    fn grouped<D, B>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        watch: Arc<Watch>,
        build: B,
        link_note: String,
    ) -> Result<TowerPair>
    where
        D: Device + 'static,
        B: FnOnce() -> Result<D> + Send + 'static,
    {
        let tower_plan = Arc::new(plan.grouped()?);
        let params = twin_as_grouped(&plan, init)?;
        let runs = Arc::clone(&tower_plan);
        let worker = spawn_worker(0, &watch, move || {
            Tower::new(runs, build()?, SoloLink, batch, &params)
        })?;
        let pair = TowerPair {
            plan,
            tower_plan,
            workers: vec![worker],
            watch,
            link_note,
            untaken: Mutex::new(Vec::new()),
        };
        pair.ready()?;
        Ok(pair)
    }

    /// Both towers as one grouped network on the CPU, storing buffers as
    /// `storage` says: on one thread, so slower than [`TowerPair::cpu`],
    /// and the CPU reference of the grouped network a GPU runs.
    pub fn cpu_grouped<T: Real>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        storage: Storage,
    ) -> Result<TowerPair> {
        let watch = Arc::new(Watch::new(["CPU".into(), "CPU".into()])?);
        let build = move || Ok(CpuDevice::<T>::with_storage(storage));
        let note = "both towers as one grouped network on the CPU".to_string();
        TowerPair::grouped(plan, batch, init, watch, build, note)
    }

    /// The plan each of the pair's threads runs: the net's two-tower plan,
    /// or its grouped network where one thread holds both towers.
    pub fn tower_plan(&self) -> &Arc<Plan> {
        &self.tower_plan
    }

    /// Whether one thread holds both towers as the grouped network.
    fn is_grouped(&self) -> bool {
        self.tower_plan.towers == 1
    }

    /// Gives thread r the work `work[r]` and waits for every answer, or for
    /// the pair's first failure as soon as either tower fails (never for a
    /// tower that will not answer).
    fn ask_each<R, W>(&self, work: Vec<W>) -> Result<Vec<R>>
    where
        R: Send + 'static,
        W: FnOnce(&mut dyn Work) -> Result<R> + Send + 'static,
    {
        let mut answers = Vec::with_capacity(work.len());
        for (rank, work) in work.into_iter().enumerate() {
            answers.push(self.give(rank, work)?);
        }
        answers
            .iter()
            .enumerate()
            .map(|(rank, receive)| self.answer(rank, receive))
            .collect()
    }

    /// Gives every thread the work `make` makes.
    fn ask<R, W>(&self, make: impl Fn() -> W) -> Result<Vec<R>>
    where
        R: Send + 'static,
        W: FnOnce(&mut dyn Work) -> Result<R> + Send + 'static,
    {
        self.ask_each((0..self.workers.len()).map(|_| make()).collect())
    }

    /// Tower `rank`'s answer on `receive`, or the pair's first failure.
    fn answer<R>(&self, rank: usize, receive: &Receiver<Result<R>>) -> Result<R> {
        loop {
            match receive.recv_timeout(REPLY_POLL) {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => return Err(self.watch.failure().unwrap_or(e)),
                Err(RecvTimeoutError::Timeout) => self.watch.check()?,
                Err(RecvTimeoutError::Disconnected) => return Err(self.stopped(rank)),
            }
        }
    }

    /// Asks tower 0 alone, for what does not involve the other tower.
    fn ask_first<R, W>(&self, work: W) -> Result<R>
    where
        R: Send + 'static,
        W: FnOnce(&mut dyn Work) -> Result<R> + Send + 'static,
    {
        let receive = self.give(0, work)?;
        self.answer(0, &receive)
    }

    /// Gives tower `rank` the work `work`; its answer comes on the channel returned.
    fn give<R, W>(&self, rank: usize, work: W) -> Result<Receiver<Result<R>>>
    where
        R: Send + 'static,
        W: FnOnce(&mut dyn Work) -> Result<R> + Send + 'static,
    {
        let (answer, receive) = channel::<Result<R>>();
        let watch = Arc::clone(&self.watch);
        let job: Job = Box::new(move |tower| {
            let result = work(tower);
            if let Err(e) = &result {
                // Recorded before the tower (its link first) is dropped,
                // so the other tower is released with this error rather
                // than a bare "stopped".
                watch.fail(rank, e);
            }
            let ok = result.is_ok();
            let _ = answer.send(result);
            ok
        });
        self.workers[rank]
            .jobs
            .send(job)
            .map_err(|_| self.stopped(rank))?;
        Ok(receive)
    }

    /// The pair's first failure, or that tower `rank`'s thread has ended.
    fn stopped(&self, rank: usize) -> Error {
        self.watch.failure().unwrap_or_else(|| Error::Tower {
            tower: rank,
            place: self.watch.place(rank).to_string(),
            message: "its thread has stopped".into(),
        })
    }

    /// Queues one training step on both towers: forward, backward and, with
    /// `sgd`, the update. Returns once both devices hold it and at most
    /// [`RUN_AHEAD`] steps are unfinished; its loss statistics wait on the
    /// device for [`TowerPair::take_stats`].
    pub fn queue_step(&self, batch: &Batch, dropout_key: u64, sgd: Option<SgdStep>) -> Result<()> {
        let started = self.start_pass(batch, Some(dropout_key), sgd, Shard::WHOLE)?;
        self.wait_pass(started)
    }

    /// Gives both towers one pass over `batch` (training with
    /// `dropout_key`, as [`TowerPair::queue_step`]; else an evaluation),
    /// `shard` of the whole batch, without waiting for their answers: the
    /// replicas of a run are all given their pass before any is waited
    /// for, since a training pass meets the other replicas.
    pub fn start_pass(
        &self,
        batch: &Batch,
        dropout_key: Option<u64>,
        sgd: Option<SgdStep>,
        shard: Shard,
    ) -> Result<Started> {
        let mut answers = Vec::with_capacity(self.workers.len());
        for rank in 0..self.workers.len() {
            let batch = batch.clone();
            answers.push(self.give(rank, move |t: &mut dyn Work| {
                t.step(&batch, dropout_key, sgd, shard)
            })?);
        }
        Ok(Started(answers))
    }

    /// Waits for both towers' answers to [`TowerPair::start_pass`], or for
    /// the pair's first failure.
    pub fn wait_pass(&self, started: Started) -> Result<()> {
        for (rank, receive) in started.0.iter().enumerate() {
            self.answer(rank, receive)?;
        }
        Ok(())
    }

    /// One training step with the loss gradient times `loss_scale` (fp16's
    /// dynamic loss scale): both towers' gradients are checked, and only if
    /// every one is finite is the update (`sgd`, unscaled) queued; a step
    /// that overflowed leaves the weights and momentum as they were.
    /// Returns whether the update was made. Waits for the devices.
    pub fn queue_scaled_step(
        &self,
        batch: &Batch,
        dropout_key: u64,
        sgd: SgdStep,
        loss_scale: f32,
    ) -> Result<bool> {
        let finite = self.ask(|| {
            let batch = batch.clone();
            move |t: &mut dyn Work| t.scaled_pass(&batch, dropout_key, loss_scale)
        })?;
        let applied = finite.iter().all(|&f| f);
        let update = applied.then(|| sgd.unscaled(loss_scale));
        self.ask(|| move |t: &mut dyn Work| t.finish_step(update))?;
        Ok(applied)
    }

    /// The loss statistics of every step queued since the last take, oldest
    /// first (tower 0's; both towers compute the same). Waits for the devices.
    pub fn take_stats(&self) -> Result<Vec<LossStats>> {
        let read = self.read_stats()?;
        let mut untaken = self.untaken.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = std::mem::take(&mut *untaken);
        all.extend(read);
        Ok(all)
    }

    /// Tower 0's loss statistics, read from both towers' devices.
    fn read_stats(&self) -> Result<Vec<LossStats>> {
        let mut towers = self.ask(|| |t: &mut dyn Work| t.take_loss_stats())?;
        Ok(towers.swap_remove(0))
    }

    /// The statistics of the pass just queued; those of earlier queued
    /// steps are kept for [`TowerPair::take_stats`].
    pub fn take_last(&self) -> Result<LossStats> {
        let mut read = self.read_stats()?;
        let last = read
            .pop()
            .ok_or_else(|| Error::Training("a pass computed no loss".into()))?;
        self.untaken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(read);
        Ok(last)
    }

    /// One training step, waited for: [`TowerPair::queue_step`], then its
    /// loss statistics.
    pub fn train_step(
        &self,
        batch: &Batch,
        dropout_key: u64,
        sgd: Option<SgdStep>,
    ) -> Result<LossStats> {
        self.queue_step(batch, dropout_key, sgd)?;
        self.take_last()
    }

    /// Forward only, dropout off, waited for.
    pub fn evaluate(&self, batch: &Batch) -> Result<LossStats> {
        let started = self.start_pass(batch, None, None, Shard::WHOLE)?;
        self.wait_pass(started)?;
        self.take_last()
    }

    /// The last forward pass's logits, `[image][class]` (both towers hold them; tower 0's).
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.ask_first(|t: &mut dyn Work| t.logits())
    }

    /// Tower 0's per-layer wall times of the last step (see [`Tower::timings`]).
    pub fn timings(&self) -> Result<Vec<LayerTiming>> {
        self.ask_first(|t: &mut dyn Work| Ok(t.timings()))
    }

    /// Both towers' per-layer wall times of the last step, tower 0's first.
    pub fn timings_each(&self) -> Result<Vec<Vec<LayerTiming>>> {
        self.ask(|| |t: &mut dyn Work| Ok(t.timings()))
    }

    /// Makes both towers wait for their device after each layer (see [`Tower::set_profile`]).
    pub fn set_profile(&self, on: bool) -> Result<()> {
        self.ask(|| {
            move |t: &mut dyn Work| {
                t.set_profile(on);
                Ok(())
            }
        })
        .map(drop)
    }

    /// Replaces weights, gradients or momentum with the twin's tensors `twin`.
    pub fn upload(&self, which: ParamSet, twin: &[TwinTensor]) -> Result<()> {
        let each = if self.is_grouped() {
            vec![twin_as_grouped(&self.plan, twin)?]
        } else {
            split_twin(&self.plan, twin)?
        };
        if each.len() != self.workers.len() {
            return Err(Error::Training(
                "the twin's tensors split into the wrong number of towers".into(),
            ));
        }
        let work = each
            .into_iter()
            .map(|params| move |t: &mut dyn Work| t.upload(which, &params));
        self.ask_each(work.collect()).map(drop)
    }

    /// Weights, gradients or momentum, joined into the twin's tensors.
    pub fn download(&self, which: ParamSet) -> Result<Vec<TwinTensor>> {
        let mut towers = self.ask(|| move |t: &mut dyn Work| t.download(which))?;
        if self.is_grouped() {
            return grouped_as_twin(&self.plan, towers.swap_remove(0));
        }
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
            drop(w.jobs);
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

/// Starts tower `rank`'s thread: `build` makes the tower there (a GPU's
/// handles are not `Send`), and the thread then runs the jobs it is given.
/// A tower that fails to build records its error in `watch` before its
/// thread ends, so the caller's first job finds it there.
fn spawn_worker<W, F>(rank: usize, watch: &Arc<Watch>, build: F) -> Result<Worker>
where
    W: Work + 'static,
    F: FnOnce() -> Result<W> + Send + 'static,
{
    let (jobs, inbox) = channel::<Job>();
    let place = watch.place(rank).to_string();
    let watch = Arc::clone(watch);
    let thread = std::thread::Builder::new()
        .name(format!("tower{rank}"))
        .spawn(move || {
            // Declared first, so dropped last: a panic below is recorded
            // once the tower (its link first) is gone.
            let _on_panic = FailOnPanic {
                watch: Arc::clone(&watch),
                rank,
            };
            let mut tower = match build() {
                Ok(tower) => tower,
                Err(e) => return watch.fail(rank, &e),
            };
            for job in inbox {
                if !job(&mut tower) {
                    return;
                }
            }
        })
        .map_err(|e| Error::Tower {
            tower: rank,
            place,
            message: format!("cannot start its thread: {e}"),
        })?;
    Ok(Worker { jobs, thread })
}

/// How often the caller's thread, waiting for a reply, looks for a failure.
const REPLY_POLL: Duration = Duration::from_millis(20);

/// Builds tower `rank`'s device on GPU `ordinals[rank]`, watched by the
/// pair (its waits poll for the other tower's failure) and open to the
/// test-only fault hook: what both GPU links start their towers with.
fn watched_gpus<S: Stored>(
    ordinals: [usize; TOWERS],
    options: CudaOptions,
    watch: Arc<Watch>,
) -> impl Fn(usize) -> Result<Faulty<CudaDevice<S>>> + Send + Sync + 'static
where
    CudaDevice<S>: Device,
{
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
    fn statistics_read_later_are_each_queued_steps_in_order() {
        let plan = Arc::new(Plan::load("small").unwrap());
        let init = init_twin(&plan, InitScheme::He, 3);
        let (batch, classes) = (2, plan.classes() as u32);
        let steps: Vec<Batch> = (0..4u32)
            .map(|k| Batch {
                images: Arc::new(
                    (0..batch * plan.input.len())
                        .map(|i| ((i as u32 * 7 + k * 13) % 17) as f32 / 17.0)
                        .collect::<Vec<f32>>()
                        .into(),
                ),
                labels: Arc::new(vec![k % classes, (k + 3) % classes]),
            })
            .collect();
        let sgd = SgdStep {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
        };
        // Read after each step, and an evaluation after the second.
        let at_once = TowerPair::cpu::<f32>(Arc::clone(&plan), batch, &init).unwrap();
        let mut want = Vec::new();
        let mut want_eval = None;
        for (k, step) in steps.iter().enumerate() {
            want.push(at_once.train_step(step, k as u64, Some(sgd)).unwrap());
            if k == 1 {
                want_eval = Some(at_once.evaluate(&steps[0]).unwrap());
            }
        }
        // Queued, with the same evaluation between, and read at the end.
        let later = TowerPair::cpu::<f32>(Arc::clone(&plan), batch, &init).unwrap();
        let mut got_eval = None;
        for (k, step) in steps.iter().enumerate() {
            later.queue_step(step, k as u64, Some(sgd)).unwrap();
            if k == 1 {
                got_eval = Some(later.evaluate(&steps[0]).unwrap());
            }
        }
        assert_eq!(later.take_stats().unwrap(), want);
        assert_eq!(got_eval, want_eval);
        assert!(later.take_stats().unwrap().is_empty());
        assert!(want.iter().all(|s| s.loss_sum > 0.0));
        assert_same_weights(&at_once, &later);
    }

    /// Both pairs' weights, bit for bit.
    fn assert_same_weights(a: &TowerPair, b: &TowerPair) {
        let (a, b) = (
            a.download(ParamSet::Weights).unwrap(),
            b.download(ParamSet::Weights).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert!(a.data == b.data, "{}", a.name);
        }
    }

    #[test]
    fn a_shorter_batch_runs_as_on_a_pair_made_for_it() {
        let plan = Arc::new(Plan::load("small").unwrap());
        let init = init_twin(&plan, InitScheme::He, 5);
        let classes = plan.classes() as u32;
        let batch_of = |n: usize, k: u32| Batch {
            images: Arc::new(
                (0..n * plan.input.len())
                    .map(|i| ((i as u32 * 5 + k * 11) % 19) as f32 / 19.0)
                    .collect::<Vec<f32>>()
                    .into(),
            ),
            labels: Arc::new((0..n as u32).map(|i| (i + k) % classes).collect()),
        };
        let (full, short) = (batch_of(4, 0), batch_of(3, 1));
        let sgd = SgdStep {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
        };
        // One made for 4 images meets 3 (a short last batch) in a training
        // step and an evaluation, as one made for 3 runs them; then both
        // meet 4, the first returning to its size, the second growing.
        let made_for_full = TowerPair::cpu::<f32>(Arc::clone(&plan), 4, &init).unwrap();
        let made_for_short = TowerPair::cpu::<f32>(Arc::clone(&plan), 3, &init).unwrap();
        let pairs = [&made_for_full, &made_for_short];
        let [a, b] = pairs.map(|pair| pair.train_step(&short, 1, Some(sgd)).unwrap());
        assert_eq!(a, b);
        assert!(a.loss_sum > 0.0);
        assert_same_weights(&made_for_full, &made_for_short);
        for step in [&short, &full] {
            let [a, b] = pairs.map(|pair| pair.evaluate(step).unwrap());
            assert_eq!(a, b);
            let [a, b] = pairs.map(|pair| pair.logits().unwrap());
            assert_eq!(a.len(), step.labels.len() * plan.classes());
            assert_eq!(a, b);
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
