// Local response normalization across channels (paper §3.3), forward and
// backward, one thread per element:
//   scale = k + alpha * sum_{|j-c| <= size/2} x[j]^2,   y = x * scale^-beta
//   dx[c] = dy[c] * scale[c]^-beta
//           - 2 alpha beta x[c] * sum_{|j-c| <= size/2} dy[j] y[j] / scale[j]
// alpha multiplies the sum directly, as the paper writes it. Channel c of an
// element sits `channel_stride` elements from channel c + 1: the plane's
// size in NCHW, 1 in NHWC, where `channels` (a group's, when each group of
// channels normalizes alone) must divide the channels of a pixel. The channel sums
// run in ascending order, as on the CPU device. Each kernel comes in the
// three storages of storage.cuh (_f32, _bf16, _f16), all computing in f32;
// y is computed from the unrounded scale, and y and scale are rounded as
// they are stored, as the CPU reference does.
//
// These kernels use no shared memory, barriers, warp intrinsics or atomics:
// kernels/shim/kernels_host.cpp compiles this file as C++ and runs it on the CPU.

#include "storage.cuh"

template <class T>
__device__ __forceinline__ void lrn_forward(
    const T* __restrict__ x, T* __restrict__ y, T* __restrict__ scale,
    unsigned int batch, unsigned int channels, unsigned int plane,
    unsigned int channel_stride, unsigned int size, float alpha, float beta, float k)
{
    const unsigned long long total = (unsigned long long)batch * channels * plane;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += step) {
        const unsigned int c = (unsigned int)((i / channel_stride) % channels);
        const T* image = x + (i - (unsigned long long)c * channel_stride);
        const unsigned int half = size / 2;
        const unsigned int lo = c >= half ? c - half : 0;
        const unsigned int hi = c + half + 1 < channels ? c + half + 1 : channels;
        float sum = 0.0f;
        for (unsigned int j = lo; j < hi; ++j) {
            const float v = widen(image[(unsigned long long)j * channel_stride]);
            sum += v * v;
        }
        const float s = k + alpha * sum;
        put(&scale[i], s);
        put(&y[i], widen(x[i]) * powf(s, -beta));
    }
}

template <class T>
__device__ __forceinline__ void lrn_backward(
    const T* __restrict__ x, const T* __restrict__ y,
    const T* __restrict__ scale, const T* __restrict__ dy,
    T* __restrict__ dx,
    unsigned int batch, unsigned int channels, unsigned int plane,
    unsigned int channel_stride, unsigned int size, float alpha, float beta)
{
    const unsigned long long total = (unsigned long long)batch * channels * plane;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += step) {
        const unsigned int c = (unsigned int)((i / channel_stride) % channels);
        const unsigned long long base = i - (unsigned long long)c * channel_stride;
        const unsigned int half = size / 2;
        const unsigned int lo = c >= half ? c - half : 0;
        const unsigned int hi = c + half + 1 < channels ? c + half + 1 : channels;
        float ratios = 0.0f;
        for (unsigned int j = lo; j < hi; ++j) {
            const unsigned long long at = base + (unsigned long long)j * channel_stride;
            ratios += widen(dy[at]) * widen(y[at]) / widen(scale[at]);
        }
        put(&dx[i], widen(dy[i]) * powf(widen(scale[i]), -beta)
                        - 2.0f * alpha * beta * widen(x[i]) * ratios);
    }
}

#define LRN_FORWARD_ARGS(T)                                                    \
    const T* __restrict__ x, T* __restrict__ y, T* __restrict__ scale,         \
        unsigned int batch, unsigned int channels, unsigned int plane,         \
        unsigned int channel_stride, unsigned int size, float alpha,           \
        float beta, float k
#define LRN_BACKWARD_ARGS(T)                                                   \
    const T* __restrict__ x, const T* __restrict__ y,                          \
        const T* __restrict__ scale, const T* __restrict__ dy,                 \
        T* __restrict__ dx, unsigned int batch, unsigned int channels,         \
        unsigned int plane, unsigned int channel_stride, unsigned int size,    \
        float alpha, float beta

extern "C" __global__ void lrn_forward_f32(LRN_FORWARD_ARGS(float))
{
    lrn_forward(x, y, scale, batch, channels, plane, channel_stride, size, alpha, beta, k);
}

extern "C" __global__ void lrn_forward_bf16(LRN_FORWARD_ARGS(bf16))
{
    lrn_forward(x, y, scale, batch, channels, plane, channel_stride, size, alpha, beta, k);
}

extern "C" __global__ void lrn_forward_f16(LRN_FORWARD_ARGS(f16))
{
    lrn_forward(x, y, scale, batch, channels, plane, channel_stride, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward_f32(LRN_BACKWARD_ARGS(float))
{
    lrn_backward(x, y, scale, dy, dx, batch, channels, plane, channel_stride, size, alpha,
                 beta);
}

extern "C" __global__ void lrn_backward_bf16(LRN_BACKWARD_ARGS(bf16))
{
    lrn_backward(x, y, scale, dy, dx, batch, channels, plane, channel_stride, size, alpha,
                 beta);
}

extern "C" __global__ void lrn_backward_f16(LRN_BACKWARD_ARGS(f16))
{
    lrn_backward(x, y, scale, dy, dx, batch, channels, plane, channel_stride, size, alpha,
                 beta);
}
