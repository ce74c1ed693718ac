// int8 weight-only matmul for AVX-512 VNNI CPUs (fishbench engine.model.int8_kernel): a GEMV at
// one row (a frame step), rows in passes of CHUNK beyond (a prefill).
//
// out[m, n] = scales[n] * sum_k x[m, k] * w[n, k], w int8 [N, K] row-major, x float [M, K].
// x is split into two int8 digits per row (x ~= s1 * q1 + s2 * q2, |q| <= 127), so each weight
// byte meets the activations through vpdpbusd (64 multiply-adds per instruction) instead of being
// widened to fp32: the loop is bound by memory, not by conversions. Two digits keep about 15 bits
// of each activation, more than its bf16 carries. vpdpbusd multiplies unsigned by signed bytes,
// so the digits are stored offset by 128 and 128 * sum_k w[n, k] (rowsum) is taken off after.
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t ROWS = 4;    // weight rows per block: four streams for the prefetchers
constexpr int64_t STEP = 64;   // bytes of K per vpdpbusd
constexpr int64_t CHUNK = 64;  // activation rows per pass over the weights: their digits
                               // (2 * CHUNK * K bytes) stay in L2 while each weight block meets them

struct Digits {
  std::vector<uint8_t> hi, lo;  // [M, K], each code + 128
  std::vector<float> s_hi, s_lo;
};

template <typename scalar_t>
Digits split(const scalar_t* xp, int64_t M, int64_t K) {
  Digits d{std::vector<uint8_t>(M * K), std::vector<uint8_t>(M * K), std::vector<float>(M),
           std::vector<float>(M)};
  std::vector<float> row(K), rest(K);
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      row[k] = static_cast<float>(xp[m * K + k]);
      amax = std::max(amax, std::fabs(row[k]));
    }
    const float s1 = amax > 0.f ? amax / 127.f : 1.f;
    float rmax = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      const float q = std::nearbyint(row[k] / s1);
      d.hi[m * K + k] = static_cast<uint8_t>(static_cast<int>(q) + 128);
      rest[k] = row[k] - q * s1;
      rmax = std::max(rmax, std::fabs(rest[k]));
    }
    const float s2 = rmax > 0.f ? rmax / 127.f : 1.f;
    for (int64_t k = 0; k < K; ++k) {
      d.lo[m * K + k] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(rest[k] / s2)) + 128);
    }
    d.s_hi[m] = s1;
    d.s_lo[m] = s2;
  }
  return d;
}


template <typename scalar_t>
void gemv(const scalar_t* xp, const int8_t* wp, const int32_t* rs, const scalar_t* sp, scalar_t* op,
          int64_t M, int64_t N, int64_t K) {
  const Digits d = split(xp, M, K);
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
            const float hs = static_cast<float>(_mm512_reduce_add_epi32(h[r]) - offset);
            const float ls = static_cast<float>(_mm512_reduce_add_epi32(l[r]) - offset);
            const float value = (hs * d.s_hi[m] + ls * d.s_lo[m]) * static_cast<float>(sp[n]);
            op[m * N + n] = static_cast<scalar_t>(value);
          }
        }
      }
    });
  }
}

}  // namespace

// x [M, K] and scales [N] of one float dtype, read and written in it (no conversion ops around
// the call: at a frame step's 336 calls they cost more than the arithmetic they feed).
torch::Tensor int8_gemv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& rowsum,
                        const torch::Tensor& scales) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "x [M, K], w [N, K]");
  TORCH_CHECK(w.scalar_type() == torch::kInt8 && w.is_contiguous(), "w: contiguous int8");
  TORCH_CHECK(rowsum.scalar_type() == torch::kInt && rowsum.size(0) == w.size(0), "rowsum [N]");
  TORCH_CHECK(scales.scalar_type() == x.scalar_type() && scales.size(0) == w.size(0),
              "scales [N] in x's dtype");
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  TORCH_CHECK(K % STEP == 0 && N % ROWS == 0, "K a multiple of 64, N of 4");
  const torch::Tensor xc = x.contiguous(), sc = scales.contiguous(), rc = rowsum.contiguous();
  torch::Tensor out = torch::empty({M, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_gemv", [&] {
    gemv<scalar_t>(xc.data_ptr<scalar_t>(), w.data_ptr<int8_t>(), rc.data_ptr<int32_t>(),
                   sc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), M, N, K);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_gemv", &int8_gemv, "int8 weight-only GEMV through AVX-512 VNNI");
}
