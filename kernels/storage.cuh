// How a kernel stores its buffers (--precision): f32, bfloat16 or IEEE
// half. Arithmetic is always f32: a kernel widens what it loads (`widen`)
// and rounds what it stores to nearest, ties to even (`put`), as the CPU
// reference rounds through the `half` crate (src/device/precision.rs).
//
// nvcc and the C++ host shim include this file; for NVRTC, which sees one
// source string, src/device/cuda/kernels.rs splices it in where a kernel
// file includes it. On a GPU the conversions are the hardware's (sm_80 and
// later); compiled as plain C++ (kernels/shim/) they are written out below.

#ifndef ALEXNET_STORAGE_CUH
#define ALEXNET_STORAGE_CUH

// The bits of a bfloat16 value: f32's sign and exponent, 7 stored mantissa bits.
struct bf16 {
    unsigned short bits;
};

// The bits of an IEEE binary16 value: 5 exponent and 10 mantissa bits.
struct f16 {
    unsigned short bits;
};

#ifdef __CUDACC__

__device__ __forceinline__ float widen(bf16 v)
{
    return __int_as_float((int)((unsigned int)v.bits << 16));
}

__device__ __forceinline__ float widen(f16 v)
{
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(v.bits));
    return r;
}

__device__ __forceinline__ void put(bf16* p, float v)
{
#if __CUDA_ARCH__ >= 800
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(v));
    p->bits = r;
#else
    // Before sm_80 there is no bf16 conversion: the same rounding in
    // integers (as the host shim's below), so every kernel file still
    // builds for older GPUs, whose f32 path needs it.
    const unsigned int b = __float_as_uint(v);
    p->bits = (b & 0x7fffffffu) > 0x7f800000u
        ? (unsigned short)((b >> 16) | 0x40u)
        : (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
#endif
}

__device__ __forceinline__ void put(f16* p, float v)
{
    unsigned short r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(v));
    p->bits = r;
}

#else  // plain C++: the host shim

#include <cmath>
#include <cstring>

static inline unsigned int bits_of(float v)
{
    unsigned int b;
    std::memcpy(&b, &v, sizeof b);
    return b;
}

static inline float float_of(unsigned int b)
{
    float v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}

static inline float widen(bf16 v)
{
    return float_of((unsigned int)v.bits << 16);
}

static inline float widen(f16 v)
{
    const unsigned int sign = (unsigned int)(v.bits & 0x8000u) << 16;
    const unsigned int exponent = (v.bits >> 10) & 0x1fu, mantissa = v.bits & 0x3ffu;
    if (exponent == 0)  // zero or subnormal: mantissa * 2^-24
        return float_of(sign | bits_of((float)mantissa * 5.9604644775390625e-8f));
    if (exponent == 31)  // infinity or NaN
        return float_of(sign | 0x7f800000u | (mantissa << 13));
    return float_of(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

static inline void put(bf16* p, float v)
{
    const unsigned int b = bits_of(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {  // NaN stays NaN
        p->bits = (unsigned short)((b >> 16) | 0x40u);
        return;
    }
    p->bits = (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static inline void put(f16* p, float v)
{
    const unsigned int b = bits_of(v);
    const unsigned int sign = (b >> 16) & 0x8000u, magnitude = b & 0x7fffffffu;
    if (magnitude > 0x7f800000u) {
        p->bits = (unsigned short)(sign | 0x7e00u);
    } else if (magnitude >= 0x477ff000u) {  // from 65520 up: infinity
        p->bits = (unsigned short)(sign | 0x7c00u);
    } else if (magnitude < 0x38800000u) {  // below 2^-14: a multiple of 2^-24
        // Exact scaling by 2^24, then the default rounding, to nearest even.
        p->bits = (unsigned short)(sign | (unsigned int)std::nearbyint(float_of(magnitude) * 16777216.0f));
    } else {  // drop 13 mantissa bits to nearest even, rebias 127 to 15
        const unsigned int rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
        p->bits = (unsigned short)(sign | ((rounded - 0x38000000u) >> 13));
    }
}

#endif

__device__ __forceinline__ float widen(float v) { return v; }

__device__ __forceinline__ void put(float* p, float v) { *p = v; }

#endif
