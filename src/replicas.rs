//! Replicas of the two-tower pair: data parallelism over copies of the
//! whole model parallelism (Krizhevsky, "One weird trick for parallelizing
//! convolutional neural networks", 2014). Each replica trains on its own
//! shard of every batch; after each parameter layer's backward pass tower r
//! of every replica averages its gradients with tower r of the others, so
//! every replica takes the same update, the one a single pair would take
//! on the whole batch: `--batch` stays the global batch, and momentum,
//! weight decay and the learning-rate schedule see it. A run of several
//! nodes (hosts) has replicas on each; the nodes sum what their replicas
//! averaged ([`Nodes`]), and each node is given only its part of a batch.

use crate::data::input::Images;
use crate::device::LossStats;
use crate::device::SgdStep;
use crate::device::cpu::Real;
use crate::device::cuda::{CudaDevice, nccl_lib};
use crate::device::precision::{Precision, Storage};
use crate::error::{Error, Result};
use crate::link::nccl;
use crate::net::params::TwinTensor;
use crate::net::plan::{Plan, TOWERS};
use crate::nodes::Nodes;
use crate::placement::Placement;
use crate::reduce::host::HostReduce;
use crate::reduce::nccl::NcclReduce;
use crate::reduce::{Reduce, ReplicaWatch};
use crate::tower::{LayerTiming, ParamSet, Shard};
use crate::towers::{Batch, TowerPair};
use crate::watch::Watch;
use cudarc::driver::CudaSlice;
use cudarc::nccl::Id;
use std::sync::Arc;

/// Every replica of the pair, running; one replica is a plain pair.
pub struct Replicas {
    pairs: Vec<TowerPair>,
    /// What the replicas know of each other; `None` for one replica.
    group: Option<Arc<ReplicaWatch>>,
    /// The other nodes of the run, if it has several.
    nodes: Option<Arc<Nodes>>,
    note: String,
}

impl Replicas {
    /// One replica per placement (every one the same kind), each with the
    /// twin's parameters `init`, sharing the global `batch`; with `nodes`,
    /// these are this node's replicas of a run over several.
    pub fn new(
        placements: &[Placement],
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        nodes: Option<Arc<Nodes>>,
    ) -> Result<Replicas> {
        if placements
            .first()
            .is_some_and(|p| p.is_gpu() && p.precision().storage().is_16_bit())
            && (placements.len() > 1 || nodes.is_some())
        {
            return Err(Error::Input(format!(
                "--precision {} with replicas or nodes on GPUs: the GPU replicas average \
                 their gradients at f32 only in this version; use one pair (--gpus 0,1), \
                 --precision fp32 or tf32, or the CPU",
                placements[0].precision().name()
            )));
        }
        if placements
            .first()
            .is_some_and(|p| p.precision() == Precision::Fp16)
            && (placements.len() > 1 || nodes.is_some())
        {
            return Err(Error::Input(
                "--precision fp16 with replicas or nodes: fp16's loss scaling is not built \
                 for replicas yet; use --precision bf16 (on the CPU) or fp32"
                    .into(),
            ));
        }
        match placements {
            [] => Err(Error::Input("no placement for the towers".into())),
            [one] if nodes.is_none() => {
                Ok(Replicas::one(TowerPair::new(*one, plan, batch, init)?))
            }
            many if many
                .iter()
                .all(|p| *p == many[0] && matches!(p, Placement::Cpu { .. })) =>
            {
                let storage = many[0].precision().storage();
                Replicas::cpu::<f32>(many.len(), plan, batch, init, storage, nodes)
            }
            many if many
                .iter()
                .all(|p| matches!(p, Placement::TwoGpus { .. })) =>
            {
                Replicas::gpus(many, plan, batch, init, nodes)
            }
            _ if nodes.is_some() => Err(Error::Input(
                "--nodes runs the CPU (--cpu) or pairs of GPUs (--gpus 0,1 or more) on each node"
                    .into(),
            )),
            _ => Err(Error::Input(
                "replicas run on the CPU (--cpu --replicas R) or one pair of GPUs each (--gpus with an even count)"
                    .into(),
            )),
        }
    }

    /// What node 0 hands every node at the start of a run on `placements`:
    /// the NCCL unique ids of the tower ranks' communicators for pairs of
    /// GPUs, nothing on the CPU.
    pub fn handout(placements: &[Placement]) -> Result<Vec<u8>> {
        if !placements
            .iter()
            .any(|p| matches!(p, Placement::TwoGpus { .. }))
        {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::with_capacity(TOWERS * 128);
        for _ in 0..TOWERS {
            let id = nccl::new_id()?;
            bytes.extend(id.internal().iter().map(|&c| c as u8));
        }
        Ok(bytes)
    }

    /// A single pair as the only replica.
    pub fn one(pair: TowerPair) -> Replicas {
        let note = pair.link_note().to_string();
        Replicas {
            pairs: vec![pair],
            group: None,
            nodes: None,
            note,
        }
    }

    /// `count` replicas on the CPU computing in `T` (f32 to train, f64 for
    /// the reference checks) and storing as `storage` says, each a pair of
    /// tower threads, the gradients averaged through host memory in replica
    /// order (and then over `nodes`, if given).
    pub fn cpu<T: Real>(
        count: usize,
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        storage: Storage,
        nodes: Option<Arc<Nodes>>,
    ) -> Result<Replicas> {
        if count == 1 && nodes.is_none() {
            let pair = TowerPair::cpu_storing::<T>(plan, batch, init, storage)?;
            return Ok(Replicas::one(pair));
        }
        let shard = shard_batch(batch, count, nodes.as_deref())?;
        let watches = (0..count)
            .map(|r| Watch::new(std::array::from_fn(|_| format!("CPU, replica {r}"))).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let group = Arc::new(ReplicaWatch::new(watches));
        let mut sums = match &nodes {
            Some(n) => n.sums().map(|s| s.map(Some)).ok_or_else(|| {
                Error::Training("the nodes' gradient sums are taken already".into())
            })?,
            None => std::array::from_fn(|_| None),
        };
        let mut ends: [_; TOWERS] = std::array::from_fn(|rank| {
            HostReduce::<T>::group(&group, sums[rank].take()).into_iter()
        });
        let mut pairs = Vec::with_capacity(count);
        for r in 0..count {
            let reduce = ends
                .each_mut()
                .map(|e| e.next().expect("one end per replica"));
            let watch = Arc::clone(group.watch(r));
            pairs.push(TowerPair::cpu_replica::<T>(
                Arc::clone(&plan),
                shard,
                init,
                watch,
                storage,
                r,
                Some(reduce),
            )?);
        }
        let note = match &nodes {
            Some(n) => format!(
                "node {} of {}: {count} {} on the CPU, gradients averaged through host memory and over TCP",
                n.rank(),
                n.count(),
                if count == 1 { "replica" } else { "replicas" }
            ),
            None => format!("{count} replicas on the CPU, gradients averaged through host memory"),
        };
        let replicas = Replicas {
            pairs,
            group: Some(group),
            nodes,
            note,
        };
        for pair in &replicas.pairs {
            pair.ready().map_err(|e| replicas.first_failure(e))?;
        }
        Ok(replicas)
    }

    /// One replica per placement of two GPUs (one tower each, over NCCL),
    /// the gradients of tower r averaged over NCCL by a communicator of
    /// every replica's tower r.
    fn gpus(
        placements: &[Placement],
        plan: Arc<Plan>,
        batch: usize,
        init: &[TwinTensor],
        nodes: Option<Arc<Nodes>>,
    ) -> Result<Replicas> {
        let count = placements.len();
        let shard = shard_batch(batch, count, nodes.as_deref())?;
        let version = nccl_lib::version().map_err(|why| Error::cuda("NCCL", why))?;
        let ids: [Id; TOWERS] = match &nodes {
            Some(n) => handed_ids(n.handout())?,
            None => [nccl::new_id()?, nccl::new_id()?],
        };
        // Replica r of node k is rank k·count + r of every tower rank's communicator.
        let (first_rank, world) = nodes
            .as_ref()
            .map_or((0, count), |n| (n.rank() * count, n.count() * count));
        let mut watches = Vec::with_capacity(count);
        for (r, p) in placements.iter().enumerate() {
            let Placement::TwoGpus { ordinals, .. } = p else {
                unreachable!("checked by the caller")
            };
            watches.push(Arc::new(Watch::new(
                ordinals.map(|g| format!("GPU {g}, replica {r}")),
            )?));
        }
        let group = Arc::new(ReplicaWatch::new(watches));
        let mut pairs = Vec::with_capacity(count);
        for (r, p) in placements.iter().enumerate() {
            let Placement::TwoGpus { ordinals, options } = *p else {
                unreachable!("checked by the caller")
            };
            let replicas = Arc::clone(&group);
            pairs.push(TowerPair::nccl_replica(
                Arc::clone(&plan),
                shard,
                init,
                ordinals,
                options,
                Arc::clone(group.watch(r)),
                move |rank, device: &CudaDevice| {
                    let end = NcclReduce::new(
                        r,
                        (first_rank + r, world),
                        ids[rank],
                        device,
                        Arc::clone(&replicas),
                    )?;
                    Ok(Some(Box::new(end) as Box<dyn Reduce<CudaSlice<f32>>>))
                },
            )?);
        }
        let list: Vec<String> = placements.iter().map(|p| p.to_string()).collect();
        let on = nodes.as_ref().map_or(String::new(), |n| {
            format!("node {} of {}: ", n.rank(), n.count())
        });
        let replicas = Replicas {
            pairs,
            group: Some(group),
            nodes,
            note: format!(
                "{on}{count} replicas ({}), towers meet and gradients are averaged over NCCL {version}",
                list.join("; ")
            ),
        };
        for pair in &replicas.pairs {
            pair.ready().map_err(|e| replicas.first_failure(e))?;
        }
        Ok(replicas)
    }

    /// How many replicas there are.
    pub fn count(&self) -> usize {
        self.pairs.len()
    }

    /// How the towers meet, and the replicas, in one line.
    pub fn link_note(&self) -> &str {
        &self.note
    }

    /// The run's first failure, whichever replica it was in, or `e`.
    fn first_failure(&self, e: Error) -> Error {
        self.group.as_ref().and_then(|g| g.failure()).unwrap_or(e)
    }

    /// Gives every replica its shard of `batch` (a training pass with
    /// `dropout_key`, else an evaluation) before waiting for any; returns
    /// how many replicas took part (an evaluation batch of fewer images
    /// than replicas leaves the last ones out).
    fn pass(&self, batch: &Batch, dropout_key: Option<u64>, sgd: Option<SgdStep>) -> Result<usize> {
        let images = batch.labels.len();
        // A training step's shares and dropout masks are the whole batch's,
        // over every node; an evaluation only counts.
        let (first, total, count) = match (&self.nodes, dropout_key) {
            (Some(nodes), Some(_)) => {
                let (first, total) = nodes.place(images)?;
                (first, total, self.count())
            }
            (None, Some(_)) => (0, images, self.count()),
            (_, None) => (0, images, self.count().min(images)),
        };
        let shards = split(batch, count, first, total)?;
        let run = || {
            let started = self
                .pairs
                .iter()
                .zip(&shards)
                .map(|(pair, (part, shard))| pair.start_pass(part, dropout_key, sgd, *shard))
                .collect::<Result<Vec<_>>>()?;
            self.pairs
                .iter()
                .zip(started)
                .try_for_each(|(pair, started)| pair.wait_pass(started))
        };
        run().map_err(|e| self.first_failure(e))?;
        Ok(count)
    }

    /// Queues one training step on every replica, each on its shard of
    /// `batch` (see [`TowerPair::queue_step`]).
    pub fn queue_step(&self, batch: &Batch, dropout_key: u64, sgd: Option<SgdStep>) -> Result<()> {
        match (&self.pairs[..], &self.nodes) {
            ([pair], None) => pair.queue_step(batch, dropout_key, sgd),
            _ => self.pass(batch, Some(dropout_key), sgd).map(drop),
        }
    }

    /// [`TowerPair::queue_scaled_step`] of the only pair: fp16's loss
    /// scaling runs on one pair (replicas refuse fp16 when they are made).
    pub fn queue_scaled_step(
        &self,
        batch: &Batch,
        dropout_key: u64,
        sgd: SgdStep,
        loss_scale: f32,
    ) -> Result<bool> {
        match &self.pairs[..] {
            [pair] => pair.queue_scaled_step(batch, dropout_key, sgd, loss_scale),
            _ => Err(Error::Input(
                "fp16's loss scaling is not built for replicas".into(),
            )),
        }
    }

    /// One training step, waited for, and its loss statistics over the whole batch.
    pub fn train_step(
        &self,
        batch: &Batch,
        dropout_key: u64,
        sgd: Option<SgdStep>,
    ) -> Result<LossStats> {
        self.queue_step(batch, dropout_key, sgd)?;
        self.sum(&self.pairs, |pair| pair.take_last().map(|s| vec![s]))
            .map(|mut s| s.remove(0))
    }

    /// The loss statistics of every step queued since the last take, oldest
    /// first, summed over this node's replicas' shards.
    pub fn take_stats(&self) -> Result<Vec<LossStats>> {
        self.sum(&self.pairs, TowerPair::take_stats)
    }

    /// `read` of each of `pairs`, summed step by step.
    fn sum(
        &self,
        pairs: &[TowerPair],
        read: impl Fn(&TowerPair) -> Result<Vec<LossStats>>,
    ) -> Result<Vec<LossStats>> {
        let mut total: Option<Vec<LossStats>> = None;
        for pair in pairs {
            let stats = read(pair).map_err(|e| self.first_failure(e))?;
            match &mut total {
                None => total = Some(stats),
                Some(total) if total.len() == stats.len() => {
                    for (t, s) in total.iter_mut().zip(stats) {
                        t.loss_sum += s.loss_sum;
                        t.top1 += s.top1;
                        t.top5 += s.top5;
                    }
                }
                Some(_) => {
                    return Err(Error::Training(
                        "the replicas read different numbers of steps".into(),
                    ));
                }
            }
        }
        Ok(total.unwrap_or_default())
    }

    /// Forward only, dropout off, each replica on its shard; the counts
    /// summed over this node's replicas.
    pub fn evaluate(&self, batch: &Batch) -> Result<LossStats> {
        if let [pair] = &self.pairs[..] {
            return pair.evaluate(batch);
        }
        let used = self.pass(batch, None, None)?;
        self.sum(&self.pairs[..used], |pair| {
            pair.take_last().map(|s| vec![s])
        })
        .map(|mut s| s.remove(0))
    }

    /// The last forward pass's logits, `[image][class]`, over the whole batch.
    pub fn logits(&self) -> Result<Vec<f32>> {
        let mut all = Vec::new();
        for pair in &self.pairs {
            all.extend(pair.logits()?);
        }
        Ok(all)
    }

    /// Replica 0's tower 0's per-layer wall times of the last step.
    pub fn timings(&self) -> Result<Vec<LayerTiming>> {
        self.pairs[0].timings()
    }

    /// Makes every tower wait for its device after each layer.
    pub fn set_profile(&self, on: bool) -> Result<()> {
        self.pairs.iter().try_for_each(|p| p.set_profile(on))
    }

    /// Replaces weights, gradients or momentum of every replica with `twin`.
    pub fn upload(&self, which: ParamSet, twin: &[TwinTensor]) -> Result<()> {
        self.pairs.iter().try_for_each(|p| p.upload(which, twin))
    }

    /// Weights, gradients or momentum (replica 0's: after the average every
    /// replica holds the same), joined into the twin's tensors.
    pub fn download(&self, which: ParamSet) -> Result<Vec<TwinTensor>> {
        self.pairs[0].download(which)
    }
}

/// Each replica's batch: the global `batch` split evenly over `count`
/// replicas on each of the `nodes`.
fn shard_batch(batch: usize, count: usize, nodes: Option<&Nodes>) -> Result<usize> {
    let world = count * nodes.map_or(1, Nodes::count);
    if !batch.is_multiple_of(world) || batch < world {
        let over = match nodes {
            Some(n) => format!("{world} replicas ({count} on each of {} nodes)", n.count()),
            None => format!("{count} replicas"),
        };
        return Err(Error::Input(format!(
            "--batch {batch} does not split evenly over {over}"
        )));
    }
    Ok(batch / world)
}

/// The NCCL ids node 0 handed out, one per tower rank.
fn handed_ids(bytes: &[u8]) -> Result<[Id; TOWERS]> {
    if bytes.len() != TOWERS * 128 {
        return Err(Error::Training(
            "node 0 handed out no NCCL ids: does it run on GPUs too?".into(),
        ));
    }
    Ok(std::array::from_fn(|rank| {
        Id::uninit(std::array::from_fn(|i| {
            bytes[rank * 128 + i] as std::ffi::c_char
        }))
    }))
}

/// This node's `batch` (images `first..` of a batch of `total` over all
/// nodes) split into `count` consecutive shards, replica r's from image
/// `r·n/count`, and what part of the whole each is.
fn split(batch: &Batch, count: usize, first: usize, total: usize) -> Result<Vec<(Batch, Shard)>> {
    let n = batch.labels.len();
    if n < count {
        return Err(Error::Training(format!(
            "a batch of {n} images cannot be shared by {count} replicas"
        )));
    }
    let bounds: Vec<usize> = (0..=count).map(|r| r * n / count).collect();
    Ok(bounds
        .windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let images = match &*batch.images {
                Images::F32(v) => {
                    let per = v.len() / n;
                    Images::F32(v[a * per..b * per].to_vec().into())
                }
                Images::U8 { pixels, offsets } => {
                    let (per, off) = (pixels.len() / n, offsets.len() / n);
                    Images::U8 {
                        pixels: pixels[a * per..b * per].to_vec().into(),
                        offsets: offsets[a * off..b * off].to_vec(),
                    }
                }
            };
            let part = Batch {
                images: Arc::new(images),
                labels: Arc::new(batch.labels[a..b].to_vec()),
            };
            let shard = Shard {
                first_image: first + a,
                share: (b - a) as f64 / total as f64,
            };
            (part, shard)
        })
        .collect())
}
