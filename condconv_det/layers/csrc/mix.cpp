// The inference kernel mix on the CPU, accumulated in float32, of experts stored in float32,
// bfloat16 or int8.
//
// out[b, p] = sum_e routing[b, e] * float(experts[e, p]). At small batches the mix is bound by
// reading the experts. For float32 experts, BLAS's (B, E) x (E, P) product reads them at 60-85%
// of the memory bandwidth on the machine measured (docs/performance.md); this kernel streams
// the E rows of a tile of columns at once, every thread on its own tiles, and reads at the
// bandwidth. Stored in bfloat16 the experts are half the bytes of float32 ones (int8, a quarter),
// but an eager mix must first write them out in float32 (condconv_det.layers._condconv_fast.
// mix_narrow), which costs more than the bytes it saves. Here each value is widened in a register
// as it is read (a bfloat16 is the top half of a float32: a 16-bit shift; an int8 converts
// exactly) and never stored wider. For int8 experts with one scale per expert, the scales are
// folded into the routing by the caller: routing[b, e] * scale[e].

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

namespace {

// Columns accumulated in registers over all the experts, then stored once: a float32 row buffer
// between widening and accumulating made the kernel bound by its stores, not by memory.
constexpr int64_t kLanes = 64;
// Columns per parallel task; for a batch, the experts' rows of a tile are read from memory for
// the first example and from cache for the others.
constexpr int64_t kTile = 4096;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// Compiled for AVX-512, AVX2 and plain x86-64; the loader picks the best the CPU has.
#define CONDCONV_TARGETS __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CONDCONV_TARGETS
#endif

inline float widen(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float result;
  std::memcpy(&result, &bits, sizeof(float));
  return result;
}

inline float widen(float value) { return value; }

// out[i] = sum_e r[e] * float(w[e * stride + i]) for i < len, bfloat16 or float32 experts.
// Inlined into each target's clone below, so that it is compiled for that target.
template <typename Stored>
__attribute__((always_inline)) inline void mix_tile_lanes(const float* r, const Stored* w,
                                                          int64_t num_experts, int64_t stride,
                                                          float* out, int64_t len) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    float acc[kLanes];
#pragma GCC unroll 64
    for (int64_t j = 0; j < kLanes; ++j) acc[j] = 0.f;
    for (int64_t e = 0; e < num_experts; ++e) {
      const float s = r[e];
      const Stored* row = w + e * stride + i;
#pragma GCC unroll 64
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += s * widen(row[j]);
    }
#pragma GCC unroll 64
    for (int64_t j = 0; j < kLanes; ++j) out[i + j] = acc[j];
  }
  for (; i < len; ++i) {
    float acc = 0.f;
    for (int64_t e = 0; e < num_experts; ++e) acc += r[e] * widen(w[e * stride + i]);
    out[i] = acc;
  }
}

CONDCONV_TARGETS
void mix_tile(const float* r, const uint16_t* w, int64_t num_experts, int64_t stride, float* out,
              int64_t len) {
  mix_tile_lanes(r, w, num_experts, stride, out, len);
}

CONDCONV_TARGETS
void mix_tile(const float* r, const float* w, int64_t num_experts, int64_t stride, float* out,
              int64_t len) {
  mix_tile_lanes(r, w, num_experts, stride, out, len);
}

// The same for int8 experts. Left to GCC's loop vectorizer (sign-extend, convert, multiply-add a
// vector at a time): fully unrolled as above, it converted the 64 values one by one.
CONDCONV_TARGETS
void mix_tile(const float* r, const int8_t* w, int64_t num_experts, int64_t stride, float* out,
              int64_t len) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    float acc[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) acc[j] = 0.f;
    for (int64_t e = 0; e < num_experts; ++e) {
      const float s = r[e];
      const int8_t* row = w + e * stride + i;
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += s * static_cast<float>(row[j]);
    }
    for (int64_t j = 0; j < kLanes; ++j) out[i + j] = acc[j];
  }
  for (; i < len; ++i) {
    float acc = 0.f;
    for (int64_t e = 0; e < num_experts; ++e) acc += r[e] * static_cast<float>(w[e * stride + i]);
    out[i] = acc;
  }
}

// Checks the arguments of the mix named `name`; returns the routing and the experts contiguous.
std::pair<torch::Tensor, torch::Tensor> checked(const char* name, const torch::Tensor& routing,
                                                const torch::Tensor& experts,
                                                torch::ScalarType dtype,
                                                const char* dtype_name) {
  TORCH_CHECK(routing.device().is_cpu() && experts.device().is_cpu(), name,
              ": CPU tensors only");
  TORCH_CHECK(routing.scalar_type() == torch::kFloat32, name, ": routing must be float32, got ",
              routing.scalar_type());
  TORCH_CHECK(experts.scalar_type() == dtype, name, ": experts must be ", dtype_name,
              ", got ", experts.scalar_type());
  TORCH_CHECK(routing.dim() == 2 && experts.dim() == 2 && routing.size(1) == experts.size(0),
              name, ": expected routing (B, E) and experts (E, P), got ", routing.sizes(), " and ",
              experts.sizes());
  return {routing.contiguous(), experts.contiguous()};
}

template <typename Narrow>
torch::Tensor mix(const torch::Tensor& r, const torch::Tensor& w, const Narrow* wp) {
  const int64_t batch = r.size(0), num_experts = r.size(1), numel = w.size(1);
  // Every element is stored once by mix_tile: no zero fill first, which would write the whole
  // kernel once more.
  auto out = torch::empty({batch, numel}, r.options());
  if (numel == 0 || batch == 0) return out;
  if (num_experts == 0) return out.zero_();
  const float* rp = r.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t tiles = (numel + kTile - 1) / kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t start = t * kTile;
      const int64_t len = std::min(kTile, numel - start);
      for (int64_t b = 0; b < batch; ++b) {
        mix_tile(rp + b * num_experts, wp + start, num_experts, numel, op + b * numel + start,
                 len);
      }
    }
  });
  return out;
}

}  // namespace

torch::Tensor mix_f32(const torch::Tensor& routing, const torch::Tensor& experts) {
  const auto [r, w] = checked("mix_f32", routing, experts, torch::kFloat32, "float32");
  return mix(r, w, w.data_ptr<float>());
}

torch::Tensor mix_bf16(const torch::Tensor& routing, const torch::Tensor& experts) {
  const auto [r, w] = checked("mix_bf16", routing, experts, torch::kBFloat16, "bfloat16");
  return mix(r, w, reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()));
}

torch::Tensor mix_int8(const torch::Tensor& routing, const torch::Tensor& experts) {
  const auto [r, w] = checked("mix_int8", routing, experts, torch::kInt8, "int8");
  return mix(r, w, w.data_ptr<int8_t>());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // The mixes release the GIL, as PyTorch's own operators do: other Python threads run while
  // they read the experts.
  using release_gil = py::call_guard<py::gil_scoped_release>;
  m.def("mix_f32", &mix_f32, release_gil(),
        "routing (B, E) float32 @ experts (E, P) float32 -> (B, P) float32");
  m.def("mix_bf16", &mix_bf16, release_gil(),
        "routing (B, E) float32 @ experts (E, P) bfloat16 -> (B, P) float32, widened as read");
  m.def("mix_int8", &mix_int8, release_gil(),
        "routing (B, E) float32 (scales folded in) @ experts (E, P) int8 -> (B, P) float32, "
        "widened as read");
}
