// Reductions: the bias gradient, softmax cross-entropy over logits split
// across the towers, and a batch's loss statistics. All are deterministic:
// every sum is taken in an order fixed by the shapes alone (fixed chunks,
// fixed trees, image order), never by atomics or by the order blocks happen
// to run in. The bias gradient and the loss come in the three storages of
// storage.cuh (_f32, _bf16, _f16) for what they read and write; their sums
// are f32 and f64 at every storage, rounded once as they are stored.

#include "storage.cuh"

#define BIAS_THREADS 256
#define LOSS_THREADS 256

// Pass 1 of dbias[c] = sum over images and plane positions of dy[n][c][p].
// Block (chunk, y) sums channel c = y, y + gridDim.y, ... over the images of
// its chunk: [chunk * per_chunk, (chunk + 1) * per_chunk) of the batch, with
// a tree in shared memory, into partial[c * chunks + chunk]. With one chunk
// `partial` may be dbias itself (at f32). Launch with BIAS_THREADS threads and
// gridDim.x == chunks, so a layer with few channels (conv1's 48) still fills
// the GPU.
template <class T>
__device__ __forceinline__ void bias_grad_partial(
    const T* __restrict__ dy, float* __restrict__ partial, unsigned int batch,
    unsigned int channels, unsigned int plane, unsigned int per_chunk)
{
    __shared__ float tree[BIAS_THREADS];
    const unsigned int chunks = gridDim.x, chunk = blockIdx.x;
    const unsigned int first = chunk * per_chunk;
    const unsigned int images = first >= batch ? 0 : min(per_chunk, batch - first);
    const unsigned long long count = (unsigned long long)images * plane;
    for (unsigned int c = blockIdx.y; c < channels; c += gridDim.y) {
        float sum = 0.0f;
        for (unsigned long long i = threadIdx.x; i < count; i += BIAS_THREADS) {
            const unsigned long long n = first + i / plane, p = i % plane;
            sum += widen(dy[(n * channels + c) * plane + p]);
        }
        tree[threadIdx.x] = sum;
        __syncthreads();
        for (unsigned int half = BIAS_THREADS / 2; half > 0; half /= 2) {
            if (threadIdx.x < half) tree[threadIdx.x] += tree[threadIdx.x + half];
            __syncthreads();
        }
        if (threadIdx.x == 0) partial[(unsigned long long)c * chunks + chunk] = tree[0];
        // The tree is reused for the next channel.
        __syncthreads();
    }
}

#define PARTIAL_ARGS                                                           \
    float* __restrict__ partial, unsigned int batch, unsigned int channels,    \
        unsigned int plane, unsigned int per_chunk
extern "C" __global__ void bias_grad_partial_f32(const float* __restrict__ dy, PARTIAL_ARGS)
{
    bias_grad_partial(dy, partial, batch, channels, plane, per_chunk);
}
extern "C" __global__ void bias_grad_partial_bf16(const bf16* __restrict__ dy, PARTIAL_ARGS)
{
    bias_grad_partial(dy, partial, batch, channels, plane, per_chunk);
}
extern "C" __global__ void bias_grad_partial_f16(const f16* __restrict__ dy, PARTIAL_ARGS)
{
    bias_grad_partial(dy, partial, batch, channels, plane, per_chunk);
}

// Pass 1 where dy is stored channels last, [rows][channels] (rows = images
// times plane): block `chunk` sums rows [chunk * per_chunk, (chunk + 1) *
// per_chunk) of channel c = threadIdx.x, threadIdx.x + blockDim.x, ... in
// row order, into partial[c * chunks + chunk]. Neighbouring threads read
// neighbouring channels, so every row is read whole. Launch with gridDim.x
// == chunks.
template <class T>
__device__ __forceinline__ void bias_grad_rows_partial(
    const T* __restrict__ dy, float* __restrict__ partial, unsigned long long rows,
    unsigned int channels, unsigned long long per_chunk)
{
    const unsigned int chunks = gridDim.x, chunk = blockIdx.x;
    const unsigned long long first = (unsigned long long)chunk * per_chunk;
    const unsigned long long end = first + per_chunk < rows ? first + per_chunk : rows;
    for (unsigned int c = threadIdx.x; c < channels; c += blockDim.x) {
        float sum = 0.0f;
        for (unsigned long long r = first; r < end; ++r) sum += widen(dy[r * channels + c]);
        partial[(unsigned long long)c * chunks + chunk] = sum;
    }
}

#define ROWS_ARGS                                                              \
    float* __restrict__ partial, unsigned long long rows, unsigned int channels, \
        unsigned long long per_chunk
extern "C" __global__ void bias_grad_rows_partial_f32(const float* __restrict__ dy, ROWS_ARGS)
{
    bias_grad_rows_partial(dy, partial, rows, channels, per_chunk);
}
extern "C" __global__ void bias_grad_rows_partial_bf16(const bf16* __restrict__ dy, ROWS_ARGS)
{
    bias_grad_rows_partial(dy, partial, rows, channels, per_chunk);
}
extern "C" __global__ void bias_grad_rows_partial_f16(const f16* __restrict__ dy, ROWS_ARGS)
{
    bias_grad_rows_partial(dy, partial, rows, channels, per_chunk);
}

// Pass 2: dbias[c] = the sum of channel c's chunks, in chunk order.
template <class T>
__device__ __forceinline__ void bias_grad_finish(
    const float* __restrict__ partial, T* __restrict__ dbias, unsigned int channels,
    unsigned int chunks)
{
    for (unsigned int c = blockIdx.x * blockDim.x + threadIdx.x; c < channels;
         c += gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (unsigned int k = 0; k < chunks; ++k) sum += partial[(unsigned long long)c * chunks + k];
        put(&dbias[c], sum);
    }
}

#define FINISH_ARGS unsigned int channels, unsigned int chunks
extern "C" __global__ void bias_grad_finish_f32(const float* __restrict__ partial, float* __restrict__ dbias, FINISH_ARGS)
{
    bias_grad_finish(partial, dbias, channels, chunks);
}
extern "C" __global__ void bias_grad_finish_bf16(const float* __restrict__ partial, bf16* __restrict__ dbias, FINISH_ARGS)
{
    bias_grad_finish(partial, dbias, channels, chunks);
}
extern "C" __global__ void bias_grad_finish_f16(const float* __restrict__ partial, f16* __restrict__ dbias, FINISH_ARGS)
{
    bias_grad_finish(partial, dbias, channels, chunks);
}

// A tree over LOSS_THREADS values in shared memory; every thread gets the result.
__device__ double block_sum(double* tree, double v)
{
    tree[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int half = LOSS_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) tree[threadIdx.x] += tree[threadIdx.x + half];
        __syncthreads();
    }
    const double total = tree[0];
    // Everyone has read the total before the tree is written again.
    __syncthreads();
    return total;
}

__device__ double block_max(double* tree, double v)
{
    tree[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int half = LOSS_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) tree[threadIdx.x] = fmax(tree[threadIdx.x], tree[threadIdx.x + half]);
        __syncthreads();
    }
    const double total = tree[0];
    __syncthreads();
    return total;
}

// One block per image (grid-stride over images), LOSS_THREADS threads over
// its classes, in double as the CPU device. logits is
// [tower][image][per_tower]; class t * per_tower + u is unit u of tower t.
// Writes the gradient of the batch-mean loss, times grad_scale (the loss
// scale), for this tower's own logits ([image][per_tower]) and, per image, {-log p(label), top-1 hit, top-5 hit}.
template <class T>
__device__ __forceinline__ void softmax_cross_entropy(
    const T* __restrict__ logits, const unsigned int* __restrict__ labels,
    T* __restrict__ dlogits, double* __restrict__ stats, unsigned int batch,
    unsigned int towers, unsigned int per_tower, unsigned int tower, float grad_scale)
{
    __shared__ double tree[LOSS_THREADS];
    const unsigned int classes = towers * per_tower;
    for (unsigned int n = blockIdx.x; n < batch; n += gridDim.x) {
        const unsigned int label = labels[n];
#define LOGIT(cls) ((double)widen(logits[((unsigned long long)((cls) / per_tower) * batch + n) * per_tower + (cls) % per_tower]))
        double local = -__longlong_as_double(0x7ff0000000000000LL);
        for (unsigned int k = threadIdx.x; k < classes; k += LOSS_THREADS) local = fmax(local, LOGIT(k));
        const double max = block_max(tree, local);
        local = 0.0;
        for (unsigned int k = threadIdx.x; k < classes; k += LOSS_THREADS) local += exp(LOGIT(k) - max);
        const double log_sum = log(block_sum(tree, local)) + max;
        const double target = LOGIT(label);
        local = 0.0;
        for (unsigned int k = threadIdx.x; k < classes; k += LOSS_THREADS) local += LOGIT(k) > target ? 1.0 : 0.0;
        const double above = block_sum(tree, local);
        if (threadIdx.x == 0) {
            stats[3 * n] = log_sum - target;
            stats[3 * n + 1] = above == 0.0 ? 1.0 : 0.0;
            stats[3 * n + 2] = above < 5.0 ? 1.0 : 0.0;
        }
        for (unsigned int u = threadIdx.x; u < per_tower; u += LOSS_THREADS) {
            const unsigned int cls = tower * per_tower + u;
            const double p = exp(LOGIT(cls) - log_sum);
            put(&dlogits[(unsigned long long)n * per_tower + u],
                (float)((p - (cls == label ? 1.0 : 0.0)) * (double)grad_scale / (double)batch));
        }
#undef LOGIT
    }
}

#define LOSS_SHAPE                                                             \
    double* __restrict__ stats, unsigned int batch, unsigned int towers,       \
        unsigned int per_tower, unsigned int tower, float grad_scale
extern "C" __global__ void softmax_cross_entropy_f32(
    const float* __restrict__ logits, const unsigned int* __restrict__ labels,
    float* __restrict__ dlogits, LOSS_SHAPE)
{
    softmax_cross_entropy(logits, labels, dlogits, stats, batch, towers, per_tower, tower, grad_scale);
}
extern "C" __global__ void softmax_cross_entropy_bf16(
    const bf16* __restrict__ logits, const unsigned int* __restrict__ labels,
    bf16* __restrict__ dlogits, LOSS_SHAPE)
{
    softmax_cross_entropy(logits, labels, dlogits, stats, batch, towers, per_tower, tower, grad_scale);
}
extern "C" __global__ void softmax_cross_entropy_f16(
    const f16* __restrict__ logits, const unsigned int* __restrict__ labels,
    f16* __restrict__ dlogits, LOSS_SHAPE)
{
    softmax_cross_entropy(logits, labels, dlogits, stats, batch, towers, per_tower, tower, grad_scale);
}

// One batch's loss statistics from the per-image ones softmax_cross_entropy_f32
// wrote: out = {sum of -log p(label), top-1 hits, top-5 hits}, summed in image
// order (as the host summed them before, so the sums are the same bit for
// bit). A single thread: a batch is a few hundred images, and the sums stay
// on the GPU until the host asks for a run of them.
extern "C" __global__ void loss_stats_sum_f64(
    const double* __restrict__ per_image, unsigned int batch, double* __restrict__ out)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double loss = 0.0, top1 = 0.0, top5 = 0.0;
    for (unsigned int n = 0; n < batch; ++n) {
        loss += per_image[3 * n];
        top1 += per_image[3 * n + 1] > 0.5 ? 1.0 : 0.0;
        top5 += per_image[3 * n + 2] > 0.5 ? 1.0 : 0.0;
    }
    out[0] = loss;
    out[1] = top1;
    out[2] = top5;
}
