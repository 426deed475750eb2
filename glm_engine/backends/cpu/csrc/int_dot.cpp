// Integer dot-product linear layers for the CPU backend (docs/quantization.md#the-integer-dot-product-kernel).
//
// y[m, n] = sum over blocks b of 32 input columns: dw[n, b] * da[m, b] * sum_j qw[n, 32b + j] * qa[m, 32b + j]
// where qw/dw are the stored symmetric weight values and their fp16 scale (one per group of whole blocks) and
// qa/da are the activations quantized per row and block of 32: da = absmax / 127, qa = round(x / da).
//
// The products use vpdpbusd (unsigned bytes x signed bytes into int32), so the weights enter unsigned: INT4 as
// u = q + 8, two per byte, laid out per pair of blocks (64 columns in 32 bytes, byte j holding column j in its low
// and column j + 32 in its high nibble, so one load and one shift give both blocks; a row's final unpaired block
// is 16 bytes, byte j holding columns j and j + 16); INT8 as u = q + 128 (the stored byte with its sign bit flipped). The offset is removed exactly by starting each block's accumulator at -offset * (lane sums of
// qa), computed once per activation block. Without VNNI the same sums come from vpmaddubsw on 4-bit pieces
// (no saturation); without AVX2 a scalar loop computes them. Rows of the output are split over torch's threads
// (at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;  // input columns per activation scale and per weight block
constexpr int64_t kLanes = 8;   // int32 lanes of one block's accumulator (4 products each)
constexpr int64_t kRowTile = 4; // activation rows that share one pass over the weights

struct QuantizedRows {
  std::vector<int8_t> q;       // [M, blocks * 32]
  std::vector<float> scale;    // [M, blocks]
  std::vector<int32_t> start;  // [M, blocks, 8]: -offset * lane sums of q
};

QuantizedRows quantize_rows(const float* x, int64_t rows, int64_t columns, int64_t blocks, int32_t offset) {
  QuantizedRows out;
  out.q.assign(rows * blocks * kBlock, 0);
  out.scale.assign(rows * blocks, 0.0f);
  out.start.assign(rows * blocks * kLanes, 0);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t first = b * kBlock;
      const int64_t count = std::min(kBlock, columns - first);
      const float* src = x + m * columns + first;
      float absmax = 0.0f;
      for (int64_t j = 0; j < count; ++j) absmax = std::max(absmax, std::fabs(src[j]));
      const float d = absmax / 127.0f;
      out.scale[m * blocks + b] = d;
      if (d == 0.0f) continue;
      int8_t* dst = out.q.data() + (m * blocks + b) * kBlock;
      for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<int8_t>(std::nearbyint(src[j] / d));
      int32_t* lanes = out.start.data() + (m * blocks + b) * kLanes;
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        int32_t sum = 0;
        for (int64_t j = 4 * lane; j < 4 * lane + 4; ++j) sum += dst[j];
        lanes[lane] = -offset * sum;
      }
    }
  }
  return out;
}

// fp16 scales to fp32, eight at a time where the CPU converts them (F16C).
void halves_to_floats(const uint16_t* src, int64_t count, float* dst) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
#endif
  for (; i < count; ++i) {
    c10::Half h;
    h.x = src[i];
    dst[i] = static_cast<float>(h);
  }
}

#if defined(__AVX2__)
// The 32 unsigned weight values of block b of a row of ``blocks`` blocks (layout: see the top of this file).
template <int Bits>
inline __m256i load_block(const uint8_t* w, int64_t b, int64_t blocks) {
  if constexpr (Bits == 4) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    if ((b | 1) < blocks) {  // one of a pair: low (even b) or high (odd b) nibbles of the pair's 32 bytes
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (b & ~int64_t{1}) * 16));
      return _mm256_and_si256((b & 1) ? _mm256_srli_epi16(v, 4) : v, nibble);
    }
    // The final, unpaired block: its 16 bytes in both halves, the upper half shifted right by 4.
    const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + b * 16)));
    return _mm256_and_si256(_mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0)), nibble);
  } else {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * kBlock));
    return _mm256_xor_si256(raw, _mm256_set1_epi8(static_cast<char>(0x80)));
  }
}

// Blocks b (even) and b + 1 of a full pair: INT4 from one 32-byte load.
template <int Bits>
inline void load_pair(const uint8_t* w, int64_t b, __m256i& first, __m256i& second) {
  if constexpr (Bits == 4) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * 16));
    first = _mm256_and_si256(v, nibble);
    second = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
  } else {
    first = load_block<Bits>(w, b, b + 2);
    second = load_block<Bits>(w, b + 1, b + 2);
  }
}

// start + (per lane) sum of 4 products u * a, exactly.
template <int Bits>
inline __m256i dot_block(__m256i start, __m256i u, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(start, u, a);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(start, u, a);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (Bits == 4) {  // u <= 15: pairs of u * a fit int16
    return _mm256_add_epi32(start, _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones));
  } else {  // u = 16 hi + lo with hi, lo <= 15
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(u, nibble);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(u, 4), nibble);
    const __m256i lo32 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, a), ones);
    const __m256i hi32 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, a), ones);
    return _mm256_add_epi32(start, _mm256_add_epi32(lo32, _mm256_slli_epi32(hi32, 4)));
  }
#endif
}

inline float horizontal_sum(__m256 v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(quad, _mm_movehdup_ps(quad)));
}

// Rows [m0, m0 + tile) of the output for weight row n, whose scales are ``dw`` (one per group of
// ``blocks_per_group`` blocks). Blocks go in pairs into two accumulators per row (indices fixed at compile time, so
// they stay in registers) to hide the FMA latency.
template <int Bits, int Tile>
void row_tile(const uint8_t* w, const float* dw, int64_t blocks_per_group, const QuantizedRows& a, int64_t blocks,
              int64_t m0, float* out, int64_t n, int64_t out_features) {
  __m256 even[Tile], odd[Tile];
  const int8_t* q_rows[Tile];
  const int32_t* start_rows[Tile];
  const float* da_rows[Tile];
  for (int r = 0; r < Tile; ++r) {
    even[r] = odd[r] = _mm256_setzero_ps();
    q_rows[r] = a.q.data() + (m0 + r) * blocks * kBlock;
    start_rows[r] = a.start.data() + (m0 + r) * blocks * kLanes;
    da_rows[r] = a.scale.data() + (m0 + r) * blocks;
  }
  auto rows = [&](int64_t b, __m256i u, __m256 weight_scale, __m256* acc) {
    for (int r = 0; r < Tile; ++r) {
      const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start_rows[r] + b * kLanes));
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q_rows[r] + b * kBlock));
      const __m256 sums = _mm256_cvtepi32_ps(dot_block<Bits>(start, u, q));
      const __m256 factor = _mm256_mul_ps(weight_scale, _mm256_broadcast_ss(da_rows[r] + b));
      acc[r] = _mm256_fmadd_ps(sums, factor, acc[r]);
    }
  };
  auto pair = [&](int64_t b, __m256 first_scale, __m256 second_scale) {  // b even, b + 1 < blocks
    __m256i first, second;
    load_pair<Bits>(w, b, first, second);
    rows(b, first, first_scale, even);
    rows(b + 1, second, second_scale, odd);
  };
  if (blocks_per_group == 1) {  // a scale per block
    int64_t b = 0;
    for (; b + 2 <= blocks; b += 2) pair(b, _mm256_broadcast_ss(dw + b), _mm256_broadcast_ss(dw + b + 1));
    if (b < blocks) rows(b, load_block<Bits>(w, b, blocks), _mm256_broadcast_ss(dw + b), even);
  } else {  // pairs of blocks inside each group (groups of an odd number of blocks go block by block)
    for (int64_t first = 0, g = 0; first < blocks; first += blocks_per_group, ++g) {
      const __m256 weight_scale = _mm256_broadcast_ss(dw + g);
      const int64_t last = first + blocks_per_group;
      int64_t b = first;
      if (blocks_per_group % 2 == 0) {
        for (; b + 2 <= last; b += 2) pair(b, weight_scale, weight_scale);
      }
      for (; b < last; ++b) rows(b, load_block<Bits>(w, b, blocks), weight_scale, even);
    }
  }
  for (int r = 0; r < Tile; ++r) out[(m0 + r) * out_features + n] = horizontal_sum(_mm256_add_ps(even[r], odd[r]));
}
#endif

// Portable version of row_tile for one activation row.
template <int Bits>
void row_scalar(const uint8_t* w, const float* dw, int64_t blocks_per_group, const QuantizedRows& a, int64_t blocks,
                int64_t m, float* out, int64_t n, int64_t out_features) {
  float total = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t ab = m * blocks + b;
    const int8_t* q = a.q.data() + ab * kBlock;
    int32_t sum = 0;
    for (int64_t lane = 0; lane < kLanes; ++lane) sum += a.start[ab * kLanes + lane];
    for (int64_t j = 0; j < kBlock; ++j) {
      int32_t u;
      if constexpr (Bits == 4) {
        if ((b | 1) < blocks) {  // column j of a pair's low (even b) or high (odd b) nibbles
          const uint8_t byte = w[(b & ~int64_t{1}) * 16 + j];
          u = (b & 1) ? (byte >> 4) : (byte & 0x0F);
        } else {  // the final, unpaired block
          u = j < 16 ? (w[b * 16 + j] & 0x0F) : (w[b * 16 + j - 16] >> 4);
        }
      } else {
        u = w[b * kBlock + j] ^ 0x80;
      }
      sum += u * q[j];
    }
    total += static_cast<float>(sum) * (dw[b / blocks_per_group] * a.scale[ab]);
  }
  out[m * out_features + n] = total;
}

template <int Bits>
at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales) {
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t rows = xf.size(0), columns = xf.size(1);
  const int64_t out_features = weight.size(0);
  const int64_t blocks = weight.size(1) * 8 / Bits / kBlock;
  const int64_t groups = scales.size(1);
  TORCH_CHECK(blocks * kBlock >= columns && blocks * kBlock - columns < kBlock, "int_dot_linear: x has ", columns,
              " columns, the weight ", blocks * kBlock);
  TORCH_CHECK(blocks % groups == 0, "int_dot_linear: ", groups, " scale groups do not divide ", blocks, " blocks");
  const int64_t blocks_per_group = blocks / groups;
  const QuantizedRows a = quantize_rows(xf.data_ptr<float>(), rows, columns, blocks, Bits == 4 ? 8 : 128);
  at::Tensor out = at::empty({rows, out_features}, xf.options());
  float* out_ptr = out.data_ptr<float>();
  const uint8_t* w_ptr = reinterpret_cast<const uint8_t*>(weight.data_ptr());
  const uint16_t* s_ptr = reinterpret_cast<const uint16_t*>(scales.data_ptr());
  const int64_t row_bytes = weight.size(1);
  at::parallel_for(0, out_features, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> dw(groups);  // the weight row's scales
    for (int64_t n = begin; n < end; ++n) {
      halves_to_floats(s_ptr + n * groups, groups, dw.data());
      const uint8_t* w = w_ptr + n * row_bytes;
      int64_t m = 0;
#if defined(__AVX2__)
      for (; m + kRowTile <= rows; m += kRowTile) {
        row_tile<Bits, kRowTile>(w, dw.data(), blocks_per_group, a, blocks, m, out_ptr, n, out_features);
      }
      for (; m < rows; ++m) {
        row_tile<Bits, 1>(w, dw.data(), blocks_per_group, a, blocks, m, out_ptr, n, out_features);
      }
#endif
      for (; m < rows; ++m) {
        row_scalar<Bits>(w, dw.data(), blocks_per_group, a, blocks, m, out_ptr, n, out_features);
      }
    }
  });
  return out;
}

at::Tensor int_dot_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, int64_t bits) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && scales.dim() == 2, "int_dot_linear: 2-D x, weight and scales");
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous(), "int_dot_linear: contiguous uint8 weight");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.is_contiguous(), "int_dot_linear: contiguous fp16 scales");
  TORCH_CHECK(scales.size(0) == weight.size(0), "int_dot_linear: one row of scales per weight row");
  TORCH_CHECK(bits == 4 || bits == 8, "int_dot_linear: bits must be 4 or 8");
  TORCH_CHECK(weight.size(1) % (kBlock * bits / 8) == 0, "int_dot_linear: weight rows must be whole blocks");
  return bits == 4 ? linear_impl<4>(x, weight, scales) : linear_impl<8>(x, weight, scales);
}

// Which product instructions this build uses (reported by the loader).
std::string int_dot_isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "avx512-vnni";
#elif defined(__AVXVNNI__)
  return "avx-vnni";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "scalar";
#endif
}

}  // namespace

TORCH_LIBRARY(glm_engine_cpu, m) {
  m.def("int_dot_linear(Tensor x, Tensor weight, Tensor scales, int bits) -> Tensor");
  m.def("int_dot_isa() -> str", &int_dot_isa);
}

TORCH_LIBRARY_IMPL(glm_engine_cpu, CPU, m) { m.impl("int_dot_linear", &int_dot_linear); }
