// Local response normalization across channels (paper §3.3), forward and
// backward, one thread per element, NCHW:
//   scale = k + alpha * sum_{|j-c| <= size/2} x[j]^2,   y = x * scale^-beta
//   dx[c] = dy[c] * scale[c]^-beta
//           - 2 alpha beta x[c] * sum_{|j-c| <= size/2} dy[j] y[j] / scale[j]
// alpha multiplies the sum directly, as the paper writes it. The channel sums
// run in ascending order, as on the CPU device.
//
// These kernels use no shared memory, barriers, warp intrinsics or atomics:
// kernels/shim/lrn_host.cpp compiles this file as C++ and runs it on the CPU.

extern "C" __global__ void lrn_forward_f32(
    const float* __restrict__ x, float* __restrict__ y, float* __restrict__ scale,
    unsigned int batch, unsigned int channels, unsigned int plane,
    unsigned int size, float alpha, float beta, float k)
{
    const unsigned long long total = (unsigned long long)batch * channels * plane;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += step) {
        const unsigned int p = (unsigned int)(i % plane);
        const unsigned long long nc = i / plane;
        const unsigned int c = (unsigned int)(nc % channels);
        const float* image = x + (nc - c) * plane + p;
        const unsigned int half = size / 2;
        const unsigned int lo = c >= half ? c - half : 0;
        const unsigned int hi = c + half + 1 < channels ? c + half + 1 : channels;
        float sum = 0.0f;
        for (unsigned int j = lo; j < hi; ++j) {
            const float v = image[(unsigned long long)j * plane];
            sum += v * v;
        }
        const float s = k + alpha * sum;
        scale[i] = s;
        y[i] = x[i] * powf(s, -beta);
    }
}

extern "C" __global__ void lrn_backward_f32(
    const float* __restrict__ x, const float* __restrict__ y,
    const float* __restrict__ scale, const float* __restrict__ dy,
    float* __restrict__ dx,
    unsigned int batch, unsigned int channels, unsigned int plane,
    unsigned int size, float alpha, float beta)
{
    const unsigned long long total = (unsigned long long)batch * channels * plane;
    const unsigned long long step = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += step) {
        const unsigned int p = (unsigned int)(i % plane);
        const unsigned long long nc = i / plane;
        const unsigned int c = (unsigned int)(nc % channels);
        const unsigned long long base = (nc - c) * plane + p;
        const unsigned int half = size / 2;
        const unsigned int lo = c >= half ? c - half : 0;
        const unsigned int hi = c + half + 1 < channels ? c + half + 1 : channels;
        float ratios = 0.0f;
        for (unsigned int j = lo; j < hi; ++j) {
            const unsigned long long at = base + (unsigned long long)j * plane;
            ratios += dy[at] * y[at] / scale[at];
        }
        dx[i] = dy[i] * powf(scale[i], -beta) - 2.0f * alpha * beta * x[i] * ratios;
    }
}
