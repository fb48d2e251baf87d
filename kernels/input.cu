// The net's input from u8 crops (paper §2 and §4.1): each image's HWC bytes
// become CHW floats scaled to [0, 1] plus the image's per-channel offset (its
// PCA lighting shift minus the channel's mean), as src/data/input.rs
// u8_to_f32 computes it: a rounded multiply, then a rounded add (no fused
// multiply-add), so the GPU's input equals the CPU's bit for bit; at 16-bit
// storage (storage.cuh) that f32 value is rounded once, as it is stored.

#include "storage.cuh"

// y[img][c][p] = pixels[img][p][c] * (1/255) + offsets[img][c], over the
// n = images * 3 * plane outputs; one output per step of a grid-stride loop,
// writes coalesced.
template <class T>
__device__ __forceinline__ void input_from_u8(
    const unsigned char* pixels, const float* offsets, T* y, unsigned int n,
    unsigned int plane)
{
    // 64-bit steps so that i + stride cannot wrap; every index fits 32 bits.
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < n; j += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int i = (unsigned int)j;
        const unsigned int ic = i / plane;  // img * 3 + c
        const unsigned int p = i - ic * plane;
        const unsigned int img = ic / 3;
        const unsigned int c = ic - img * 3;
        const float v = (float)pixels[(img * plane + p) * 3 + c];
        put(&y[i], __fadd_rn(__fmul_rn(v, 1.0f / 255.0f), offsets[ic]));
    }
}

#define INPUT_ARGS const unsigned char* pixels, const float* offsets
extern "C" __global__ void input_from_u8_f32(INPUT_ARGS, float* y, unsigned int n, unsigned int plane)
{
    input_from_u8(pixels, offsets, y, n, plane);
}
extern "C" __global__ void input_from_u8_bf16(INPUT_ARGS, bf16* y, unsigned int n, unsigned int plane)
{
    input_from_u8(pixels, offsets, y, n, plane);
}
extern "C" __global__ void input_from_u8_f16(INPUT_ARGS, f16* y, unsigned int n, unsigned int plane)
{
    input_from_u8(pixels, offsets, y, n, plane);
}
