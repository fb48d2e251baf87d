// Overlapping max-pooling (paper §3.4) over `planes` planes of `interleaved`
// channels each: 1 in NCHW, where each channel is a plane of its own; the
// channels of a pixel in NHWC, where a plane is an image. The backward pass
// routes each output's gradient to the first input of its window (row-major)
// that equals the output, as the CPU device does, and sums in output order:
// one thread per input element, no atomics, deterministic. Each kernel comes
// in the three storages of storage.cuh; the maximum of stored values is one
// of them, and the gradient is summed in f32 and rounded once, as stored.

#include "storage.cuh"

template <class T>
__device__ __forceinline__ void maxpool_forward(
    const T* __restrict__ x, T* __restrict__ y, unsigned long long planes,
    unsigned int in_h, unsigned int in_w, unsigned int size, unsigned int stride,
    unsigned int out_h, unsigned int out_w, unsigned int interleaved)
{
    const unsigned long long total = planes * out_h * out_w * interleaved;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int c = (unsigned int)(i % interleaved);
        const unsigned long long o = i / interleaved;
        const unsigned int ox = (unsigned int)(o % out_w);
        const unsigned int oy = (unsigned int)((o / out_w) % out_h);
        const T* plane = x + (o / ((unsigned long long)out_h * out_w)) * in_h * in_w * interleaved + c;
        const unsigned int y0 = oy * stride, x0 = ox * stride;
        const unsigned int y1 = y0 + size < in_h ? y0 + size : in_h;
        const unsigned int x1 = x0 + size < in_w ? x0 + size : in_w;
        float best = -__int_as_float(0x7f800000);
        for (unsigned int iy = y0; iy < y1; ++iy)
            for (unsigned int ix = x0; ix < x1; ++ix)
                best = fmaxf(best, widen(plane[(unsigned long long)(iy * in_w + ix) * interleaved]));
        put(&y[i], best);
    }
}

template <class T>
__device__ __forceinline__ void maxpool_backward(
    const T* __restrict__ x, const T* __restrict__ y,
    const T* __restrict__ dy, T* __restrict__ dx, unsigned long long planes,
    unsigned int in_h, unsigned int in_w, unsigned int size, unsigned int stride,
    unsigned int out_h, unsigned int out_w, unsigned int interleaved)
{
    const unsigned long long total = planes * in_h * in_w * interleaved;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int c = (unsigned int)(i % interleaved);
        const unsigned long long at = i / interleaved;
        const unsigned int ix = (unsigned int)(at % in_w);
        const unsigned int iy = (unsigned int)((at / in_w) % in_h);
        const unsigned long long p = at / ((unsigned long long)in_h * in_w);
        const T* xp = x + p * in_h * in_w * interleaved + c;
        const T* yp = y + p * out_h * out_w * interleaved + c;
        const T* dyp = dy + p * out_h * out_w * interleaved + c;
        // Outputs whose window [o*stride, o*stride + size) holds this input.
        const unsigned int oy0 = iy + 1 > size ? (iy + 1 - size + stride - 1) / stride : 0;
        const unsigned int ox0 = ix + 1 > size ? (ix + 1 - size + stride - 1) / stride : 0;
        const unsigned int oy1 = iy / stride + 1 < out_h ? iy / stride + 1 : out_h;
        const unsigned int ox1 = ix / stride + 1 < out_w ? ix / stride + 1 : out_w;
        float grad = 0.0f;
        for (unsigned int oy = oy0; oy < oy1; ++oy) {
            for (unsigned int ox = ox0; ox < ox1; ++ox) {
                const unsigned long long out_at = (unsigned long long)(oy * out_w + ox) * interleaved;
                const float best = widen(yp[out_at]);
                const unsigned int y0 = oy * stride, x0 = ox * stride;
                const unsigned int y1 = y0 + size < in_h ? y0 + size : in_h;
                const unsigned int x1 = x0 + size < in_w ? x0 + size : in_w;
                unsigned int first = 0xffffffffu;
                for (unsigned int wy = y0; wy < y1 && first == 0xffffffffu; ++wy)
                    for (unsigned int wx = x0; wx < x1; ++wx)
                        if (widen(xp[(unsigned long long)(wy * in_w + wx) * interleaved]) == best) {
                            first = wy * in_w + wx;
                            break;
                        }
                if (first == iy * in_w + ix) grad += widen(dyp[out_at]);
            }
        }
        put(&dx[i], grad);
    }
}

#define POOL_DIMS                                                              \
    unsigned long long planes, unsigned int in_h, unsigned int in_w,           \
        unsigned int size, unsigned int stride, unsigned int out_h,            \
        unsigned int out_w, unsigned int interleaved
#define POOL_FORWARD(T) const T* __restrict__ x, T* __restrict__ y, POOL_DIMS
#define POOL_BACKWARD(T)                                                       \
    const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ dy, \
        T* __restrict__ dx, POOL_DIMS

extern "C" __global__ void maxpool_forward_f32(POOL_FORWARD(float))
{
    maxpool_forward(x, y, planes, in_h, in_w, size, stride, out_h, out_w, interleaved);
}

extern "C" __global__ void maxpool_forward_bf16(POOL_FORWARD(bf16))
{
    maxpool_forward(x, y, planes, in_h, in_w, size, stride, out_h, out_w, interleaved);
}

extern "C" __global__ void maxpool_forward_f16(POOL_FORWARD(f16))
{
    maxpool_forward(x, y, planes, in_h, in_w, size, stride, out_h, out_w, interleaved);
}

extern "C" __global__ void maxpool_backward_f32(POOL_BACKWARD(float))
{
    maxpool_backward(x, y, dy, dx, planes, in_h, in_w, size, stride, out_h, out_w,
                     interleaved);
}

extern "C" __global__ void maxpool_backward_bf16(POOL_BACKWARD(bf16))
{
    maxpool_backward(x, y, dy, dx, planes, in_h, in_w, size, stride, out_h, out_w,
                     interleaved);
}

extern "C" __global__ void maxpool_backward_f16(POOL_BACKWARD(f16))
{
    maxpool_backward(x, y, dy, dx, planes, in_h, in_w, size, stride, out_h, out_w,
                     interleaved);
}
