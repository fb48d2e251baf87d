// Runs kernels/lrn.cu on the CPU: defines the little of CUDA those kernels
// use, includes the kernel source unchanged (and with it storage.cuh's
// conversions, written out for C++), and loops over the grid.
//
// usage: lrn_host STORAGE BATCH CHANNELS PLANE SIZE ALPHA BETA K
//   STORAGE: f32, bf16 or f16, the kernels' storage; data crosses the pipe
//   as f32, rounded to the storage on the way in and widened on the way out
//   stdin:  x then dy, BATCH*CHANNELS*PLANE little-endian f32 each
//   stdout: y, scale, then dx, the same size each
// usage: lrn_host round STORAGE
//   stdin:  f32 values; stdout: each one's 16 storage bits (little-endian
//   u16), then every one of the 65536 bit patterns widened to f32

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
};
static dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
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

template <class T>
static std::vector<T> stored(const std::vector<float>& v)
{
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) put(&out[i], v[i]);
    return out;
}

template <class T>
static bool write_all(const std::vector<T>& v)
{
    std::vector<float> wide(v.size());
    for (size_t i = 0; i < v.size(); ++i) wide[i] = widen(v[i]);
    return std::fwrite(wide.data(), sizeof(float), wide.size(), stdout) == wide.size();
}

struct Shape {
    unsigned int batch, channels, plane, size;
    float alpha, beta, k;
};

template <class T>
static int run_lrn(const Shape& s, const std::vector<float>& x32, const std::vector<float>& dy32)
{
    const std::vector<T> x = stored<T>(x32), dy = stored<T>(dy32);
    std::vector<T> y(x.size()), scale(x.size()), dx(x.size());
    launch([&] {
        lrn_forward(x.data(), y.data(), scale.data(), s.batch, s.channels, s.plane, s.size,
                    s.alpha, s.beta, s.k);
    });
    launch([&] {
        lrn_backward(x.data(), y.data(), scale.data(), dy.data(), dx.data(), s.batch,
                     s.channels, s.plane, s.size, s.alpha, s.beta);
    });
    return write_all(y) && write_all(scale) && write_all(dx) ? 0 : 1;
}

template <class T>
static int run_round()
{
    std::vector<float> values;
    float v;
    while (std::fread(&v, sizeof v, 1, stdin) == 1) values.push_back(v);
    std::vector<T> bits = stored<T>(values);
    bool ok = std::fwrite(bits.data(), sizeof(T), bits.size(), stdout) == bits.size();
    for (unsigned int b = 0; b < 65536u && ok; ++b) {
        const float wide = widen(T{(unsigned short)b});
        ok = std::fwrite(&wide, sizeof wide, 1, stdout) == 1;
    }
    return ok ? 0 : 1;
}

int main(int argc, char** argv)
{
    if (argc == 3 && std::strcmp(argv[1], "round") == 0) {
        if (std::strcmp(argv[2], "bf16") == 0) return run_round<bf16>();
        if (std::strcmp(argv[2], "f16") == 0) return run_round<f16>();
        std::fprintf(stderr, "lrn_host round: storage %s is not bf16 or f16\n", argv[2]);
        return 2;
    }
    if (argc != 9) {
        std::fprintf(stderr, "usage: %s STORAGE BATCH CHANNELS PLANE SIZE ALPHA BETA K\n"
                             "       %s round STORAGE\n", argv[0], argv[0]);
        return 2;
    }
    const Shape s = {(unsigned int)std::atoi(argv[2]), (unsigned int)std::atoi(argv[3]),
                     (unsigned int)std::atoi(argv[4]), (unsigned int)std::atoi(argv[5]),
                     (float)std::atof(argv[6]), (float)std::atof(argv[7]),
                     (float)std::atof(argv[8])};
    const size_t total = (size_t)s.batch * s.channels * s.plane;
    std::vector<float> x(total), dy(total);
    if (!read_all(x) || !read_all(dy)) {
        std::fprintf(stderr, "lrn_host: expected %zu floats of x and of dy on stdin\n", total);
        return 1;
    }
    if (std::strcmp(argv[1], "f32") == 0) return run_lrn<float>(s, x, dy);
    if (std::strcmp(argv[1], "bf16") == 0) return run_lrn<bf16>(s, x, dy);
    if (std::strcmp(argv[1], "f16") == 0) return run_lrn<f16>(s, x, dy);
    std::fprintf(stderr, "lrn_host: storage %s is not f32, bf16 or f16\n", argv[1]);
    return 2;
}
