//! The gradient average over NCCL: tower r of every replica joins one
//! communicator (its rank is the replica's). Each layer's all-reduce is
//! queued on a stream of its own behind an event at the end of that
//! layer's backward pass on the compute stream, so it runs while the layers
//! below are differentiated; before the update the compute stream waits
//! for an event after the last one. Each replica's gradients are weighted
//! by its share of the batch in the sum (`ncclRedOpCreatePreMulSum`).
//!
//! The communicator is non-blocking, as the pair's NCCL link: every call
//! that answers `ncclInProgress` is polled under [`ReplicaWatch`], so a
//! replica that fails anywhere releases the others.

use super::{Reduce, ReplicaWatch};
use crate::device::cuda::CudaDevice;
use crate::error::{Error, Result};
use crate::link::nccl::{RawComm, non_blocking_config};
use crate::net::params::LayerParams;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use cudarc::nccl::Id;
use cudarc::nccl::sys::{self, ncclResult_t};
use std::sync::Arc;

/// Tower r's end of the average for one replica.
pub struct NcclReduce {
    comm: RawComm,
    replica: usize,
    compute: Arc<CudaStream>,
    reduce: Arc<CudaStream>,
    replicas: Arc<ReplicaWatch>,
    /// An average is queued that the compute stream has not waited for.
    pending: bool,
}

impl NcclReduce {
    /// This node's replica `replica`'s tower joins communicator `id` (one
    /// per tower rank, shared by every replica of every node) as rank
    /// `rank` of `world` on `device`, with a stream of its own for the
    /// averages. Every replica's tower of this rank calls this at the same
    /// time, each on its own thread.
    pub fn new(
        replica: usize,
        (rank, world): (usize, usize),
        id: Id,
        device: &CudaDevice,
        replicas: Arc<ReplicaWatch>,
    ) -> Result<Self> {
        let what = format!("NCCL init of replica {rank} of {world}");
        device.bind()?;
        let compute = Arc::clone(device.stream());
        let reduce = compute
            .context()
            .new_stream()
            .map_err(|e| Error::cuda("creating the gradient all-reduce stream", e))?;
        let mut config = non_blocking_config();
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let unique = sys::ncclUniqueId {
            internal: *id.internal(),
        };
        // SAFETY: `raw` and `config` outlive the call; NCCL copies the id.
        let started = unsafe {
            sys::ncclCommInitRankConfig(&mut raw, world as i32, unique, rank as i32, &mut config)
        };
        let end = NcclReduce {
            comm: RawComm(raw),
            replica,
            compute,
            reduce,
            replicas,
            pending: false,
        };
        end.started(started, &what)?;
        Ok(end)
    }

    /// Checks an NCCL call's answer, polling under the replicas' watch
    /// (see [`RawComm::settle`]).
    fn started(&self, answer: ncclResult_t, what: &str) -> Result<()> {
        self.comm.settle(answer, what, |done| {
            self.replicas.poll(self.replica, what, done)
        })
    }
}

impl Reduce<CudaSlice<f32>> for NcclReduce {
    fn layer(&mut self, grads: &mut LayerParams<CudaSlice<f32>>, share: f64) -> Result<()> {
        let failed = |e| Error::cuda("ordering the gradient all-reduce", e);
        let ready = self.compute.record_event(None).map_err(failed)?;
        self.reduce.wait(&ready).map_err(failed)?;
        let mut op = sys::ncclRedOp_t::ncclSum;
        let mut scalar = share as f32;
        // SAFETY: `op` and `scalar` outlive the call; the scalar is read
        // now (host-immediate).
        let made = unsafe {
            sys::ncclRedOpCreatePreMulSum(
                &mut op,
                (&mut scalar as *mut f32).cast(),
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclScalarResidence_t::ncclScalarHostImmediate,
                self.comm.0,
            )
        };
        self.started(made, "NCCL share-weighted sum")?;
        let stream = self.reduce.cu_stream() as sys::cudaStream_t;
        // SAFETY: a group of in-place all-reduces of this tower's gradient
        // buffers, queued on the reduce stream, which waits (above) for the
        // backward pass that wrote them; the compute stream reads them only
        // after [`Reduce::finish`]'s event.
        // The group is ended whatever its calls answered; the first call
        // that failed is the one reported.
        let answer = unsafe {
            let mut first = sys::ncclGroupStart();
            for buf in grads
                .weights
                .iter_mut()
                .chain(std::iter::once(&mut grads.bias))
            {
                let len = buf.len();
                let (ptr, _written) = buf.device_ptr_mut(&self.reduce);
                let queued = sys::ncclAllReduce(
                    ptr as *const _,
                    ptr as *mut _,
                    len,
                    sys::ncclDataType_t::ncclFloat32,
                    op,
                    self.comm.0,
                    stream,
                );
                if first == ncclResult_t::ncclSuccess {
                    first = queued;
                }
            }
            let ended = sys::ncclGroupEnd();
            match first {
                ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress => ended,
                failed => failed,
            }
        };
        self.started(answer, "NCCL gradient all-reduce")?;
        // SAFETY: the operator is no longer named by any call to come; NCCL
        // allows its destruction once the calls that use it have returned.
        let destroyed = unsafe { sys::ncclRedOpDestroy(op, self.comm.0) };
        self.started(destroyed, "NCCL share-weighted sum")?;
        self.pending = true;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if std::mem::take(&mut self.pending) {
            let failed = |e| Error::cuda("waiting for the gradient all-reduce", e);
            let done = self.reduce.record_event(None).map_err(failed)?;
            self.compute.wait(&done).map_err(failed)?;
        }
        Ok(())
    }
}
