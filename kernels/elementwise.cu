// Element-wise kernels the CUDA device needs beside cuDNN and cuBLAS:
// ReLU (paper §3.1), inverted dropout (§4.2), the momentum-SGD update (§5),
// bias broadcast, the sum of two buffers (the emulation link's
// reduce-scatter), the overflow check of a loss-scaled step, and the
// conversions between the f32 master weights and their 16-bit copies.
// Grid-stride loops, one element per step. Each kernel comes in the three
// storages of storage.cuh (_f32, _bf16, _f16), computing in f32 and
// rounding once, as it stores; the master weights and the momentum stay
// f32 at every storage. Where a multiply meets an add, each is rounded on
// its own (`__fmul_rn`, never fused into a multiply-add), in the CPU
// device's order, so the results are the CPU's bit for bit.

#include "storage.cuh"

#define FOR_EACH(i, n)                                                          \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
         i < (n); i += (unsigned long long)gridDim.x * blockDim.x)

template <class T>
__device__ __forceinline__ void relu_forward(const T* x, T* y, unsigned long long n)
{
    FOR_EACH(i, n) {
        const float v = widen(x[i]);
        put(&y[i], v > 0.0f ? v : 0.0f);
    }
}

template <class T>
__device__ __forceinline__ void relu_backward(const T* y, const T* dy, T* dx, unsigned long long n)
{
    FOR_EACH(i, n) { put(&dx[i], widen(y[i]) > 0.0f ? widen(dy[i]) : 0.0f); }
}

template <class T>
__device__ __forceinline__ void tanh_forward(const T* x, T* y, unsigned long long n)
{
    FOR_EACH(i, n) { put(&y[i], tanhf(widen(x[i]))); }
}

template <class T>
__device__ __forceinline__ void tanh_backward(const T* y, const T* dy, T* dx, unsigned long long n)
{
    FOR_EACH(i, n) {
        const float v = widen(y[i]);
        put(&dx[i], __fmul_rn(widen(dy[i]), __fsub_rn(1.0f, __fmul_rn(v, v))));
    }
}

// SplitMix64's finalizer, as src/rng.rs `mix`.
__device__ unsigned long long mix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// The same mask as src/device/cpu/pointwise.rs `dropout_keeps` under
// src/device/mod.rs `DropoutMask`: each image's units are `groups` runs of
// `run` (1 or 2 towers' units), run g drawing under key g; unit u of run g of
// image m is kept when uniform_at(key g, first + m * run + u) >= p, compared
// in double. Units count channels first: where the buffer holds feature maps
// channels last (`plane` > 1 positions of `channels` interleaved channels an
// image), element i is unit c * plane + position of its image.
template <class T>
__device__ __forceinline__ void dropout(
    const T* in, T* out, unsigned long long n, float p, unsigned long long key0,
    unsigned long long key1, unsigned long long run, unsigned long long groups,
    unsigned long long first, unsigned long long channels, unsigned long long plane)
{
    const float keep_scale = (float)(1.0 / (1.0 - (double)p));
    const unsigned long long per_image = channels * plane;
    FOR_EACH(e, n) {
        unsigned long long i = e;
        if (plane > 1) {
            const unsigned long long image = e / per_image, at = e % per_image;
            i = image * per_image + (at % channels) * plane + at / channels;
        }
        const unsigned long long chunk = i / run;
        const unsigned long long key = (chunk % groups) ? key1 : key0;
        const unsigned long long index = first + (chunk / groups) * run + (i - chunk * run);
        const double u =
            (double)(mix64(key ^ mix64(index)) >> 11) * (1.0 / 9007199254740992.0);
        put(&out[e], u >= (double)p ? widen(in[e]) * keep_scale : 0.0f);
    }
}

// v <- momentum v - decay lr w - lr g;  w <- w + v, on the f32 master
// weights w and momentum v, with g as stored; the step's new weights are
// then rounded into `copy`, the weights the passes read (none at f32).
template <class T>
__device__ __forceinline__ void sgd_update(
    float* w, const T* g, float* v, T* copy, unsigned long long n,
    float lr, float momentum, float weight_decay)
{
    const float decay = weight_decay * lr;
    FOR_EACH(i, n) {
        const float nv = __fsub_rn(__fsub_rn(__fmul_rn(momentum, v[i]), __fmul_rn(decay, w[i])),
                                   __fmul_rn(lr, widen(g[i])));
        v[i] = nv;
        w[i] = __fadd_rn(w[i], nv);
        if (copy) put(&copy[i], w[i]);
    }
}

// y[n][c][p] = bias[c] over batch x channels x plane, the bias as the
// passes read it (its 16-bit copy; rounding its f32 master would give the same).
template <class T>
__device__ __forceinline__ void bias_fill(
    T* y, const T* bias, unsigned long long n, unsigned int channels, unsigned int plane)
{
    FOR_EACH(i, n) { y[i] = bias[(i / plane) % channels]; }
}

// out = a + b.
template <class T>
__device__ __forceinline__ void add(T* out, const T* a, const T* b, unsigned long long n)
{
    FOR_EACH(i, n) { put(&out[i], widen(a[i]) + widen(b[i])); }
}

// flag = 1 when any of x's n elements is infinite or NaN (left as it is
// otherwise, so that one flag can gather several buffers).
template <class T>
__device__ __forceinline__ void flag_nonfinite(const T* x, unsigned long long n, unsigned int* flag)
{
    FOR_EACH(i, n) {
        if (!isfinite(widen(x[i]))) *flag = 1u;
    }
}

extern "C" __global__ void relu_forward_f32(const float* x, float* y, unsigned long long n) { relu_forward(x, y, n); }
extern "C" __global__ void relu_forward_bf16(const bf16* x, bf16* y, unsigned long long n) { relu_forward(x, y, n); }
extern "C" __global__ void relu_forward_f16(const f16* x, f16* y, unsigned long long n) { relu_forward(x, y, n); }

extern "C" __global__ void relu_backward_f32(const float* y, const float* dy, float* dx, unsigned long long n) { relu_backward(y, dy, dx, n); }
extern "C" __global__ void relu_backward_bf16(const bf16* y, const bf16* dy, bf16* dx, unsigned long long n) { relu_backward(y, dy, dx, n); }
extern "C" __global__ void relu_backward_f16(const f16* y, const f16* dy, f16* dx, unsigned long long n) { relu_backward(y, dy, dx, n); }

extern "C" __global__ void tanh_forward_f32(const float* x, float* y, unsigned long long n) { tanh_forward(x, y, n); }
extern "C" __global__ void tanh_forward_bf16(const bf16* x, bf16* y, unsigned long long n) { tanh_forward(x, y, n); }
extern "C" __global__ void tanh_forward_f16(const f16* x, f16* y, unsigned long long n) { tanh_forward(x, y, n); }

extern "C" __global__ void tanh_backward_f32(const float* y, const float* dy, float* dx, unsigned long long n) { tanh_backward(y, dy, dx, n); }
extern "C" __global__ void tanh_backward_bf16(const bf16* y, const bf16* dy, bf16* dx, unsigned long long n) { tanh_backward(y, dy, dx, n); }
extern "C" __global__ void tanh_backward_f16(const f16* y, const f16* dy, f16* dx, unsigned long long n) { tanh_backward(y, dy, dx, n); }

#define DROPOUT_ARGS unsigned long long n, float p, unsigned long long key0, unsigned long long key1, unsigned long long run, unsigned long long groups, unsigned long long first, unsigned long long channels, unsigned long long plane
#define DROPOUT_CALL dropout(in, out, n, p, key0, key1, run, groups, first, channels, plane)
extern "C" __global__ void dropout_f32(const float* in, float* out, DROPOUT_ARGS) { DROPOUT_CALL; }
extern "C" __global__ void dropout_bf16(const bf16* in, bf16* out, DROPOUT_ARGS) { DROPOUT_CALL; }
extern "C" __global__ void dropout_f16(const f16* in, f16* out, DROPOUT_ARGS) { DROPOUT_CALL; }

#define SGD_ARGS unsigned long long n, float lr, float momentum, float weight_decay
extern "C" __global__ void sgd_update_f32(float* w, const float* g, float* v, SGD_ARGS)
{
    sgd_update(w, g, v, (float*)0, n, lr, momentum, weight_decay);
}
extern "C" __global__ void sgd_update_bf16(float* w, const bf16* g, float* v, bf16* copy, SGD_ARGS)
{
    sgd_update(w, g, v, copy, n, lr, momentum, weight_decay);
}
extern "C" __global__ void sgd_update_f16(float* w, const f16* g, float* v, f16* copy, SGD_ARGS)
{
    sgd_update(w, g, v, copy, n, lr, momentum, weight_decay);
}

#define BIAS_ARGS unsigned long long n, unsigned int channels, unsigned int plane
extern "C" __global__ void bias_fill_f32(float* y, const float* bias, BIAS_ARGS) { bias_fill(y, bias, n, channels, plane); }
extern "C" __global__ void bias_fill_bf16(bf16* y, const bf16* bias, BIAS_ARGS) { bias_fill(y, bias, n, channels, plane); }
extern "C" __global__ void bias_fill_f16(f16* y, const f16* bias, BIAS_ARGS) { bias_fill(y, bias, n, channels, plane); }

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, unsigned long long n) { add(out, a, b, n); }
extern "C" __global__ void add_bf16(bf16* out, const bf16* a, const bf16* b, unsigned long long n) { add(out, a, b, n); }
extern "C" __global__ void add_f16(f16* out, const f16* a, const f16* b, unsigned long long n) { add(out, a, b, n); }

extern "C" __global__ void flag_nonfinite_f32(const float* x, unsigned long long n, unsigned int* flag) { flag_nonfinite(x, n, flag); }
extern "C" __global__ void flag_nonfinite_bf16(const bf16* x, unsigned long long n, unsigned int* flag) { flag_nonfinite(x, n, flag); }
extern "C" __global__ void flag_nonfinite_f16(const f16* x, unsigned long long n, unsigned int* flag) { flag_nonfinite(x, n, flag); }

// dst = src rounded to 16 bits: a weight's copy from its f32 master, or an
// uploaded f32 buffer as stored.
extern "C" __global__ void narrow_bf16(const float* src, bf16* dst, unsigned long long n)
{
    FOR_EACH(i, n) { put(&dst[i], src[i]); }
}
extern "C" __global__ void narrow_f16(const float* src, f16* dst, unsigned long long n)
{
    FOR_EACH(i, n) { put(&dst[i], src[i]); }
}

// dst = src widened to f32 (exact): a stored buffer on its way to the host.
extern "C" __global__ void widen_bf16(const bf16* src, float* dst, unsigned long long n)
{
    FOR_EACH(i, n) { dst[i] = widen(src[i]); }
}
extern "C" __global__ void widen_f16(const f16* src, float* dst, unsigned long long n)
{
    FOR_EACH(i, n) { dst[i] = widen(src[i]); }
}
