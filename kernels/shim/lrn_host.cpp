// Runs kernels/lrn.cu on the CPU: defines the little of CUDA those kernels
// use, includes the kernel source unchanged, and loops over the grid.
//
// usage: lrn_host BATCH CHANNELS PLANE SIZE ALPHA BETA K
//   stdin:  x then dy, BATCH*CHANNELS*PLANE little-endian f32 each
//   stdout: y, scale, then dx, the same size each
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
};
static dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __restrict__ __restrict

#include "../lrn.cu"

// An odd grid and block, so the grid-stride loops wrap and no index is
// covered twice or skipped.
template <class Kernel>
static void launch(Kernel kernel)
{
    gridDim = {3, 1, 1};
    blockDim = {37, 1, 1};
    for (unsigned int b = 0; b < gridDim.x; ++b)
        for (unsigned int t = 0; t < blockDim.x; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            kernel();
        }
}

static bool read_all(std::vector<float>& v)
{
    return std::fread(v.data(), sizeof(float), v.size(), stdin) == v.size();
}

static bool write_all(const std::vector<float>& v)
{
    return std::fwrite(v.data(), sizeof(float), v.size(), stdout) == v.size();
}

int main(int argc, char** argv)
{
    if (argc != 8) {
        std::fprintf(stderr, "usage: %s BATCH CHANNELS PLANE SIZE ALPHA BETA K\n", argv[0]);
        return 2;
    }
    const unsigned int batch = std::atoi(argv[1]), channels = std::atoi(argv[2]),
                       plane = std::atoi(argv[3]), size = std::atoi(argv[4]);
    const float alpha = std::atof(argv[5]), beta = std::atof(argv[6]), k = std::atof(argv[7]);
    const size_t total = (size_t)batch * channels * plane;
    std::vector<float> x(total), dy(total), y(total), scale(total), dx(total);
    if (!read_all(x) || !read_all(dy)) {
        std::fprintf(stderr, "lrn_host: expected %zu floats of x and of dy on stdin\n", total);
        return 1;
    }
    launch([&] {
        lrn_forward_f32(x.data(), y.data(), scale.data(), batch, channels, plane, size, alpha,
                        beta, k);
    });
    launch([&] {
        lrn_backward_f32(x.data(), y.data(), scale.data(), dy.data(), dx.data(), batch,
                         channels, plane, size, alpha, beta);
    });
    return write_all(y) && write_all(scale) && write_all(dx) ? 0 : 1;
}
