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
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <vector>
#include <optional>
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
  // A negative view (torch._neg_view) keeps its sign in a flag that the data does not carry.
  return {routing.resolve_neg().contiguous(), experts.resolve_neg().contiguous()};
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

namespace {

// A float32 CPU tensor that this file may read through its data pointer: strided, no negative
// view, and nothing that works through the dispatcher (tensor subclasses, functorch wrappers,
// sparse or meta tensors, an active dispatch mode: at::isTensorSubclassLike).
bool plain_float32(const torch::Tensor& t) {
  return t.device().is_cpu() && t.layout() == at::kStrided &&
         t.scalar_type() == torch::kFloat32 && !t.is_neg() && !at::isTensorSubclassLike(t);
}

// Whether an operator called from here would be seen by something that watches the
// dispatcher or the Python API: a trace, autocast, a torch function mode or a functorch
// transform. The mix would then bypass it, so the caller takes the general way.
bool watched() {
  return torch::jit::tracer::isTracing() || at::autocast::is_autocast_enabled(at::kCPU) ||
         at::impl::torch_function_mode_enabled() ||
         c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

}  // namespace

// The CondConv of a batch of one for inference, float32 on the CPU: the native mix of the
// kernel, one product for the bias, one convolution. The same operators, in the same order,
// as condconv_det.layers.cond_conv2d computes on its "single" path, so the same result bit for
// bit; one call from Python rather than a dozen, which at batch 1 is a MobileNet layer's time
// (docs/performance.md). Returns None wherever that is not what the layer would compute or
// the arguments are not as expected (a batch of another size, another dtype or device, a
// backward to follow, a trace, autocast, ...): the caller then takes the general way, which
// checks the arguments and names what is wrong. Python-level state (torch.compile,
// torch.export, forward-mode AD) is the caller's to test.
std::optional<torch::Tensor> single_conv2d_f32(const torch::Tensor& x, const torch::Tensor& routing,
                                               const torch::Tensor& weight,
                                               const std::optional<torch::Tensor>& bias,
                                               std::array<int64_t, 2> stride,
                                               std::array<int64_t, 2> padding,
                                               std::array<int64_t, 2> dilation, int64_t groups) {
  if (watched()) return std::nullopt;
  if (x.dim() != 4 || routing.dim() != 2 || weight.dim() != 5) return std::nullopt;
  if (!plain_float32(x) || !plain_float32(routing) || !plain_float32(weight)) return std::nullopt;
  if (bias && !plain_float32(*bias)) return std::nullopt;
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || routing.requires_grad() || weight.requires_grad() ||
       (bias && bias->requires_grad()))) {
    return std::nullopt;
  }
  const int64_t experts = weight.size(0), out_channels = weight.size(1);
  const int64_t group_channels = weight.size(2);
  if (x.size(0) != 1 || routing.size(0) != 1 || routing.size(1) != experts || groups < 1 ||
      x.size(1) != group_channels * groups || out_channels % groups != 0) {
    return std::nullopt;
  }
  if (bias && (bias->dim() != 2 || bias->size(0) != experts || bias->size(1) != out_channels)) {
    return std::nullopt;
  }
  for (int i = 0; i < 2; ++i) {
    if (stride[i] < 1 || dilation[i] < 1 || padding[i] < 0) return std::nullopt;
    // The layer's smallest input: the kernel fits once padded, and at least a pixel.
    const int64_t extent = dilation[i] * (weight.size(3 + i) - 1) + 1;
    if (x.size(2 + i) < std::max<int64_t>(extent - 2 * padding[i], 1)) return std::nullopt;
  }
  const torch::Tensor r = routing.contiguous();
  const torch::Tensor w = weight.contiguous().view({experts, -1});
  const torch::Tensor kernel = mix(r, w, w.data_ptr<float>()).view(weight.sizes().slice(1));
  std::optional<torch::Tensor> mixed_bias;
  if (bias) mixed_bias = at::mm(r, *bias).view({out_channels});
  return at::conv2d(x, kernel, mixed_bias, stride, padding, dilation, groups);
}

namespace {

// out[o] = bias[o] + sum_i weight[o, i] * in[i], accumulated in double.
void affine(const float* weight, const float* bias, const float* in, int64_t in_size,
            int64_t out_size, float* out) {
  for (int64_t o = 0; o < out_size; ++o) {
    double acc = bias ? bias[o] : 0.0;
    const float* row = weight + o * in_size;
    for (int64_t i = 0; i < in_size; ++i) acc += static_cast<double>(row[i]) * in[i];
    out[o] = static_cast<float>(acc);
  }
}

// The sum of n floats: 16 float accumulators side by side (one chain of dependent additions
// would take a cycle count of n times an addition's latency), each emptied into the double
// total every 64 additions, so that no float sum grows long.
double plane_sum(const float* values, int64_t n) {
  constexpr int64_t kSumLanes = 16, kBlock = 64 * kSumLanes;
  double total = 0.0;
  int64_t i = 0;
  while (i + kSumLanes <= n) {
    float lanes[kSumLanes] = {};
    const int64_t end = std::min(n, i + kBlock);
    for (; i + kSumLanes <= end; i += kSumLanes) {
#pragma GCC unroll 16
      for (int64_t j = 0; j < kSumLanes; ++j) lanes[j] += values[i + j];
    }
    for (int64_t j = 0; j < kSumLanes; ++j) total += lanes[j];
  }
  for (; i < n; ++i) total += values[i];
  return total;
}

// The most input values a router's native call pools: beyond, PyTorch's pool (vectorised and
// threaded) is faster than this plain loop (measured: 1 x 256 x 32 x 32 is the break-even on a
// 2-core x86; a 14x14 map of 112 channels takes half the operators' time).
constexpr int64_t kRouteMaxValues = 1 << 18;

// A float32 (O, I) matrix and an (O,) vector or none, contiguous, for affine().
bool fits_affine(const torch::Tensor& weight, const std::optional<torch::Tensor>& bias,
                 int64_t in_size) {
  if (!plain_float32(weight) || !weight.is_contiguous() || weight.dim() != 2 ||
      weight.size(1) != in_size) {
    return false;
  }
  return !bias || (plain_float32(*bias) && bias->is_contiguous() && bias->dim() == 1 &&
                   bias->size(0) == weight.size(0));
}

}  // namespace

// The routing of a CondConvRouter for inference, float32 on the CPU, in one call:
// global average pool, an optional hidden layer with its ReLU, the output layer, the
// temperature, and sigmoid or softmax. Each example's few hundred numbers are computed in
// double (the pool's sums in float32 lanes) and rounded once, in a plain loop that starts no
// thread and allocates no tensor but the output: inside a network a router's three operators
// took 40-70 microseconds, their arithmetic a few. Not bit for bit what the operators give
// (their sums round in another order): within float32 rounding of it. Returns None wherever it
// does not apply (an input larger than kRouteMaxValues, a backward to follow, another dtype, a
// layout other than NCHW or NHWC, a trace, autocast, ...).
std::optional<torch::Tensor> route_f32(const torch::Tensor& x,
                                       const std::optional<torch::Tensor>& hidden_weight,
                                       const std::optional<torch::Tensor>& hidden_bias,
                                       const torch::Tensor& weight,
                                       const std::optional<torch::Tensor>& bias, bool softmax,
                                       double temperature) {
  if (watched() || !(temperature > 0)) return std::nullopt;
  if (x.dim() != 4 || !plain_float32(x)) return std::nullopt;
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  if (batch < 1 || pixels < 1 || batch * channels * pixels > kRouteMaxValues) {
    return std::nullopt;
  }
  int64_t features = channels;
  if (hidden_weight) {
    if (!fits_affine(*hidden_weight, hidden_bias, channels)) return std::nullopt;
    features = hidden_weight->size(0);
  } else if (hidden_bias) {
    return std::nullopt;
  }
  if (!fits_affine(weight, bias, features) || weight.size(0) == 0) return std::nullopt;
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias && bias->requires_grad()) ||
       (hidden_weight && hidden_weight->requires_grad()) ||
       (hidden_bias && hidden_bias->requires_grad()))) {
    return std::nullopt;
  }
  const bool nchw = x.is_contiguous();
  if (!nchw && !x.is_contiguous(at::MemoryFormat::ChannelsLast)) return std::nullopt;
  const int64_t experts = weight.size(0);
  auto out = torch::empty({batch, experts}, x.options());
  const float* xp = x.data_ptr<float>();
  std::vector<double> sums(channels);
  std::vector<float> pooled(channels), hidden(features);
  for (int64_t b = 0; b < batch; ++b) {
    const float* image = xp + b * channels * pixels;
    std::fill(sums.begin(), sums.end(), 0.0);
    if (nchw) {
      for (int64_t c = 0; c < channels; ++c) sums[c] = plane_sum(image + c * pixels, pixels);
    } else {
      for (int64_t i = 0; i < pixels; ++i) {
        const float* pixel = image + i * channels;
        for (int64_t c = 0; c < channels; ++c) sums[c] += pixel[c];
      }
    }
    for (int64_t c = 0; c < channels; ++c) pooled[c] = static_cast<float>(sums[c] / pixels);
    const float* in = pooled.data();
    if (hidden_weight) {
      const float* hb = hidden_bias ? hidden_bias->data_ptr<float>() : nullptr;
      affine(hidden_weight->data_ptr<float>(), hb, pooled.data(), channels, features,
             hidden.data());
      for (float& h : hidden) h = std::max(h, 0.f);
      in = hidden.data();
    }
    float* logits = out.data_ptr<float>() + b * experts;
    affine(weight.data_ptr<float>(), bias ? bias->data_ptr<float>() : nullptr, in, features,
           experts, logits);
    if (temperature != 1.0) {
      for (int64_t e = 0; e < experts; ++e) logits[e] = static_cast<float>(logits[e] / temperature);
    }
    if (softmax) {
      const float top = *std::max_element(logits, logits + experts);
      double total = 0.0;
      for (int64_t e = 0; e < experts; ++e) total += std::exp(static_cast<double>(logits[e]) - top);
      for (int64_t e = 0; e < experts; ++e) {
        logits[e] = static_cast<float>(std::exp(static_cast<double>(logits[e]) - top) / total);
      }
    } else {
      for (int64_t e = 0; e < experts; ++e) {
        logits[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(logits[e]))));
      }
    }
  }
  return out;
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
  m.def("single_conv2d_f32", &single_conv2d_f32, release_gil(),
        "CondConv of a batch of one for inference (float32, CPU), or None where it does not "
        "apply: x, routing (1, E), weight (E, O, C/g, kh, kw), bias (E, O) or None, stride, "
        "padding, dilation, groups");
  m.def("route_f32", &route_f32, release_gil(),
        "CondConvRouter's routing for inference (float32, CPU), or None where it does not "
        "apply: x, hidden weight and bias or None, weight, bias or None, softmax, temperature");
}
