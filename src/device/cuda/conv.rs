//! Convolutions through cuDNN: forward, backward-data and backward-filter.
//!
//! Algorithms are chosen once per shape, by measurement (`cudnnFind*Ex` on
//! scratch buffers of the tower's largest batch) in a warm-up before the
//! first step ([`Convolutions::search`]), one search at a time on each GPU
//! so towers sharing a GPU do not time each other's load (and towers on two
//! GPUs, whose streams may wait for each other through NCCL, never wait for
//! each other's search). A search
//! may lend a quarter of the device's free memory as workspace, at most
//! [`WORKSPACE_LIMIT`]. It keeps the
//! fastest deterministic algorithm that fits and uses an allowed math type
//! (backward-data not at all for the first layer, whose input is the image);
//! where none is deterministic, the fastest that fits, saying so in one line;
//! the heuristic (`_v7`) answers where measuring finds nothing. A smaller
//! batch (an epoch's short last batch, an evaluation) reuses the algorithms
//! with its own descriptors; each direction runs with the math type of the
//! algorithm it chose.
//!
//! Data are stored as the precision says (f32, bfloat16 or IEEE half:
//! tensor and filter descriptors of that type, buffers of the matching
//! [`Stored`] type) and computed in f32 at every precision (the
//! convolution descriptors' compute type). Exact f32 runs FMA math only;
//! TF32 and the 16-bit precisions may use tensor cores.

use super::kernels::Stored;
use super::need;
use crate::device::layout::Layout;
use crate::device::precision::{Precision, Storage};
use crate::error::{Error, Result};
use crate::net::plan::ConvShape;
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// The most workspace a search lends one device's convolutions: 4 GiB
/// (less where a quarter of the free memory is less).
pub const WORKSPACE_LIMIT: usize = 4 << 30;

/// One lock per GPU ordinal: one algorithm search at a time on each GPU
/// (module docs).
static SEARCH: Mutex<Vec<Arc<Mutex<()>>>> = Mutex::new(Vec::new());

/// The search lock of GPU `ordinal`.
fn search_lock(ordinal: usize) -> Arc<Mutex<()>> {
    // A poisoned lock only means another search panicked; the list is intact.
    let mut locks = SEARCH.lock().unwrap_or_else(|e| e.into_inner());
    if locks.len() <= ordinal {
        locks.resize_with(ordinal + 1, Default::default);
    }
    Arc::clone(&locks[ordinal])
}

/// cuDNN state of one device: its handle, algorithms per shape, descriptors
/// per shape and batch, the workspace.
pub struct Convolutions {
    handle: Handle,
    stream: Arc<CudaStream>,
    algorithms: HashMap<ConvShape, Algorithms>,
    plans: HashMap<(ConvShape, usize), ConvPlan>,
    workspace: Option<CudaSlice<u8>>,
    precision: Precision,
}

struct Handle(sys::cudnnHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle and destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

macro_rules! descriptor {
    ($name:ident, $raw:ty, $destroy:path) => {
        struct $name($raw);
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: created by its create_* function and destroyed once, here.
                let _ = unsafe { $destroy(self.0) };
            }
        }
    };
}
descriptor!(
    TensorDesc,
    sys::cudnnTensorDescriptor_t,
    result::destroy_tensor_descriptor
);
descriptor!(
    FilterDesc,
    sys::cudnnFilterDescriptor_t,
    result::destroy_filter_descriptor
);
descriptor!(
    ConvDesc,
    sys::cudnnConvolutionDescriptor_t,
    result::destroy_convolution_descriptor
);

/// An algorithm and the math type it was measured with.
#[derive(Debug, Clone, Copy)]
struct Choice<A> {
    algo: A,
    math: sys::cudnnMathType_t,
}

/// The three directions' algorithms for one shape, measured at `batch`:
/// backward-data only where the input gradient is wanted (not the first
/// layer's, whose input is the image).
#[derive(Debug, Clone, Copy)]
struct Algorithms {
    batch: usize,
    forward: Choice<sys::cudnnConvolutionFwdAlgo_t>,
    backward_data: Option<Choice<sys::cudnnConvolutionBwdDataAlgo_t>>,
    backward_filter: Choice<sys::cudnnConvolutionBwdFilterAlgo_t>,
}

/// Descriptors of one source's convolution at one batch size: one
/// convolution descriptor per direction, each set to its algorithm's math.
struct ConvPlan {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
    forward: (ConvDesc, sys::cudnnConvolutionFwdAlgo_t),
    backward_data: Option<(ConvDesc, sys::cudnnConvolutionBwdDataAlgo_t)>,
    backward_filter: (ConvDesc, sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// Tensor and filter descriptors of one shape at one batch size.
struct Tensors {
    x: TensorDesc,
    y: TensorDesc,
    w: FilterDesc,
}

fn cudnn(what: &str) -> impl FnOnce(result::CudnnError) -> Error + '_ {
    move |e| Error::cuda(format!("cuDNN {what}"), e)
}

/// Exact f32 allows plain FMA math only; the other precisions allow tensor
/// cores too, but never a down-conversion of the data (f32 to f16, say).
fn allowed_math(math: sys::cudnnMathType_t, precision: Precision) -> bool {
    use sys::cudnnMathType_t::*;
    match math {
        CUDNN_DEFAULT_MATH | CUDNN_FMA_MATH => true,
        CUDNN_TENSOR_OP_MATH => precision != Precision::Fp32,
        _ => false,
    }
}

/// cuDNN's name for how `storage` keeps a tensor's elements.
fn data_type(storage: Storage) -> sys::cudnnDataType_t {
    match storage {
        Storage::Full => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        Storage::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        Storage::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
    }
}

/// Bytes one element takes in `storage`.
fn element_bytes(storage: Storage) -> usize {
    if storage.is_16_bit() { 2 } else { 4 }
}

/// What the search needs to know of one direction's measured results.
trait Perf: Copy {
    type Algo: Copy + std::fmt::Debug;
    fn algo(&self) -> Self::Algo;
    fn usable(&self, budget: usize, precision: Precision) -> bool;
    fn deterministic(&self) -> bool;
    fn math(&self) -> sys::cudnnMathType_t;
}

macro_rules! perf {
    ($perf:ty, $algo:ty) => {
        impl Perf for $perf {
            type Algo = $algo;
            fn algo(&self) -> $algo {
                self.algo
            }
            fn usable(&self, budget: usize, precision: Precision) -> bool {
                self.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                    && self.memory <= budget
                    && allowed_math(self.mathType, precision)
            }
            fn deterministic(&self) -> bool {
                self.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
            }
            fn math(&self) -> sys::cudnnMathType_t {
                self.mathType
            }
        }
    };
}
perf!(
    sys::cudnnConvolutionFwdAlgoPerf_t,
    sys::cudnnConvolutionFwdAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnConvolutionBwdDataAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnConvolutionBwdFilterAlgo_t
);

/// The fastest usable deterministic result (results come fastest first),
/// else the fastest usable one, and whether it was deterministic.
fn choose<P: Perf>(
    perfs: &[P],
    budget: usize,
    precision: Precision,
) -> Option<(Choice<P::Algo>, bool)> {
    let usable = || perfs.iter().filter(|p| p.usable(budget, precision));
    let pick = usable()
        .find(|p| p.deterministic())
        .or_else(|| usable().next())?;
    Some((
        Choice {
            algo: pick.algo(),
            math: pick.math(),
        },
        pick.deterministic(),
    ))
}

/// Results a `cudnnFind*`/`cudnnGet*_v7` call may return.
const RESULTS: usize = 16;

impl Convolutions {
    /// cuDNN on `stream`, storing and computing as `precision` says.
    pub fn new(stream: Arc<CudaStream>, precision: Precision) -> Result<Self> {
        let handle = Handle(result::create_handle().map_err(cudnn("handle"))?);
        // SAFETY: a live handle and the stream this device owns.
        unsafe { result::set_stream(handle.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(cudnn("set stream"))?;
        Ok(Convolutions {
            handle,
            stream,
            algorithms: HashMap::new(),
            plans: HashMap::new(),
            workspace: None,
            precision,
        })
    }

    /// Chooses the algorithms for `s` at `batch` images (the warm-up; module
    /// docs), backward-data among them where `input_grad` or an earlier
    /// measurement of the same shape has it, and sizes the workspace for
    /// them; nothing to measure where algorithms measured at a batch at
    /// least as large already cover what is asked.
    pub fn search(&mut self, s: &ConvShape, batch: usize, input_grad: bool) -> Result<()> {
        let known = self.algorithms.get(s);
        if known.is_some_and(|a| a.batch >= batch && (a.backward_data.is_some() || !input_grad)) {
            return self.prepare(s, batch).map(drop);
        }
        let input_grad = input_grad || known.is_some_and(|a| a.backward_data.is_some());
        let algorithms = self.measure(s, batch, input_grad)?;
        self.algorithms.insert(*s, algorithms);
        // Plans made from an earlier search of this shape are stale.
        self.plans.retain(|(shape, _), _| shape != s);
        self.prepare(s, batch).map(drop)
    }

    /// `y += conv(x, w)` for one source (`x` that source's slice of the input).
    pub fn forward<S: Stored>(
        &mut self,
        s: &ConvShape,
        batch: usize,
        x: &impl DevicePtr<S>,
        w: &CudaSlice<S>,
        y: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.stores::<S>()?;
        let lens = Lens::new(s, batch);
        need(x, lens.x, "conv input")?;
        need(w, lens.w, "conv weights")?;
        need(y, lens.y, "conv output")?;
        let (x, w, y) = (self.read(x), self.read(w), self.write(y));
        let handle = self.handle.0;
        let (plan, ws, ws_len) = self.prepare(s, batch)?;
        let (alpha, beta) = (1.0f32, 1.0f32);
        // SAFETY: the buffers hold the shapes the descriptors describe (checked above).
        unsafe {
            result::convolution_forward(
                handle,
                ptr(&alpha),
                plan.x.0,
                x,
                plan.w.0,
                w,
                plan.forward.0.0,
                plan.forward.1,
                ws,
                ws_len,
                ptr(&beta),
                plan.y.0,
                y,
            )
        }
        .map_err(cudnn("convolution forward"))
    }

    /// `dx = conv_transpose(dy, w)` for one source (`dx` that source's slice).
    pub fn backward_data<S: Stored>(
        &mut self,
        s: &ConvShape,
        batch: usize,
        w: &CudaSlice<S>,
        dy: &CudaSlice<S>,
        dx: &mut impl DevicePtrMut<S>,
    ) -> Result<()> {
        self.stores::<S>()?;
        let lens = Lens::new(s, batch);
        need(w, lens.w, "conv weights")?;
        need(dy, lens.y, "conv output gradient")?;
        need(dx, lens.x, "conv input gradient")?;
        let (w, dy, dx) = (self.read(w), self.read(dy), self.write(dx));
        let handle = self.handle.0;
        let (plan, ws, ws_len) = self.prepare(s, batch)?;
        let Some((conv, algo)) = plan.backward_data.as_ref() else {
            return Err(Error::cuda(
                "cuDNN convolution backward data",
                format!(
                    "conv {}x{}x{} -> {} was prepared without an input gradient",
                    s.in_c, s.in_h, s.in_w, s.out_c
                ),
            ));
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_data(
                handle,
                ptr(&alpha),
                plan.w.0,
                w,
                plan.y.0,
                dy,
                conv.0,
                *algo,
                ws,
                ws_len,
                ptr(&beta),
                plan.x.0,
                dx,
            )
        }
        .map_err(cudnn("convolution backward data"))
    }

    /// `dw = Σ_n x ⋆ dy` for one source (`x` that source's slice of the input).
    pub fn backward_filter<S: Stored>(
        &mut self,
        s: &ConvShape,
        batch: usize,
        x: &impl DevicePtr<S>,
        dy: &CudaSlice<S>,
        dw: &mut CudaSlice<S>,
    ) -> Result<()> {
        self.stores::<S>()?;
        let lens = Lens::new(s, batch);
        need(x, lens.x, "conv input")?;
        need(dy, lens.y, "conv output gradient")?;
        need(dw, lens.w, "conv weight gradient")?;
        let (x, dy, dw) = (self.read(x), self.read(dy), self.write(dw));
        let handle = self.handle.0;
        let (plan, ws, ws_len) = self.prepare(s, batch)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_filter(
                handle,
                ptr(&alpha),
                plan.x.0,
                x,
                plan.y.0,
                dy,
                plan.backward_filter.0.0,
                plan.backward_filter.1,
                ws,
                ws_len,
                ptr(&beta),
                plan.w.0,
                dw,
            )
        }
        .map_err(cudnn("convolution backward filter"))
    }

    /// The plan for this shape and batch (made on first use, from the
    /// shape's algorithms when they were measured at a batch at least as
    /// large, else by measuring now, with backward-data unless the shape's
    /// earlier measurement left it out), and the workspace as a raw pointer and
    /// its length (null and 0 while no plan needs one).
    fn prepare(&mut self, s: &ConvShape, batch: usize) -> Result<(&ConvPlan, *mut c_void, usize)> {
        let key = (*s, batch);
        if !self.plans.contains_key(&key) {
            // A shape no warm-up searched is measured with every direction.
            let input_grad = self
                .algorithms
                .get(s)
                .is_none_or(|a| a.backward_data.is_some());
            let known = self.algorithms.get(s).filter(|a| a.batch >= batch).copied();
            let algorithms = match known {
                Some(a) => a,
                None => {
                    let a = self.measure(s, batch, input_grad)?;
                    self.algorithms.insert(*s, a);
                    a
                }
            };
            let (plan, bytes) = match self.plan(s, batch, &algorithms) {
                Ok(made) => made,
                // The larger batch's algorithm may not run at this one.
                Err(_) if algorithms.batch != batch => {
                    let a = self.measure(s, batch, input_grad)?;
                    self.plan(s, batch, &a)?
                }
                Err(e) => return Err(e),
            };
            self.grow_workspace(bytes)?;
            self.plans.insert(key, plan);
        }
        let (ws, len) = match self.workspace.as_ref() {
            Some(ws) => (ws.device_ptr(&self.stream).0 as *mut c_void, ws.len()),
            None => (std::ptr::null_mut(), 0),
        };
        Ok((&self.plans[&key], ws, len))
    }

    /// Descriptors for `batch` with the given algorithms, and the workspace
    /// bytes they need.
    fn plan(&self, s: &ConvShape, batch: usize, a: &Algorithms) -> Result<(ConvPlan, usize)> {
        let Tensors { x, y, w } = tensors(s, batch, self.precision.storage())?;
        let h = self.handle.0;
        let math = |m: sys::cudnnMathType_t| {
            if self.precision == Precision::Fp32 {
                sys::cudnnMathType_t::CUDNN_FMA_MATH
            } else {
                m
            }
        };
        let forward = convolution(s, math(a.forward.math))?;
        let backward_data = match a.backward_data {
            Some(choice) => Some((convolution(s, math(choice.math))?, choice.algo)),
            None => None,
        };
        let backward_filter = convolution(s, math(a.backward_filter.math))?;
        let (mut f, mut d, mut g) = (0usize, 0usize, 0usize);
        // SAFETY: live descriptors; each call writes one usize.
        unsafe {
            sys::cudnnGetConvolutionForwardWorkspaceSize(
                h,
                x.0,
                w.0,
                forward.0,
                y.0,
                a.forward.algo,
                &mut f,
            )
            .result()
            .map_err(cudnn("forward workspace size"))?;
            if let Some((conv, algo)) = &backward_data {
                sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                    h, w.0, y.0, conv.0, x.0, *algo, &mut d,
                )
                .result()
                .map_err(cudnn("backward-data workspace size"))?;
            }
            sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                h,
                x.0,
                y.0,
                backward_filter.0,
                w.0,
                a.backward_filter.algo,
                &mut g,
            )
            .result()
            .map_err(cudnn("backward-filter workspace size"))?;
        }
        let plan = ConvPlan {
            x,
            y,
            w,
            forward: (forward, a.forward.algo),
            backward_data,
            backward_filter: (backward_filter, a.backward_filter.algo),
        };
        Ok((plan, f.max(d).max(g)))
    }

    /// Measures each direction's algorithms for `s` at `batch` on scratch
    /// buffers (backward-data only where `input_grad`), with a quarter of
    /// the device's free memory (at most [`WORKSPACE_LIMIT`]) as workspace.
    fn measure(&self, s: &ConvShape, batch: usize, input_grad: bool) -> Result<Algorithms> {
        let ctx = self.stream.context();
        let lock = search_lock(ctx.ordinal());
        // A poisoned lock only means another search failed; the guard holds no data.
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (free, _) = ctx
            .mem_get_info()
            .map_err(|e| Error::cuda("asking the GPU's free memory", e))?;
        let search = Search::new(self, s, batch, (free / 4).min(WORKSPACE_LIMIT))?;
        Ok(Algorithms {
            batch,
            forward: search.forward()?,
            backward_data: input_grad.then(|| search.backward_data()).transpose()?,
            backward_filter: search.backward_filter()?,
        })
    }

    /// Grows the shared workspace to `bytes` if it is smaller.
    fn grow_workspace(&mut self, bytes: usize) -> Result<()> {
        if bytes > 0 && self.workspace.as_ref().is_none_or(|ws| ws.len() < bytes) {
            // The old workspace is freed in stream order, after the work queued on it.
            self.workspace = Some(
                self.stream
                    .alloc_zeros::<u8>(bytes)
                    .map_err(|e| Error::cuda("allocating the cuDNN workspace", e))?,
            );
        }
        Ok(())
    }
}

/// What one algorithm search measures on: scratch buffers of the shape at
/// the batch, their descriptors and addresses, the convolution, and the
/// workspace it may use (`budget` bytes).
struct Search<'a> {
    handle: sys::cudnnHandle_t,
    shape: &'a ConvShape,
    batch: usize,
    budget: usize,
    precision: Precision,
    tensors: Tensors,
    conv: ConvDesc,
    /// Owned here, so that the addresses below stay valid.
    _buffers: [CudaSlice<u8>; 3],
    _workspace: CudaSlice<u8>,
    x: *mut c_void,
    y: *mut c_void,
    w: *mut c_void,
    ws: *mut c_void,
}

impl<'a> Search<'a> {
    /// Scratch buffers and descriptors for `s` at `batch` on `convs`'
    /// stream, and a workspace of `budget` bytes.
    fn new(convs: &Convolutions, s: &'a ConvShape, batch: usize, budget: usize) -> Result<Self> {
        let stream = &convs.stream;
        let storage = convs.precision.storage();
        let scratch = |len: usize| {
            stream
                .alloc_zeros::<u8>(len.max(1) * element_bytes(storage))
                .map_err(|e| Error::cuda("allocating buffers for the cuDNN algorithm search", e))
        };
        let lens = Lens::new(s, batch);
        let x_offset = second_source_misalignment(s, storage);
        let mut buffers = [
            scratch(lens.x + x_offset.div_ceil(element_bytes(storage)))?,
            scratch(lens.y)?,
            scratch(lens.w)?,
        ];
        // SAFETY: the search writes the workspace before it reads it.
        let mut workspace = unsafe { stream.alloc::<u8>(budget.max(1)) }
            .map_err(|e| Error::cuda("allocating the cuDNN search workspace", e))?;
        let search_math = match convs.precision {
            Precision::Fp32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            Precision::Tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            Precision::Bf16 | Precision::Fp16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        };
        // The x buffer holds `x_offset` bytes more than the input.
        let [x, y, w] = buffers.each_mut().map(|b| b.device_ptr_mut(stream).0);
        let x = (x + x_offset as u64) as *mut c_void;
        let (y, w) = (y as *mut c_void, w as *mut c_void);
        let ws = workspace.device_ptr_mut(stream).0 as *mut c_void;
        Ok(Search {
            handle: convs.handle.0,
            shape: s,
            batch,
            budget,
            precision: convs.precision,
            tensors: tensors(s, batch, storage)?,
            conv: convolution(s, search_math)?,
            _buffers: buffers,
            _workspace: workspace,
            x,
            y,
            w,
            ws,
        })
    }

    /// The forward algorithm.
    fn forward(&self) -> Result<Choice<sys::cudnnConvolutionFwdAlgo_t>> {
        let (h, t, c, n) = (self.handle, &self.tensors, self.conv.0, RESULTS as i32);
        // SAFETY (both calls): live descriptors describing the scratch
        // buffers, which `self` owns; `perfs` holds `n` results.
        self.pick(
            "forward",
            |count, perfs| unsafe {
                sys::cudnnFindConvolutionForwardAlgorithmEx(
                    h,
                    t.x.0,
                    self.x,
                    t.w.0,
                    self.w,
                    c,
                    t.y.0,
                    self.y,
                    n,
                    count,
                    perfs,
                    self.ws,
                    self.budget,
                )
            },
            |count, perfs| unsafe {
                sys::cudnnGetConvolutionForwardAlgorithm_v7(
                    h, t.x.0, t.w.0, c, t.y.0, n, count, perfs,
                )
            },
        )
    }

    /// The backward-data algorithm.
    fn backward_data(&self) -> Result<Choice<sys::cudnnConvolutionBwdDataAlgo_t>> {
        let (h, t, c, n) = (self.handle, &self.tensors, self.conv.0, RESULTS as i32);
        // SAFETY: as in `forward`.
        self.pick(
            "backward-data",
            |count, perfs| unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                    h,
                    t.w.0,
                    self.w,
                    t.y.0,
                    self.y,
                    c,
                    t.x.0,
                    self.x,
                    n,
                    count,
                    perfs,
                    self.ws,
                    self.budget,
                )
            },
            |count, perfs| unsafe {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                    h, t.w.0, t.y.0, c, t.x.0, n, count, perfs,
                )
            },
        )
    }

    /// The backward-filter algorithm.
    fn backward_filter(&self) -> Result<Choice<sys::cudnnConvolutionBwdFilterAlgo_t>> {
        let (h, t, c, n) = (self.handle, &self.tensors, self.conv.0, RESULTS as i32);
        // SAFETY: as in `forward`.
        self.pick(
            "backward-filter",
            |count, perfs| unsafe {
                sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                    h,
                    t.x.0,
                    self.x,
                    t.y.0,
                    self.y,
                    c,
                    t.w.0,
                    self.w,
                    n,
                    count,
                    perfs,
                    self.ws,
                    self.budget,
                )
            },
            |count, perfs| unsafe {
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                    h, t.x.0, t.y.0, c, t.w.0, n, count, perfs,
                )
            },
        )
    }

    /// One direction's algorithm ([`choose`]) from what `find` measures,
    /// or from the heuristic's answer (`heuristic`) where measuring fails
    /// or finds none usable; says so in one line when it is not
    /// deterministic. Each call writes up to [`RESULTS`] results and their
    /// count.
    fn pick<P: Perf>(
        &self,
        direction: &str,
        find: impl FnOnce(&mut i32, *mut P) -> sys::cudnnStatus_t,
        heuristic: impl FnOnce(&mut i32, *mut P) -> sys::cudnnStatus_t,
    ) -> Result<Choice<P::Algo>> {
        // SAFETY: cuDNN's result structs are plain C data, valid as zeros.
        let mut perfs: [P; RESULTS] = unsafe { std::mem::zeroed() };
        let mut count = 0;
        let results = |perfs: &[P], count: i32| -> Option<(Choice<P::Algo>, bool)> {
            let count = usize::try_from(count).unwrap_or(0).min(RESULTS);
            choose(&perfs[..count], self.budget, self.precision)
        };
        let found = find(&mut count, perfs.as_mut_ptr()).result().is_ok();
        if !found || results(&perfs, count).is_none() {
            count = 0;
            heuristic(&mut count, perfs.as_mut_ptr())
                .result()
                .map_err(cudnn(&format!("{direction} algorithm")))?;
        }
        let (choice, deterministic) =
            results(&perfs, count).ok_or_else(|| no_algorithm(direction, self.budget))?;
        if !deterministic {
            let s = self.shape;
            eprintln!(
                "note: no deterministic cuDNN {direction} algorithm fits {} MiB for conv {}x{}x{} -> {} at batch {}; using the fastest that does",
                self.budget >> 20,
                s.in_c,
                s.in_h,
                s.in_w,
                s.out_c,
                self.batch
            );
        }
        Ok(choice)
    }
}

/// An offset (in bytes, below 256) with the worst alignment a later
/// source's slice of `s`'s input can have: a slice begins a whole number
/// of images into the buffer, so at any batch it is aligned at least as
/// well as one image's bytes, whose remainder this is. A search measures at
/// this offset from a 256-byte boundary so that the algorithms it picks
/// (some need aligned data) run on every slice.
fn second_source_misalignment(s: &ConvShape, storage: Storage) -> usize {
    if s.sources < 2 {
        return 0;
    }
    (s.in_c * s.in_h * s.in_w * element_bytes(storage)) % 256
}

/// Descriptors of `s`'s input, output and one source's filter (each
/// filter over its group's `in_c / groups` channels), their elements
/// stored as `storage` says, in the GPU's layout at that storage
/// ([`Layout::on_gpu`]: NHWC maps and `[out][kh][kw][in]` filters at 16
/// bits, NCHW and `[out][in][kh][kw]` at f32). cuDNN takes the dimensions
/// in NCHW order whatever the format.
fn tensors(s: &ConvShape, batch: usize, storage: Storage) -> Result<Tensors> {
    let dims = |v: [usize; 4]| v.map(|d| d as i32);
    let float = data_type(storage);
    let format = match Layout::on_gpu(storage) {
        Layout::Nchw => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        Layout::Nhwc => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
    };
    // SAFETY: each descriptor is created just before it is set, and owned by its wrapper.
    unsafe {
        let x = TensorDesc(result::create_tensor_descriptor().map_err(cudnn("tensor"))?);
        result::set_tensor4d_descriptor(x.0, format, float, dims([batch, s.in_c, s.in_h, s.in_w]))
            .map_err(cudnn("input shape"))?;
        let y = TensorDesc(result::create_tensor_descriptor().map_err(cudnn("tensor"))?);
        result::set_tensor4d_descriptor(
            y.0,
            format,
            float,
            dims([batch, s.out_c, s.out_h, s.out_w]),
        )
        .map_err(cudnn("output shape"))?;
        let w = FilterDesc(result::create_filter_descriptor().map_err(cudnn("filter"))?);
        result::set_filter4d_descriptor(
            w.0,
            float,
            format,
            dims([s.out_c, s.in_c / s.groups, s.kernel, s.kernel]),
        )
        .map_err(cudnn("filter shape"))?;
        Ok(Tensors { x, y, w })
    }
}

/// `s`'s convolution geometry and groups with the given math type.
fn convolution(s: &ConvShape, math: sys::cudnnMathType_t) -> Result<ConvDesc> {
    let (pad, stride) = (s.pad as i32, s.stride as i32);
    // SAFETY: created just before it is set, and owned by its wrapper.
    unsafe {
        let conv = ConvDesc(result::create_convolution_descriptor().map_err(cudnn("convolution"))?);
        result::set_convolution2d_descriptor(
            conv.0,
            pad,
            pad,
            stride,
            stride,
            1,
            1,
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        )
        .map_err(cudnn("convolution geometry"))?;
        result::set_convolution_math_type(conv.0, math).map_err(cudnn("math type"))?;
        sys::cudnnSetConvolutionGroupCount(conv.0, s.groups as i32)
            .result()
            .map_err(cudnn("group count"))?;
        Ok(conv)
    }
}

fn no_algorithm(direction: &str, budget: usize) -> Error {
    Error::cuda(
        format!("cuDNN {direction} convolution"),
        format!(
            "no algorithm fits the {} MiB workspace (a quarter of the GPU's free memory, at most 4 GiB)",
            budget >> 20
        ),
    )
}

/// Elements one source's input, its weights and the output hold.
struct Lens {
    x: usize,
    w: usize,
    y: usize,
}

impl Lens {
    fn new(s: &ConvShape, batch: usize) -> Lens {
        Lens {
            x: batch * s.in_c * s.in_h * s.in_w,
            w: s.block_len(),
            y: batch * s.out_c * s.out_h * s.out_w,
        }
    }
}

impl Convolutions {
    /// Fails unless this device's descriptors describe buffers of `S`.
    fn stores<S: Stored>(&self) -> Result<()> {
        if S::STORAGE != self.precision.storage() {
            return Err(Error::cuda(
                "cuDNN convolution",
                format!(
                    "{:?} buffers on a device set up for {}",
                    S::STORAGE,
                    self.precision.name()
                ),
            ));
        }
        Ok(())
    }

    /// The address of a buffer cuDNN reads, on this stream.
    fn read<S>(&self, buf: &impl DevicePtr<S>) -> *const c_void {
        buf.device_ptr(&self.stream).0 as *const c_void
    }

    /// The address of a buffer cuDNN writes, on this stream.
    fn write<S>(&self, buf: &mut impl DevicePtrMut<S>) -> *mut c_void {
        buf.device_ptr_mut(&self.stream).0 as *mut c_void
    }
}

fn ptr(v: &f32) -> *const c_void {
    v as *const f32 as *const c_void
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::plan::{Op, Plan};

    /// The paper's conv3, the convolution that reads both towers.
    fn paper_conv3() -> ConvShape {
        let plan = Plan::load("paper").unwrap();
        let mut shapes = plan.layers.iter().filter_map(|l| match &l.op {
            Op::Conv(s) => Some(*s),
            _ => None,
        });
        shapes
            .find(|s| s.sources == 2)
            .expect("conv3 reads both towers")
    }

    #[test]
    fn the_papers_second_sources_start_on_256_byte_boundaries() {
        let conv3 = paper_conv3();
        for storage in [Storage::Full, Storage::Bf16, Storage::F16] {
            assert_eq!(second_source_misalignment(&conv3, storage), 0);
        }
    }

    #[test]
    fn an_odd_image_size_is_measured_misaligned_and_one_source_never() {
        let conv3 = paper_conv3();
        // 3 channels of 5×5: 75 elements an image, 150 bytes at 16 bits.
        let odd = ConvShape {
            in_c: 3,
            in_h: 5,
            in_w: 5,
            ..conv3
        };
        assert_eq!(second_source_misalignment(&odd, Storage::Bf16), 150);
        assert_eq!(second_source_misalignment(&odd, Storage::Full), 300 - 256);
        let alone = ConvShape { sources: 1, ..odd };
        assert_eq!(second_source_misalignment(&alone, Storage::F16), 0);
    }
}
