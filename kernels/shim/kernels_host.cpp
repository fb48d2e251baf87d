// Runs the kernels of kernels/*.cu on the CPU: defines the little of CUDA
// those kernels use, includes the kernel sources unchanged (and with them
// storage.cuh's conversions, written out for C++), and loops over the grid,
// calling each kernel's entry point (`_f32`, `_bf16`, `_f16`), as a
// launcher does; a kernel that synchronises its block runs each block's
// threads as threads of its own, `__syncthreads` a barrier between them,
// `__shared__` arrays shared by them. Data cross the pipe as little-endian f32, rounded to the
// storage on the way in and widened on the way out. STORAGE is f32, bf16 or
// f16.
//
// usage: kernels_host lrn STORAGE BATCH CHANNELS PLANE CHANNEL_STRIDE SIZE ALPHA BETA K
//   stdin:  x then dy, BATCH*CHANNELS*PLANE each; stdout: y, scale, then dx
// usage: kernels_host pool STORAGE PLANES IN_H IN_W SIZE STRIDE OUT_H OUT_W INTERLEAVED
//   stdin:  x (PLANES*IN_H*IN_W*INTERLEAVED), then dy (PLANES*OUT_H*OUT_W*INTERLEAVED)
//   stdout: y, then dx
// usage: kernels_host input STORAGE IMAGES PLANE CHANNELS_LAST
//   stdin:  the u8 pixels as f32 (IMAGES*PLANE*3, HWC), then IMAGES*3 offsets
//   stdout: the net's input, IMAGES*3*PLANE
// usage: kernels_host channels_last STORAGE IMAGES CHANNELS PLANE
//   stdin:  f32 images, CHW; stdout: them as stored, HWC
// usage: kernels_host dropout STORAGE N P KEY0 KEY1 RUN GROUPS FIRST CHANNELS PLANE
//   stdin:  x (N); stdout: x with the mask applied
// usage: kernels_host bias_grad STORAGE ROWS BATCH CHANNELS PLANE PER_CHUNK CHUNKS
//   stdin:  dy (BATCH*CHANNELS*PLANE, or BATCH rows of CHANNELS where ROWS is 1)
//   stdout: dbias (CHANNELS), from the two passes
// usage: kernels_host loss STORAGE BATCH TOWERS PER_TOWER TOWER GRAD_SCALE
//   stdin:  logits (TOWERS*BATCH*PER_TOWER), then BATCH labels as f32
//   stdout: dlogits (BATCH*PER_TOWER), the per-image statistics (3*BATCH),
//           then their sums (3), the statistics narrowed to f32
// usage: kernels_host pointwise STORAGE N
//   stdin:  x, then dy (N each)
//   stdout: relu(x), relu's dx from its y and dy, tanh(x), tanh's dx from
//           its y and dy, x + dy, then the non-finite flag of x (1 value)
// usage: kernels_host sgd STORAGE N LR MOMENTUM WEIGHT_DECAY
//   stdin:  w, g, v (N each); stdout: w, v after the step, then (16-bit
//           storages only) the weights' copy
// usage: kernels_host bias_fill STORAGE N CHANNELS PLANE
//   stdin:  bias (CHANNELS); stdout: y (N)
// usage: kernels_host convert STORAGE (bf16 or f16) N
//   stdin:  x (N); stdout: x narrowed to the storage and widened back
// usage: kernels_host round STORAGE (bf16 or f16)
//   stdin:  f32 values; stdout: each one's 16 storage bits (little-endian
//   u16), then every one of the 65536 bit patterns widened to f32

#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 {
    unsigned int x, y, z;
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
// One block runs at a time, so a function's static array is its block's.
#define __shared__ static

// The barrier of the block running now (launch_blocks).
static std::barrier<>* block_barrier;
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }

using std::isfinite;
static inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
static inline double __longlong_as_double(long long i)
{
    double d;
    std::memcpy(&d, &i, sizeof d);
    return d;
}

static inline float __int_as_float(int i)
{
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
// Compiled with -ffp-contract=off, so these round as the GPU's do.
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fsub_rn(float a, float b) { return a - b; }

#include "../lrn.cu"
#include "../pool.cu"
#include "../input.cu"
#include "../elementwise.cu"
#include "../reduce.cu"

// A grid of `grid` blocks of `block` threads, one thread after another:
// for kernels that never synchronise their block.
template <class Kernel>
static void launch_grid(unsigned int grid, unsigned int block, Kernel kernel)
{
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned int b = 0; b < grid; ++b)
        for (unsigned int t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            kernel();
        }
}

// An odd grid and block, so the grid-stride loops wrap and no index is
// covered twice or skipped.
template <class Kernel>
static void launch(Kernel kernel)
{
    launch_grid(3, 37, kernel);
}

// A grid of `grid` blocks of `block` threads each (y the grid's second
// dimension), each block's threads run at once, as a GPU runs them, so that
// __syncthreads waits for all of them.
template <class Kernel>
static void launch_blocks(dim3 grid, unsigned int block, Kernel kernel)
{
    gridDim = grid;
    blockDim = {block, 1, 1};
    for (unsigned int by = 0; by < grid.y; ++by)
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
            std::barrier<> barrier((std::ptrdiff_t)block);
            block_barrier = &barrier;
            std::vector<std::thread> threads;
            for (unsigned int t = 0; t < block; ++t)
                threads.emplace_back([=] {
                    blockIdx = {bx, by, 0};
                    threadIdx = {t, 0, 0};
                    kernel();
                });
            for (auto& thread : threads) thread.join();
        }
}

// Calls kernel `name`'s entry point at storage T (`name`_f32, _bf16 or
// _f16: the function a launcher launches) with the template's arguments,
// which every entry point passes on in the same order.
#define ENTRY(T, name, ...)                                                    \
    do {                                                                       \
        if constexpr (std::is_same_v<T, float>) name##_f32(__VA_ARGS__);       \
        else if constexpr (std::is_same_v<T, bf16>) name##_bf16(__VA_ARGS__);  \
        else name##_f16(__VA_ARGS__);                                          \
    } while (0)

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

static int unknown_storage(const char* storage)
{
    std::fprintf(stderr, "kernels_host: storage %s is not f32, bf16 or f16\n", storage);
    return 2;
}

static unsigned int arg(char** argv, int i) { return (unsigned int)std::atoi(argv[i]); }
static unsigned long long arg64(char** argv, int i) { return std::strtoull(argv[i], nullptr, 10); }

// Fills each array with f32 from stdin, or says that stdin ended early.
static bool inputs(const char* what, std::vector<std::vector<float>>& arrays)
{
    for (auto& a : arrays)
        if (!read_all(a)) {
            std::fprintf(stderr, "kernels_host %s: stdin ended early\n", what);
            return false;
        }
    return true;
}

template <class T>
static int run_lrn(char** argv)
{
    const unsigned int batch = arg(argv, 3), channels = arg(argv, 4), plane = arg(argv, 5),
                       stride = arg(argv, 6), size = arg(argv, 7);
    const float alpha = (float)std::atof(argv[8]), beta = (float)std::atof(argv[9]),
                k = (float)std::atof(argv[10]);
    const size_t total = (size_t)batch * channels * plane;
    std::vector<std::vector<float>> in = {std::vector<float>(total), std::vector<float>(total)};
    if (!inputs("lrn", in)) return 1;
    const std::vector<T> x = stored<T>(in[0]), dy = stored<T>(in[1]);
    std::vector<T> y(total), scale(total), dx(total);
    launch([&] {
        ENTRY(T, lrn_forward, x.data(), y.data(), scale.data(), batch, channels, plane, stride, size,
                    alpha, beta, k);
    });
    launch([&] {
        ENTRY(T, lrn_backward, x.data(), y.data(), scale.data(), dy.data(), dx.data(), batch, channels,
                     plane, stride, size, alpha, beta);
    });
    return write_all(y) && write_all(scale) && write_all(dx) ? 0 : 1;
}

template <class T>
static int run_pool(char** argv)
{
    const unsigned long long planes = arg(argv, 3);
    const unsigned int in_h = arg(argv, 4), in_w = arg(argv, 5), size = arg(argv, 6),
                       stride = arg(argv, 7), out_h = arg(argv, 8), out_w = arg(argv, 9),
                       interleaved = arg(argv, 10);
    const size_t in_len = planes * in_h * in_w * interleaved;
    const size_t out_len = planes * out_h * out_w * interleaved;
    std::vector<std::vector<float>> in = {std::vector<float>(in_len), std::vector<float>(out_len)};
    if (!inputs("pool", in)) return 1;
    const std::vector<T> x = stored<T>(in[0]), dy = stored<T>(in[1]);
    std::vector<T> y(out_len), dx(in_len);
    launch([&] {
        ENTRY(T, maxpool_forward, x.data(), y.data(), planes, in_h, in_w, size, stride, out_h, out_w,
                        interleaved);
    });
    launch([&] {
        ENTRY(T, maxpool_backward, x.data(), y.data(), dy.data(), dx.data(), planes, in_h, in_w, size,
                         stride, out_h, out_w, interleaved);
    });
    return write_all(y) && write_all(dx) ? 0 : 1;
}

template <class T>
static int run_input(char** argv)
{
    const unsigned int images = arg(argv, 3), plane = arg(argv, 4), last = arg(argv, 5);
    const unsigned int n = images * 3 * plane;
    std::vector<std::vector<float>> in = {std::vector<float>(n), std::vector<float>(images * 3)};
    if (!inputs("input", in)) return 1;
    std::vector<unsigned char> pixels(n);
    for (size_t i = 0; i < n; ++i) pixels[i] = (unsigned char)in[0][i];
    std::vector<T> y(n);
    launch([&] { ENTRY(T, input_from_u8, pixels.data(), in[1].data(), y.data(), n, plane, last); });
    return write_all(y) ? 0 : 1;
}

template <class T>
static int run_channels_last(char** argv)
{
    const unsigned int images = arg(argv, 3), channels = arg(argv, 4), plane = arg(argv, 5);
    const unsigned int n = images * channels * plane;
    std::vector<std::vector<float>> in = {std::vector<float>(n)};
    if (!inputs("channels_last", in)) return 1;
    std::vector<T> y(n);
    launch([&] { ENTRY(T, images_to_channels_last, in[0].data(), y.data(), n, channels, plane); });
    return write_all(y) ? 0 : 1;
}

template <class T>
static int run_dropout(char** argv)
{
    const unsigned long long n = arg64(argv, 3), key0 = arg64(argv, 5), key1 = arg64(argv, 6),
                             run = arg64(argv, 7), groups = arg64(argv, 8), first = arg64(argv, 9),
                             channels = arg64(argv, 10), plane = arg64(argv, 11);
    const float p = (float)std::atof(argv[4]);
    std::vector<std::vector<float>> in = {std::vector<float>(n)};
    if (!inputs("dropout", in)) return 1;
    const std::vector<T> x = stored<T>(in[0]);
    std::vector<T> y(n);
    launch([&] {
        ENTRY(T, dropout, x.data(), y.data(), n, p, key0, key1, run, groups, first, channels, plane);
    });
    return write_all(y) ? 0 : 1;
}

// The two passes as kernels/reduce.rs launches them, but over 3 blocks of
// channels (rows: 37 threads of them), so that the channel loops wrap.
template <class T>
static int run_bias_grad(char** argv)
{
    const unsigned int rows = arg(argv, 3), batch = arg(argv, 4), channels = arg(argv, 5),
                       plane = arg(argv, 6), per_chunk = arg(argv, 7), chunks = arg(argv, 8);
    const size_t n = (size_t)batch * channels * plane;
    std::vector<std::vector<float>> in = {std::vector<float>(n)};
    if (!inputs("bias_grad", in)) return 1;
    const std::vector<T> dy = stored<T>(in[0]);
    std::vector<float> partial((size_t)channels * chunks);
    if (rows)
        launch_grid(chunks, 37, [&] {
            ENTRY(T, bias_grad_rows_partial, dy.data(), partial.data(), batch, channels, per_chunk);
        });
    else
        launch_blocks({chunks, 3, 1}, BIAS_THREADS, [&] {
            ENTRY(T, bias_grad_partial, dy.data(), partial.data(), batch, channels, plane, per_chunk);
        });
    std::vector<T> dbias(channels);
    launch([&] { ENTRY(T, bias_grad_finish, partial.data(), dbias.data(), channels, chunks); });
    return write_all(dbias) ? 0 : 1;
}

static bool write_doubles(const std::vector<double>& v)
{
    std::vector<float> narrow(v.begin(), v.end());
    return std::fwrite(narrow.data(), sizeof(float), narrow.size(), stdout) == narrow.size();
}

template <class T>
static int run_loss(char** argv)
{
    const unsigned int batch = arg(argv, 3), towers = arg(argv, 4), per_tower = arg(argv, 5),
                       tower = arg(argv, 6);
    const float grad_scale = (float)std::atof(argv[7]);
    std::vector<std::vector<float>> in = {std::vector<float>((size_t)towers * batch * per_tower),
                                          std::vector<float>(batch)};
    if (!inputs("loss", in)) return 1;
    const std::vector<T> logits = stored<T>(in[0]);
    std::vector<unsigned int> labels(in[1].begin(), in[1].end());
    std::vector<T> dlogits((size_t)batch * per_tower);
    std::vector<double> per_image(3 * (size_t)batch), sums(3);
    launch_blocks({2, 1, 1}, LOSS_THREADS, [&] {
        ENTRY(T, softmax_cross_entropy, logits.data(), labels.data(), dlogits.data(), per_image.data(),
                              batch, towers, per_tower, tower, grad_scale);
    });
    launch_grid(1, 1, [&] { loss_stats_sum_f64(per_image.data(), batch, sums.data()); });
    return write_all(dlogits) && write_doubles(per_image) && write_doubles(sums) ? 0 : 1;
}

template <class T>
static int run_pointwise(char** argv)
{
    const unsigned long long n = arg64(argv, 3);
    std::vector<std::vector<float>> in = {std::vector<float>(n), std::vector<float>(n)};
    if (!inputs("pointwise", in)) return 1;
    const std::vector<T> x = stored<T>(in[0]), dy = stored<T>(in[1]);
    std::vector<T> relu_y(n), relu_dx(n), tanh_y(n), tanh_dx(n), sum(n);
    launch([&] { ENTRY(T, relu_forward, x.data(), relu_y.data(), n); });
    launch([&] { ENTRY(T, relu_backward, relu_y.data(), dy.data(), relu_dx.data(), n); });
    launch([&] { ENTRY(T, tanh_forward, x.data(), tanh_y.data(), n); });
    launch([&] { ENTRY(T, tanh_backward, tanh_y.data(), dy.data(), tanh_dx.data(), n); });
    launch([&] { ENTRY(T, add, sum.data(), x.data(), dy.data(), n); });
    unsigned int flag = 0;
    launch([&] { ENTRY(T, flag_nonfinite, x.data(), n, &flag); });
    const std::vector<float> flag_out = {(float)flag};
    return write_all(relu_y) && write_all(relu_dx) && write_all(tanh_y) && write_all(tanh_dx) &&
                   write_all(sum) && write_all(flag_out)
               ? 0
               : 1;
}

// The update through the entry point the launcher calls: sgd_update_f32,
// which has no copy, or the 16-bit storage's, which writes `copy`.
template <class T>
static void sgd_kernel(float* w, const T* g, float* v, T* copy, unsigned long long n, float lr,
                       float momentum, float weight_decay)
{
    if constexpr (std::is_same_v<T, float>) sgd_update_f32(w, g, v, n, lr, momentum, weight_decay);
    else if constexpr (std::is_same_v<T, bf16>)
        sgd_update_bf16(w, g, v, copy, n, lr, momentum, weight_decay);
    else sgd_update_f16(w, g, v, copy, n, lr, momentum, weight_decay);
}

template <class T>
static int run_sgd(char** argv)
{
    const unsigned long long n = arg64(argv, 3);
    const float lr = (float)std::atof(argv[4]), momentum = (float)std::atof(argv[5]),
                weight_decay = (float)std::atof(argv[6]);
    std::vector<std::vector<float>> in = {std::vector<float>(n), std::vector<float>(n),
                                          std::vector<float>(n)};
    if (!inputs("sgd", in)) return 1;
    std::vector<float>&w = in[0], &v = in[2];
    const std::vector<T> g = stored<T>(in[1]);
    std::vector<T> copy(sizeof(T) == 2 ? n : 0);
    launch([&] { sgd_kernel(w.data(), g.data(), v.data(), copy.data(), n, lr, momentum, weight_decay); });
    return write_all(w) && write_all(v) && write_all(copy) ? 0 : 1;
}

template <class T>
static int run_bias_fill(char** argv)
{
    const unsigned long long n = arg64(argv, 3);
    const unsigned int channels = arg(argv, 4), plane = arg(argv, 5);
    std::vector<std::vector<float>> in = {std::vector<float>(channels)};
    if (!inputs("bias_fill", in)) return 1;
    const std::vector<T> bias = stored<T>(in[0]);
    std::vector<T> y(n);
    launch([&] { ENTRY(T, bias_fill, y.data(), bias.data(), n, channels, plane); });
    return write_all(y) ? 0 : 1;
}

template <class T>
static void narrow_kernel(const float* src, T* dst, unsigned long long n)
{
    if constexpr (std::is_same_v<T, bf16>) narrow_bf16(src, dst, n);
    else narrow_f16(src, dst, n);
}

template <class T>
static void widen_kernel(const T* src, float* dst, unsigned long long n)
{
    if constexpr (std::is_same_v<T, bf16>) widen_bf16(src, dst, n);
    else widen_f16(src, dst, n);
}

template <class T>
static int run_convert(char** argv)
{
    if constexpr (sizeof(T) != 2) {
        return unknown_storage(argv[2]);
    } else {
        const unsigned long long n = arg64(argv, 3);
        std::vector<std::vector<float>> in = {std::vector<float>(n)};
        if (!inputs("convert", in)) return 1;
        std::vector<T> narrow(n);
        std::vector<float> wide(n);
        launch([&] { narrow_kernel(in[0].data(), narrow.data(), n); });
        launch([&] { widen_kernel(narrow.data(), wide.data(), n); });
        return std::fwrite(wide.data(), sizeof(float), n, stdout) == n ? 0 : 1;
    }
}

template <class T>
static int round_16_bit()
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

template <class T>
static int run_round(char** argv)
{
    if constexpr (sizeof(T) != 2) {
        return unknown_storage(argv[2]);
    } else {
        return round_16_bit<T>();
    }
}

// Runs `Op<float>`, `Op<bf16>` or `Op<f16>` as argv[2] names the storage.
#define BY_STORAGE(op)                                                         \
    (std::strcmp(argv[2], "f32") == 0    ? op<float>(argv)                     \
     : std::strcmp(argv[2], "bf16") == 0 ? op<bf16>(argv)                      \
     : std::strcmp(argv[2], "f16") == 0  ? op<f16>(argv)                       \
                                         : unknown_storage(argv[2]))

int main(int argc, char** argv)
{
    const char* op = argc > 1 ? argv[1] : "";
    if (std::strcmp(op, "lrn") == 0 && argc == 11) return BY_STORAGE(run_lrn);
    if (std::strcmp(op, "pool") == 0 && argc == 11) return BY_STORAGE(run_pool);
    if (std::strcmp(op, "input") == 0 && argc == 6) return BY_STORAGE(run_input);
    if (std::strcmp(op, "channels_last") == 0 && argc == 6) return BY_STORAGE(run_channels_last);
    if (std::strcmp(op, "dropout") == 0 && argc == 12) return BY_STORAGE(run_dropout);
    if (std::strcmp(op, "bias_grad") == 0 && argc == 9) return BY_STORAGE(run_bias_grad);
    if (std::strcmp(op, "loss") == 0 && argc == 8) return BY_STORAGE(run_loss);
    if (std::strcmp(op, "pointwise") == 0 && argc == 4) return BY_STORAGE(run_pointwise);
    if (std::strcmp(op, "sgd") == 0 && argc == 7) return BY_STORAGE(run_sgd);
    if (std::strcmp(op, "bias_fill") == 0 && argc == 6) return BY_STORAGE(run_bias_fill);
    if (std::strcmp(op, "convert") == 0 && argc == 4) return BY_STORAGE(run_convert);
    if (std::strcmp(op, "round") == 0 && argc == 3) return BY_STORAGE(run_round);
    std::fprintf(stderr, "kernels_host: bad arguments; the usage is at the top of "
                         "kernels/shim/kernels_host.cpp\n");
    return 2;
}
