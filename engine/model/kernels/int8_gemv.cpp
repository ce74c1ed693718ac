// int8 weight-only matmul for AVX-512 VNNI CPUs (fishbench engine.model.int8_kernel): a GEMV at
// one row (a frame step), rows in passes of CHUNK beyond (a prefill), or, where the caller asks
// and the CPU has AMX, many rows on AMX int8 tiles.
//
// out[m, n] = scales[n] * sum_k x[m, k] * w[n, k], w int8 [N, K] row-major, x float [M, K].
// x is split into two int8 digits per row (x ~= s1 * q1 + s2 * q2, |q| <= 127), so each weight
// byte meets the activations through vpdpbusd (64 multiply-adds per instruction) instead of being
// widened to fp32: the loop is bound by memory, not by conversions. Two digits keep about 15 bits
// of each activation, more than its bf16 carries. vpdpbusd multiplies unsigned by signed bytes,
// so the digits are stored offset by 128 and 128 * sum_k w[n, k] (rowsum) is taken off after.
//
// A prefill meets every weight byte with tens to hundreds of rows, where vpdpbusd is compute
// bound. AMX's tdpbssd multiplies a 16 x 64 tile of weight bytes by 64 x 16 signed digits at
// once (16 times vpdpbusd's work per instruction): the same digits, the same exact int32 sums,
// the same epilogue, so both paths give the same bits.
#include <ATen/Parallel.h>
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <torch/extension.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t ROWS = 4;    // weight rows per block: four streams for the prefetchers
constexpr int64_t STEP = 64;   // bytes of K per vpdpbusd
// Activation rows per pass over the weights: their digits (2 * CHUNK * K bytes) stay in L2 while
// each weight block meets them.
constexpr int64_t CHUNK = 64;

// Where a row's digits go: row-major codes offset by 128 (the VNNI loop), or signed codes in
// tdpbssd's B layout (AMX tiles): per block of 16 rows and 64 bytes of K, 16 lines of four bytes
// of K for each of the 16 rows, rows past M zero.
struct Layout {
  bool tiles;
  int64_t K;

  int64_t bytes(int64_t M) const { return tiles ? (M + 15) / 16 * 16 * K : M * K; }

  // Sixteen codes (rounded floats) of row m from column k (a multiple of 16).
  void put(uint8_t* base, int64_t m, int64_t k, __m512 q) const {
    const __m512i codes = _mm512_cvtps_epi32(q);
    if (!tiles) {
      const __m512i offset = _mm512_add_epi32(codes, _mm512_set1_epi32(128));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(base + m * K + k), _mm512_cvtepi32_epi8(offset));
      return;
    }
    const __m128i packed = _mm512_cvtepi32_epi8(codes);
    uint8_t* line =
        base + (m / 16) * 16 * K + (k / STEP) * 1024 + (k % STEP) / 4 * 64 + (m % 16) * 4;
    const int32_t words[4] = {_mm_extract_epi32(packed, 0), _mm_extract_epi32(packed, 1),
                              _mm_extract_epi32(packed, 2), _mm_extract_epi32(packed, 3)};
    for (int t = 0; t < 4; ++t) std::memcpy(line + t * 64, &words[t], 4);
  }
};

struct Digits {
  std::vector<uint8_t> hi, lo;  // in a Layout
  std::vector<float> s_hi, s_lo;  // [M]
};

// Sixteen activations as fp32.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m512i wide = _mm512_cvtepu16_epi32(half);
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Rounded to nearest, even on ties (as nearbyint).
inline __m512 round16(__m512 v) {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// Row m's two digits: s1 = max|x| / 127, q1 = round(x / s1); s2 = max|x - q1 s1| / 127,
// q2 = round((x - q1 s1) / s2). Vectorized: a frame step splits about 300 rows of 1-3 k values.
template <typename scalar_t>
void split_row(const scalar_t* x, int64_t m, const Layout& layout, Digits& d) {
  const int64_t K = layout.K;
  __m512 vmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(load16(x + k)));
  const float amax = _mm512_reduce_max_ps(vmax);
  const float s1 = amax > 0.f ? amax / 127.f : 1.f;
  const __m512 v1 = _mm512_set1_ps(s1), inv1 = _mm512_set1_ps(1.f / s1);
  __m512 rmax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 v = load16(x + k);
    const __m512 q = round16(_mm512_mul_ps(v, inv1));
    layout.put(d.hi.data(), m, k, q);
    rmax = _mm512_max_ps(rmax, _mm512_abs_ps(_mm512_fnmadd_ps(q, v1, v)));
  }
  const float rest_max = _mm512_reduce_max_ps(rmax);
  const float s2 = rest_max > 0.f ? rest_max / 127.f : 1.f;
  const __m512 inv2 = _mm512_set1_ps(1.f / s2);
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 v = load16(x + k);
    const __m512 rest = _mm512_fnmadd_ps(round16(_mm512_mul_ps(v, inv1)), v1, v);
    layout.put(d.lo.data(), m, k, round16(_mm512_mul_ps(rest, inv2)));
  }
  d.s_hi[m] = s1;
  d.s_lo[m] = s2;
}

template <typename scalar_t>
Digits split(const scalar_t* xp, int64_t M, const Layout& layout) {
  const int64_t bytes = layout.bytes(M);
  Digits d{std::vector<uint8_t>(bytes), std::vector<uint8_t>(bytes), std::vector<float>(M),
           std::vector<float>(M)};
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) split_row(xp + m * layout.K, m, layout, d);
  });
  return d;
}

// An output from the integer sums of the two digits: one expression (explicit fma) for both paths,
// so they round alike.
inline float combine(int32_t h, int32_t l, float s_hi, float s_lo, float scale) {
  return std::fma(static_cast<float>(h), s_hi, static_cast<float>(l) * s_lo) * scale;
}
inline __m512 combine(__m512 h, __m512 l, __m512 s_hi, __m512 s_lo, __m512 scale) {
  return _mm512_mul_ps(_mm512_fmadd_ps(h, s_hi, _mm512_mul_ps(l, s_lo)), scale);
}

// n (a multiple of 16) fp32 values into out's dtype, rounded as a scalar cast rounds them.
inline void store(float* dst, const float* src, int64_t n) { std::copy(src, src + n, dst); }
inline void store(c10::BFloat16* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    // c10's round to nearest even: add 0x7FFF plus the lowest kept bit, keep the top half;
    // NaN becomes 0x7FC0.
    const __m512 v = _mm512_loadu_ps(src + i);
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i top = _mm512_srli_epi32(
        _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
    top = _mm512_mask_mov_epi32(top, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                                _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(top));
  }
}
inline void store(c10::Half* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

template <typename scalar_t>
void gemv(const Digits& d, const int8_t* wp, const int32_t* rs, const scalar_t* sp, scalar_t* op,
          int64_t M, int64_t N, int64_t K) {
  for (int64_t m0 = 0; m0 < M; m0 += CHUNK) {
    const int64_t m1 = std::min(M, m0 + CHUNK);
    at::parallel_for(0, N / ROWS, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t n0 = block * ROWS;
        const int8_t* w0 = wp + n0 * K;
        for (int64_t m = m0; m < m1; ++m) {
          const uint8_t* hi = d.hi.data() + m * K;
          const uint8_t* lo = d.lo.data() + m * K;
          __m512i h[ROWS], l[ROWS];
          for (int r = 0; r < ROWS; ++r) h[r] = l[r] = _mm512_setzero_si512();
          for (int64_t k = 0; k < K; k += STEP) {
            const __m512i xh = _mm512_loadu_si512(hi + k);
            const __m512i xl = _mm512_loadu_si512(lo + k);
#pragma GCC unroll 4
            for (int r = 0; r < ROWS; ++r) {
              const __m512i wv = _mm512_loadu_si512(w0 + r * K + k);
              h[r] = _mm512_dpbusd_epi32(h[r], xh, wv);
              l[r] = _mm512_dpbusd_epi32(l[r], xl, wv);
            }
          }
          for (int r = 0; r < ROWS; ++r) {
            const int64_t n = n0 + r;
            const int32_t offset = 128 * rs[n];  // |sums| <= 3072 * 255 * 128 < 2^31 at K 3072
            const int32_t hs = _mm512_reduce_add_epi32(h[r]) - offset;
            const int32_t ls = _mm512_reduce_add_epi32(l[r]) - offset;
            op[m * N + n] = static_cast<scalar_t>(
                combine(hs, ls, d.s_hi[m], d.s_lo[m], static_cast<float>(sp[n])));
          }
        }
      }
    });
  }
}

// AMX: 16 weight rows x 64 bytes per A tile, 16 digit rows per B tile (packed four bytes of K per
// column, the layout tdpbssd reads), int32 16 x 16 per C tile. Eight tile registers: two A (32
// weight rows), B for the high and low digits of one 16-row block, four C.
constexpr int64_t AMX_ROWS = 32;      // weight rows per block (two A tiles)
constexpr int64_t AMX_MIN_ROWS = 2;   // at one row (a frame step) the VNNI loop is faster
constexpr int64_t AMX_CHUNK = 128;    // activation rows per pass: their packed digits stay in L2
constexpr long ARCH_REQ_XCOMP_PERM = 0x1023;
constexpr long XFEATURE_XTILEDATA = 18;
std::atomic<int64_t> amx_calls{0};  // calls that ran on tiles: the path taken, for tests and logs

struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Whether this process may use AMX tiles: the CPU has them and Linux grants the (large) tile
// state to this process, which it does only on request.
bool amx_ready() {
  static const bool ready = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    return tile && int8 && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  }();
  return ready;
}

template <typename scalar_t>
void amx_mm(const Digits& d, const int8_t* wp, const scalar_t* sp, scalar_t* op, int64_t M,
            int64_t N, int64_t K) {
  const int64_t steps = K / STEP;
  for (int64_t m0 = 0; m0 < M; m0 += AMX_CHUNK) {
    const int64_t rows = std::min(M, m0 + AMX_CHUNK) - m0;
    const int8_t* hi = reinterpret_cast<const int8_t*>(d.hi.data()) + m0 * K;
    const int8_t* lo = reinterpret_cast<const int8_t*>(d.lo.data()) + m0 * K;
    at::parallel_for(0, N / AMX_ROWS, 1, [&](int64_t begin, int64_t end) {
      TileConfig config;
      for (int t = 0; t < 8; ++t) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
      }
      _tile_loadconfig(&config);
      alignas(64) int32_t c[4][16][16];
      alignas(64) float buffer[16 * AMX_ROWS];
      // Where row m's value for weight row r goes in the buffer: m * AMX_ROWS + r.
      const __m512i across = _mm512_mullo_epi32(
          _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
          _mm512_set1_epi32(AMX_ROWS));
      for (int64_t block = begin; block < end; ++block) {
        const int64_t n0 = block * AMX_ROWS;
        const int8_t* w0 = wp + n0 * K;
        const int8_t* w1 = w0 + 16 * K;
        float scales[AMX_ROWS];
        for (int64_t r = 0; r < AMX_ROWS; ++r) scales[r] = static_cast<float>(sp[n0 + r]);
        for (int64_t mb = 0; mb * 16 < rows; ++mb) {
          _tile_zero(4);
          _tile_zero(5);
          _tile_zero(6);
          _tile_zero(7);
          const int8_t* bh = hi + mb * steps * 1024;
          const int8_t* bl = lo + mb * steps * 1024;
          for (int64_t s = 0; s < steps; ++s) {
            _tile_loadd(0, w0 + s * STEP, K);
            _tile_loadd(1, w1 + s * STEP, K);
            _tile_loadd(2, bh + s * 1024, 64);
            _tile_loadd(3, bl + s * 1024, 64);
            _tile_dpbssd(4, 0, 2);
            _tile_dpbssd(5, 0, 3);
            _tile_dpbssd(6, 1, 2);
            _tile_dpbssd(7, 1, 3);
          }
          _tile_stored(4, c[0], 64);
          _tile_stored(5, c[1], 64);
          _tile_stored(6, c[2], 64);
          _tile_stored(7, c[3], 64);
          // The tiles hold [n][m] and out is [m][n]: combine 16 rows of m at a time per n into
          // a transposed buffer, then write each row's 32 values at once.
          const int64_t first = m0 + mb * 16, count = std::min<int64_t>(16, rows - mb * 16);
          const __mmask16 valid = static_cast<__mmask16>((1u << count) - 1);
          const __m512 s_hi = _mm512_maskz_loadu_ps(valid, d.s_hi.data() + first);
          const __m512 s_lo = _mm512_maskz_loadu_ps(valid, d.s_lo.data() + first);
          for (int64_t r = 0; r < AMX_ROWS; ++r) {
            const int half = static_cast<int>(r / 16), i = static_cast<int>(r % 16);
            const __m512 h = _mm512_cvtepi32_ps(_mm512_load_si512(c[2 * half][i]));
            const __m512 l = _mm512_cvtepi32_ps(_mm512_load_si512(c[2 * half + 1][i]));
            const __m512 v = combine(h, l, s_hi, s_lo, _mm512_set1_ps(scales[r]));
            _mm512_mask_i32scatter_ps(buffer + r, valid, across, v, 4);
          }
          for (int64_t j = 0; j < count; ++j) {
            store(op + (first + j) * N + n0, buffer + j * AMX_ROWS, AMX_ROWS);
          }
        }
      }
      _tile_release();
    });
  }
}

}  // namespace

// x [M, K] and scales [N] of one float dtype, read and written in it (no conversion ops around
// the call: at a frame step's 336 calls they cost more than the arithmetic they feed).
// With ``amx`` a call of at least AMX_MIN_ROWS rows runs on AMX tiles where the CPU has them.
torch::Tensor int8_gemv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& rowsum,
                        const torch::Tensor& scales, bool amx) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x [M, K], w [N, K]");
  TORCH_CHECK(w.scalar_type() == torch::kInt8 && w.is_contiguous(), "w: contiguous int8");
  TORCH_CHECK(rowsum.scalar_type() == torch::kInt && rowsum.size(0) == w.size(0), "rowsum [N]");
  TORCH_CHECK(scales.scalar_type() == x.scalar_type() && scales.size(0) == w.size(0),
              "scales [N] in x's dtype");
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  TORCH_CHECK(K % STEP == 0 && N % ROWS == 0, "K a multiple of 64, N of 4");
  const torch::Tensor xc = x.contiguous(), sc = scales.contiguous(), rc = rowsum.contiguous();
  torch::Tensor out = torch::empty({M, N}, x.options());
  const auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    const bool tiles = amx && M >= AMX_MIN_ROWS && N % AMX_ROWS == 0 && amx_ready();
    const Digits d = split(xc.data_ptr<scalar_t>(), M, Layout{tiles, K});
    if (tiles) {
      ++amx_calls;
      amx_mm<scalar_t>(d, w.data_ptr<int8_t>(), sc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                       M, N, K);
    } else {
      gemv<scalar_t>(d, w.data_ptr<int8_t>(), rc.data_ptr<int32_t>(), sc.data_ptr<scalar_t>(),
                     out.data_ptr<scalar_t>(), M, N, K);
    }
  };
  switch (x.scalar_type()) {
    case torch::kFloat: run(float{}); break;
    case torch::kBFloat16: run(c10::BFloat16{}); break;
    case torch::kHalf: run(c10::Half{}); break;
    default: TORCH_CHECK(false, "x: float32, bfloat16 or float16, not ", x.scalar_type());
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_gemv", &int8_gemv, "int8 weight-only GEMV through AVX-512 VNNI (or AMX tiles)");
  m.def("amx_ready", &amx_ready, "whether this process may use AMX int8 tiles");
  m.def("amx_calls", [] { return amx_calls.load(); }, "calls so far that ran on AMX tiles");
}
