// The net's input from u8 crops (paper §2 and §4.1): each image's HWC bytes
// become floats (CHW, or HWC where the device stores channels last) scaled
// to [0, 1] plus the image's per-channel offset (its PCA lighting shift
// minus the channel's mean), as src/data/input.rs
// u8_to_f32 computes it: a rounded multiply, then a rounded add (no fused
// multiply-add), so the GPU's input equals the CPU's bit for bit; at 16-bit
// storage (storage.cuh) that f32 value is rounded once, as it is stored.

#include "storage.cuh"

// The net's input, over the n = images * 3 * plane outputs: channels first,
// y[img][c][p] = pixels[img][p][c] * (1/255) + offsets[img][c], or with
// `channels_last` set, y[img][p][c], the pixels' own order. One output per
// step of a grid-stride loop, writes coalesced.
template <class T>
__device__ __forceinline__ void input_from_u8(
    const unsigned char* pixels, const float* offsets, T* y, unsigned int n,
    unsigned int plane, unsigned int channels_last)
{
    // 64-bit steps so that i + stride cannot wrap; every index fits 32 bits.
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < n; j += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int i = (unsigned int)j;
        unsigned int img, c, p;
        if (channels_last) {
            const unsigned int pixel = i / 3;  // img * plane + p
            c = i - pixel * 3;
            img = pixel / plane;
            p = pixel - img * plane;
        } else {
            const unsigned int ic = i / plane;  // img * 3 + c
            p = i - ic * plane;
            img = ic / 3;
            c = ic - img * 3;
        }
        const float v = (float)pixels[(img * plane + p) * 3 + c];
        put(&y[i], __fadd_rn(__fmul_rn(v, 1.0f / 255.0f), offsets[img * 3 + c]));
    }
}

// f32 images, channels first, stored channels last:
// y[img][p][c] = images[img][c][p], rounded as stored; n = images * channels * plane.
template <class T>
__device__ __forceinline__ void images_to_channels_last(
    const float* images, T* y, unsigned int n, unsigned int channels, unsigned int plane)
{
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < n; j += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int i = (unsigned int)j;
        const unsigned int pixel = i / channels;  // img * plane + p
        const unsigned int c = i - pixel * channels;
        const unsigned int img = pixel / plane;
        const unsigned int p = pixel - img * plane;
        put(&y[i], images[(img * channels + c) * plane + p]);
    }
}

#define INPUT_ARGS const unsigned char* pixels, const float* offsets
#define INPUT_DIMS unsigned int n, unsigned int plane, unsigned int channels_last
extern "C" __global__ void input_from_u8_f32(INPUT_ARGS, float* y, INPUT_DIMS)
{
    input_from_u8(pixels, offsets, y, n, plane, channels_last);
}
extern "C" __global__ void input_from_u8_bf16(INPUT_ARGS, bf16* y, INPUT_DIMS)
{
    input_from_u8(pixels, offsets, y, n, plane, channels_last);
}
extern "C" __global__ void input_from_u8_f16(INPUT_ARGS, f16* y, INPUT_DIMS)
{
    input_from_u8(pixels, offsets, y, n, plane, channels_last);
}

#define TRANSPOSE_DIMS unsigned int n, unsigned int channels, unsigned int plane
extern "C" __global__ void images_to_channels_last_f32(const float* images, float* y, TRANSPOSE_DIMS)
{
    images_to_channels_last(images, y, n, channels, plane);
}
extern "C" __global__ void images_to_channels_last_bf16(const float* images, bf16* y, TRANSPOSE_DIMS)
{
    images_to_channels_last(images, y, n, channels, plane);
}
extern "C" __global__ void images_to_channels_last_f16(const float* images, f16* y, TRANSPOSE_DIMS)
{
    images_to_channels_last(images, y, n, channels, plane);
}
