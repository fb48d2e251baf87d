// Overlapping max-pooling (paper §3.4) over NCHW planes. The backward pass
// routes each output's gradient to the first input of its window (row-major)
// that equals the output, as the CPU device does, and sums in output order:
// one thread per input element, no atomics, deterministic.

extern "C" __global__ void maxpool_forward_f32(
    const float* __restrict__ x, float* __restrict__ y, unsigned long long planes,
    unsigned int in_h, unsigned int in_w, unsigned int size, unsigned int stride,
    unsigned int out_h, unsigned int out_w)
{
    const unsigned long long total = planes * out_h * out_w;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int ox = (unsigned int)(i % out_w);
        const unsigned int oy = (unsigned int)((i / out_w) % out_h);
        const float* plane = x + (i / ((unsigned long long)out_h * out_w)) * in_h * in_w;
        const unsigned int y0 = oy * stride, x0 = ox * stride;
        const unsigned int y1 = y0 + size < in_h ? y0 + size : in_h;
        const unsigned int x1 = x0 + size < in_w ? x0 + size : in_w;
        float best = -__int_as_float(0x7f800000);
        for (unsigned int iy = y0; iy < y1; ++iy)
            for (unsigned int ix = x0; ix < x1; ++ix)
                best = fmaxf(best, plane[iy * in_w + ix]);
        y[i] = best;
    }
}

extern "C" __global__ void maxpool_backward_f32(
    const float* __restrict__ x, const float* __restrict__ y,
    const float* __restrict__ dy, float* __restrict__ dx, unsigned long long planes,
    unsigned int in_h, unsigned int in_w, unsigned int size, unsigned int stride,
    unsigned int out_h, unsigned int out_w)
{
    const unsigned long long total = planes * in_h * in_w;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned int ix = (unsigned int)(i % in_w);
        const unsigned int iy = (unsigned int)((i / in_w) % in_h);
        const unsigned long long p = i / ((unsigned long long)in_h * in_w);
        const float* xp = x + p * in_h * in_w;
        const float* yp = y + p * out_h * out_w;
        const float* dyp = dy + p * out_h * out_w;
        // Outputs whose window [o*stride, o*stride + size) holds this input.
        const unsigned int oy0 = iy + 1 > size ? (iy + 1 - size + stride - 1) / stride : 0;
        const unsigned int ox0 = ix + 1 > size ? (ix + 1 - size + stride - 1) / stride : 0;
        const unsigned int oy1 = iy / stride + 1 < out_h ? iy / stride + 1 : out_h;
        const unsigned int ox1 = ix / stride + 1 < out_w ? ix / stride + 1 : out_w;
        float grad = 0.0f;
        for (unsigned int oy = oy0; oy < oy1; ++oy) {
            for (unsigned int ox = ox0; ox < ox1; ++ox) {
                const float best = yp[oy * out_w + ox];
                const unsigned int y0 = oy * stride, x0 = ox * stride;
                const unsigned int y1 = y0 + size < in_h ? y0 + size : in_h;
                const unsigned int x1 = x0 + size < in_w ? x0 + size : in_w;
                unsigned int first = 0xffffffffu;
                for (unsigned int wy = y0; wy < y1 && first == 0xffffffffu; ++wy)
                    for (unsigned int wx = x0; wx < x1; ++wx)
                        if (xp[wy * in_w + wx] == best) { first = wy * in_w + wx; break; }
                if (first == iy * in_w + ix) grad += dyp[oy * out_w + ox];
            }
        }
        dx[i] = grad;
    }
}
