// The mode accumulator's conversions (csrc/cpu/shifted_copy.h) give the numbers of the ATen ops they
// replace, bit for bit: x − shift rounded once to float32 or float64 from every float dtype (the
// F16C/AVX2 path for float16 and its scalar tail), into rows of a wider chunk, with and without a
// shift, and the float64 batch sum; other layouts fall back to ATen.
#include <ATen/ATen.h>
#include <boost/test/unit_test.hpp>

#include <vector>

#include "cpu/shifted_copy.h"

namespace {

using unisub::detail::add_to_float64;
using unisub::detail::shifted_copy;

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         at::equal(a.contiguous().view(at::kByte), b.contiguous().view(at::kByte));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(shifted_copy_suite)

BOOST_AUTO_TEST_CASE(shift_matches_sub_out_for_every_dtype) {
  auto gen = at::detail::createCPUGenerator(11);
  for (auto dtype : {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble}) {
    for (auto out_dtype : {at::kFloat, at::kDouble}) {
      for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{29}, int64_t{768}}) {
        const int64_t m = 13, g = 3;
        // values spread over magnitudes, and a shift close to them (what centring subtracts)
        const auto x = (at::randn({m, n}, gen, at::kDouble) * at::exp(at::randn({m, n}, gen, at::kDouble) * 3)).to(dtype);
        const auto shift = x.to(at::kDouble) + at::randn({m, n}, gen, at::kDouble) * 1e-3;
        auto chunk = at::full({m, g, n}, 5, out_dtype);
        shifted_copy(x, shift, chunk.select(1, 1));
        auto want = at::empty({m, n}, out_dtype);
        at::sub_out(want, x, shift);
        BOOST_TEST(same_bits(chunk.select(1, 1), want), dtype << " -> " << out_dtype << " n " << n);
        BOOST_TEST(at::equal(chunk.select(1, 0), at::full({m, n}, 5, out_dtype)));
        BOOST_TEST(at::equal(chunk.select(1, 2), at::full({m, n}, 5, out_dtype)));
        auto copied = at::empty({m, n}, out_dtype);
        shifted_copy(x, at::Tensor(), copied);
        BOOST_TEST(same_bits(copied, x.to(out_dtype)));
        auto acc = at::randn({m, n}, gen, at::kDouble), acc_want = acc.clone();
        add_to_float64(x, acc);
        acc_want.add_(x);
        BOOST_TEST(same_bits(acc, acc_want), dtype << " sum, n " << n);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(other_layouts_fall_back_to_aten) {
  auto gen = at::detail::createCPUGenerator(12);
  const auto x = at::randn({9, 10}, gen, at::kDouble).to(at::kHalf).t();  // columns contiguous
  const auto shift = at::randn({10, 9}, gen, at::kDouble);
  auto out = at::empty({10, 9}, at::kFloat), want = at::empty({10, 9}, at::kFloat);
  shifted_copy(x, shift, out);
  at::sub_out(want, x, shift);
  BOOST_TEST(same_bits(out, want));
  auto acc = at::zeros({10, 9}, at::kDouble);
  add_to_float64(x, acc);
  BOOST_TEST(at::equal(acc, x.to(at::kDouble)));
  BOOST_CHECK_THROW(shifted_copy(x, shift, at::empty({9, 10}, at::kFloat)), c10::Error);
}

BOOST_AUTO_TEST_SUITE_END()
