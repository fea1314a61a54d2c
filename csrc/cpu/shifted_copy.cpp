#include "cpu/shifted_copy.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define UNISUB_SHIFT_AVX2 1
#else
#define UNISUB_SHIFT_AVX2 0
#endif

namespace unisub::detail {
namespace {

template <class In, class Out>
void shift_row(const In* x, const double* s, Out* out, int64_t n) {
  if (s) {
    for (int64_t c = 0; c < n; ++c) out[c] = static_cast<Out>(static_cast<double>(x[c]) - s[c]);
  } else {
    for (int64_t c = 0; c < n; ++c) out[c] = static_cast<Out>(static_cast<double>(x[c]));
  }
}

template <class In>
void add_row(const In* x, double* acc, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += static_cast<double>(x[c]);
}

#if UNISUB_SHIFT_AVX2
// Eight float16 numbers at a time: F16C to float32 and AVX to float64 (both exact), the float64
// subtraction, one rounding to the output's dtype (the MXCSR's round to nearest, as the scalar cast).
template <class Out>
__attribute__((target("avx2,f16c"))) void shift_row_f16_avx2(const uint16_t* x, const double* s, Out* out,
                                                                int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + c)));
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1));
    if (s) lo = _mm256_sub_pd(lo, _mm256_loadu_pd(s + c)), hi = _mm256_sub_pd(hi, _mm256_loadu_pd(s + c + 4));
    if constexpr (sizeof(Out) == 4) {
      _mm256_storeu_ps(reinterpret_cast<float*>(out + c),
                       _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)));
    } else {
      _mm256_storeu_pd(reinterpret_cast<double*>(out + c), lo);
      _mm256_storeu_pd(reinterpret_cast<double*>(out + c + 4), hi);
    }
  }
  shift_row(reinterpret_cast<const c10::Half*>(x) + c, s ? s + c : nullptr, out + c, n - c);
}

__attribute__((target("avx2,f16c"))) void add_row_f16_avx2(const uint16_t* x, double* acc, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + c)));
    _mm256_storeu_pd(acc + c, _mm256_add_pd(_mm256_loadu_pd(acc + c), _mm256_cvtps_pd(_mm256_castps256_ps128(f))));
    _mm256_storeu_pd(acc + c + 4,
                     _mm256_add_pd(_mm256_loadu_pd(acc + c + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1))));
  }
  add_row(reinterpret_cast<const c10::Half*>(x) + c, acc + c, n - c);
}

bool f16c_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return ok;
}
#endif

template <class Row>
void each_row(int64_t m, int64_t n, const Row& row) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, m, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row(r);
  });
}

template <class In, class Out>
void shift_rows(const at::Tensor& x, const double* s, const at::Tensor& out) {
  const int64_t n = x.size(1), ldx = x.stride(0), ldo = out.stride(0);
  const In* xp = x.const_data_ptr<In>();
  Out* op = out.mutable_data_ptr<Out>();
  each_row(x.size(0), n, [&](int64_t r) {
    const double* sr = s ? s + r * n : nullptr;
#if UNISUB_SHIFT_AVX2
    if constexpr (std::is_same_v<In, c10::Half>) {
      if (f16c_avx2()) return shift_row_f16_avx2(reinterpret_cast<const uint16_t*>(xp + r * ldx), sr, op + r * ldo, n);
    }
#endif
    shift_row(xp + r * ldx, sr, op + r * ldo, n);
  });
}

template <class In>
void add_rows(const at::Tensor& x, const at::Tensor& acc) {
  const int64_t n = x.size(1), ldx = x.stride(0);
  const In* xp = x.const_data_ptr<In>();
  double* ap = acc.mutable_data_ptr<double>();
  each_row(x.size(0), n, [&](int64_t r) {
#if UNISUB_SHIFT_AVX2
    if constexpr (std::is_same_v<In, c10::Half>) {
      if (f16c_avx2()) return add_row_f16_avx2(reinterpret_cast<const uint16_t*>(xp + r * ldx), ap + r * n, n);
    }
#endif
    add_row(xp + r * ldx, ap + r * n, n);
  });
}

template <class Out>
void shift_into(const at::Tensor& x, const double* s, const at::Tensor& out) {
  switch (x.scalar_type()) {
    case at::kHalf: return shift_rows<c10::Half, Out>(x, s, out);
    case at::kBFloat16: return shift_rows<c10::BFloat16, Out>(x, s, out);
    case at::kFloat: return shift_rows<float, Out>(x, s, out);
    default: return shift_rows<double, Out>(x, s, out);
  }
}

}  // namespace

void shifted_copy(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& out) {
  TORCH_CHECK(x.dim() == 2 && out.sizes() == x.sizes() && (!shift.defined() || shift.sizes() == x.sizes()),
              "shifted_copy: x, shift and out must be one [m, n] shape, got ", x.sizes(), ", ",
              shift.defined() ? shift.sizes() : c10::IntArrayRef{}, " and ", out.sizes());
  const auto dt = x.scalar_type(), ot = out.scalar_type();
  const bool fast = x.device().is_cpu() && out.device().is_cpu() && (!shift.defined() || shift.device().is_cpu()) &&
                    (dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble) &&
                    (ot == at::kFloat || ot == at::kDouble) && (x.stride(1) == 1 || x.size(1) <= 1) &&
                    (out.stride(1) == 1 || out.size(1) <= 1) &&
                    (!shift.defined() || (shift.scalar_type() == at::kDouble && shift.is_contiguous())) &&
                    !x.is_conj() && !x.is_neg();
  if (!fast) {
    if (shift.defined()) {
      at::Tensor result = out;  // a handle on out's storage: sub_out writes into it
      at::sub_out(result, x.to(out.device()), shift);
    } else {
      out.copy_(x);
    }
    return;
  }
  const double* s = shift.defined() ? shift.const_data_ptr<double>() : nullptr;
  if (ot == at::kFloat) {
    shift_into<float>(x, s, out);
  } else {
    shift_into<double>(x, s, out);
  }
}

void add_to_float64(const at::Tensor& x, const at::Tensor& acc) {
  TORCH_CHECK(x.dim() == 2 && acc.sizes() == x.sizes(), "add_to_float64: x and acc must be one [m, n] shape, got ",
              x.sizes(), " and ", acc.sizes());
  const auto dt = x.scalar_type();
  const bool fast = x.device().is_cpu() && acc.device().is_cpu() && acc.scalar_type() == at::kDouble &&
                    acc.is_contiguous() && (x.stride(1) == 1 || x.size(1) <= 1) && !x.is_conj() && !x.is_neg() &&
                    (dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble);
  if (!fast) {
    acc.add_(x.to(acc.device()));
    return;
  }
  switch (dt) {
    case at::kHalf: return add_rows<c10::Half>(x, acc);
    case at::kBFloat16: return add_rows<c10::BFloat16>(x, acc);
    case at::kFloat: return add_rows<float>(x, acc);
    default: return add_rows<double>(x, acc);
  }
}

}  // namespace unisub::detail
