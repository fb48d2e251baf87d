// Reductions: the bias gradient and softmax cross-entropy over logits split
// across the towers.

#define BIAS_THREADS 256

// dbias[c] = sum over images and plane positions of dy[n][c][p]. One block
// per channel; a tree in shared memory. Launch with BIAS_THREADS threads.
extern "C" __global__ void bias_grad_f32(
    const float* __restrict__ dy, float* __restrict__ dbias, unsigned int batch,
    unsigned int channels, unsigned int plane)
{
    __shared__ float partial[BIAS_THREADS];
    const unsigned int c = blockIdx.x;
    const unsigned long long per_channel = (unsigned long long)batch * plane;
    float sum = 0.0f;
    for (unsigned long long i = threadIdx.x; i < per_channel; i += BIAS_THREADS) {
        const unsigned long long n = i / plane, p = i % plane;
        sum += dy[(n * channels + c) * plane + p];
    }
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int half = BIAS_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) dbias[c] = partial[0];
}

// One thread per image, in double as the CPU device. logits is
// [tower][image][per_tower]; class t * per_tower + u is unit u of tower t.
// Writes the gradient of the batch-mean loss for this tower's own logits
// ([image][per_tower]) and, per image, {-log p(label), top-1 hit, top-5 hit}.
extern "C" __global__ void softmax_cross_entropy_f32(
    const float* __restrict__ logits, const unsigned int* __restrict__ labels,
    float* __restrict__ dlogits, double* __restrict__ stats, unsigned int batch,
    unsigned int towers, unsigned int per_tower, unsigned int tower)
{
    const unsigned int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= batch) return;
    const unsigned int classes = towers * per_tower;
    const unsigned int label = labels[n];
#define LOGIT(cls) ((double)logits[((unsigned long long)((cls) / per_tower) * batch + n) * per_tower + (cls) % per_tower])
    double max = -__longlong_as_double(0x7ff0000000000000LL);
    for (unsigned int k = 0; k < classes; ++k) max = fmax(max, LOGIT(k));
    double sum = 0.0;
    for (unsigned int k = 0; k < classes; ++k) sum += exp(LOGIT(k) - max);
    const double log_sum = log(sum) + max;
    const double target = LOGIT(label);
    unsigned int above = 0;
    for (unsigned int k = 0; k < classes; ++k) above += LOGIT(k) > target ? 1u : 0u;
    stats[3 * n] = log_sum - target;
    stats[3 * n + 1] = above == 0 ? 1.0 : 0.0;
    stats[3 * n + 2] = above < 5 ? 1.0 : 0.0;
    for (unsigned int u = 0; u < per_tower; ++u) {
        const unsigned int cls = tower * per_tower + u;
        const double p = exp(LOGIT(cls) - log_sum);
        dlogits[(unsigned long long)n * per_tower + u] =
            (float)((p - (cls == label ? 1.0 : 0.0)) / (double)batch);
    }
#undef LOGIT
}
