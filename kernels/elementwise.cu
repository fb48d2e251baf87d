// Element-wise kernels the CUDA device needs beside cuDNN and cuBLAS:
// ReLU (paper §3.1), inverted dropout (§4.2), the momentum-SGD update (§5),
// bias broadcast, the sum of two buffers (the emulation link's
// reduce-scatter) and the overflow check of a loss-scaled step. Grid-stride loops, one element per step.

#define FOR_EACH(i, n)                                                          \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (unsigned long long)gridDim.x * blockDim.x)

extern "C" __global__ void relu_forward_f32(const float* x, float* y, unsigned long long n)
{
    FOR_EACH(i, n) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }
}

extern "C" __global__ void relu_backward_f32(
    const float* y, const float* dy, float* dx, unsigned long long n)
{
    FOR_EACH(i, n) { dx[i] = y[i] > 0.0f ? dy[i] : 0.0f; }
}

extern "C" __global__ void tanh_forward_f32(const float* x, float* y, unsigned long long n)
{
    FOR_EACH(i, n) { y[i] = tanhf(x[i]); }
}

extern "C" __global__ void tanh_backward_f32(
    const float* y, const float* dy, float* dx, unsigned long long n)
{
    FOR_EACH(i, n) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }
}

// SplitMix64's finalizer, as src/rng.rs `mix`.
__device__ unsigned long long mix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// The same mask as src/device/cpu/pointwise.rs `dropout_keeps`: element i is
// kept when uniform_at(key, first + i) >= p, compared in double.
extern "C" __global__ void dropout_f32(
    const float* in, float* out, unsigned long long n, float p, unsigned long long key,
    unsigned long long first)
{
    const float keep_scale = (float)(1.0 / (1.0 - (double)p));
    FOR_EACH(i, n) {
        const double u =
            (double)(mix64(key ^ mix64(first + i)) >> 11) * (1.0 / 9007199254740992.0);
        out[i] = u >= (double)p ? in[i] * keep_scale : 0.0f;
    }
}

// v <- momentum v - decay lr w - lr g;  w <- w + v.
extern "C" __global__ void sgd_update_f32(
    float* w, const float* g, float* v, unsigned long long n,
    float lr, float momentum, float weight_decay)
{
    const float decay = weight_decay * lr;
    FOR_EACH(i, n) {
        const float nv = momentum * v[i] - decay * w[i] - lr * g[i];
        v[i] = nv;
        w[i] += nv;
    }
}

// y[n][c][p] = bias[c] over batch x channels x plane.
extern "C" __global__ void bias_fill_f32(
    float* y, const float* bias, unsigned long long n, unsigned int channels,
    unsigned int plane)
{
    FOR_EACH(i, n) { y[i] = bias[(i / plane) % channels]; }
}

// out = a + b.
extern "C" __global__ void add_f32(
    float* out, const float* a, const float* b, unsigned long long n)
{
    FOR_EACH(i, n) { out[i] = a[i] + b[i]; }
}

// flag = 1 when any of x's n elements is infinite or NaN (left as it is
// otherwise, so that one flag can gather several buffers).
extern "C" __global__ void flag_nonfinite_f32(
    const float* x, unsigned long long n, unsigned int* flag)
{
    FOR_EACH(i, n) {
        if (!isfinite(x[i])) *flag = 1u;
    }
}
