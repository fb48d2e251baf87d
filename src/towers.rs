//! Both towers, each on its own OS thread that owns its device and its end of
//! the link (GPU handles are not `Send`); the caller's thread hands them
//! batches over channels and waits for both.

use crate::data::input::Images;
use crate::device::cpu::{CpuDevice, Real};
use crate::device::cuda::{CudaDevice, CudaOptions};
use crate::device::{Device, LossStats, SgdStep};
use crate::error::{Error, Result};
use crate::link::Link;
use crate::link::copy::{CopyLink, CopyShared};
use crate::link::host::HostLink;
use crate::link::nccl::{self, NcclLink};
use crate::net::params::{TwinTensor, join_towers, split_twin};
use crate::net::plan::{Plan, TOWERS};
use crate::placement::Placement;
use crate::tower::{LayerTiming, ParamSet, Tower};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
    link_note: String,
}

impl TowerPair {
    /// Both towers on the CPU, over host memory, with the twin's parameters
    /// `init`, computing in `T` (f32 for training, f64 for reference checks).
    pub fn cpu<T: Real>(plan: Arc<Plan>, batch: usize, init: &[TwinTensor]) -> Result<TowerPair> {
        let links: Vec<Mutex<Option<HostLink<T>>>> = HostLink::pair()
            .into_iter()
            .map(|l| Mutex::new(Some(l)))
            .collect();
        let links = Arc::new(links);
        TowerPair::spawn(plan, batch, init, move |rank| {
            let link = links[rank].lock().ok().and_then(|mut l| l.take());
            let link = link.ok_or_else(|| Error::Tower {
                tower: rank,
                message: "link end already taken".into(),
            })?;
            Ok((CpuDevice::<T>::default(), link))
        })
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
        let shared = CopyShared::default();
        let pair = TowerPair::spawn(plan, batch, init, move |rank| {
            let device =
                CudaDevice::new(ordinals[rank], options).inspect_err(|_| shared.abandon())?;
            let link = CopyLink::new(rank, &device, Arc::clone(&shared));
            Ok((device, link))
        })?;
        pair.ready()?;
        Ok(pair)
    }

    /// Tower r on GPU `ordinals[r]`, meeting over NCCL; fails when NCCL is
    /// missing or any rank cannot join.
    fn nccl(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        ordinals: [usize; TOWERS],
        options: CudaOptions,
    ) -> Result<TowerPair> {
        let version = nccl::version().map_err(|why| Error::cuda("NCCL", why))?;
        let id = nccl::new_id()?;
        let mut pair = TowerPair::spawn(plan, batch, init, move |rank| {
            let device = CudaDevice::new(ordinals[rank], options)?;
            let link = NcclLink::new(rank, TOWERS, id, &device)?;
            Ok((device, link))
        })?;
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

    /// Both towers, each built on its own thread by `make(rank)`.
    pub fn spawn<D, L, F>(
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        make: F,
    ) -> Result<TowerPair>
    where
        D: Device + 'static,
        L: Link<D::Buf> + 'static,
        F: Fn(usize) -> Result<(D, L)> + Send + Sync + 'static,
    {
        let split = split_twin(&plan, init)?;
        let make = Arc::new(make);
        let mut workers = Vec::with_capacity(TOWERS);
        for (rank, host_params) in split.into_iter().enumerate() {
            let (requests, inbox) = channel::<Request>();
            let (outbox, replies) = channel::<Result<Reply>>();
            let (plan, make) = (Arc::clone(&plan), Arc::clone(&make));
            let thread = std::thread::Builder::new()
                .name(format!("tower{rank}"))
                .spawn(move || {
                    let built = make(rank).and_then(|(device, link)| {
                        Tower::new(plan, device, link, batch, &host_params)
                    });
                    drop(host_params);
                    let mut tower = match built {
                        Ok(tower) => tower,
                        Err(e) => {
                            let _ = outbox.send(Err(e));
                            return;
                        }
                    };
                    for request in inbox {
                        let reply = serve(&mut tower, request);
                        let failed = reply.is_err();
                        if outbox.send(reply).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::Tower {
                    tower: rank,
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
            link_note: "towers meet through host memory".into(),
        })
    }

    fn ask(&self, make: impl Fn() -> Request) -> Result<Vec<Reply>> {
        for (rank, w) in self.workers.iter().enumerate() {
            w.requests.send(make()).map_err(|_| stopped(rank))?;
        }
        self.workers
            .iter()
            .enumerate()
            .map(|(rank, w)| w.replies.recv().map_err(|_| stopped(rank))?)
            .collect()
    }

    /// Asks tower 0 alone, for what does not involve the other tower.
    fn ask_first(&self, request: Request) -> Result<Reply> {
        let first = &self.workers[0];
        first.requests.send(request).map_err(|_| stopped(0))?;
        first.replies.recv().map_err(|_| stopped(0))?
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
                .map_err(|_| stopped(rank))?;
        }
        for (rank, w) in self.workers.iter().enumerate() {
            w.replies.recv().map_err(|_| stopped(rank))??;
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
    fn drop(&mut self) {
        for w in self.workers.drain(..) {
            drop(w.requests);
            let _ = w.thread.join();
        }
    }
}

fn stopped(rank: usize) -> Error {
    Error::Tower {
        tower: rank,
        message: "its thread has stopped".into(),
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
