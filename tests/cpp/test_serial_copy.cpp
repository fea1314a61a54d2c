// The delta store's copies (csrc/cpu/serial_copy.h): the blocked transpose gives exactly srcᵀ for
// 2-, 4- and 8-byte dtypes at sizes that are and are not multiples of its tile, from row-contiguous
// sources with a leading dimension wider than the row and into such destinations; casts and other
// layouts fall back to ATen's copy and give the same bits.
#include <ATen/ATen.h>
#include <boost/test/unit_test.hpp>

#include "cpu/serial_copy.h"

namespace {

using unisub::detail::serial_copy;
using unisub::detail::transpose_copy;

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && at::equal(a.view(at::kByte), b.view(at::kByte));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(serial_copy_suite)

BOOST_AUTO_TEST_CASE(transpose_is_exact_for_every_width_and_shape) {
  for (auto dtype : {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble, at::kInt}) {
    for (auto [a, b] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {4096, 16}, {33, 7}, {31, 65}, {64, 64}, {5, 1}, {1, 9}}) {
      const auto src = at::randn({a, b}, at::kDouble).mul(1000).to(dtype);
      auto dst = at::full({b, a}, 7, dtype);
      transpose_copy(src, dst);
      BOOST_TEST(at::equal(dst, src.t().contiguous()), dtype << " " << a << "x" << b);
      // a column block of a wider tensor into a row block of a wider one (the store's rows)
      const auto wide = at::randn({a, b + 5}, at::kDouble).mul(1000).to(dtype);
      const auto part = wide.narrow(1, 2, b);
      auto store = at::full({b + 3, a}, 9, dtype);
      transpose_copy(part, store.narrow(0, 1, b));
      BOOST_TEST(at::equal(store.narrow(0, 1, b), part.t()));
      BOOST_TEST(at::equal(store[0], at::full({a}, 9, dtype)));
      BOOST_TEST(at::equal(store.narrow(0, b + 1, 2), at::full({2, a}, 9, dtype)));
    }
  }
}

BOOST_AUTO_TEST_CASE(casts_and_other_layouts_fall_back_exactly) {
  const auto src = at::randn({40, 6}, at::kDouble).to(at::kHalf);
  auto wider = at::empty({6, 40}, at::kFloat);
  transpose_copy(src, wider);  // a cast: exact for float16 into float32
  BOOST_TEST(at::equal(wider, src.t().to(at::kFloat)));
  const auto transposed_src = at::randn({6, 40}, at::kDouble).to(at::kHalf).t();  // columns contiguous
  auto dst = at::empty({6, 40}, at::kHalf);
  transpose_copy(transposed_src, dst);
  BOOST_TEST(same_bits(dst, transposed_src.t().contiguous()));
  BOOST_CHECK_THROW(transpose_copy(src, at::empty({40, 6}, at::kHalf)), c10::Error);
}

BOOST_AUTO_TEST_CASE(plain_copy_keeps_the_bits) {
  const auto src = at::randn({16, 4096}, at::kDouble).to(at::kBFloat16);
  auto dst = at::empty_like(src);
  serial_copy(src, dst);
  BOOST_TEST(same_bits(dst, src));
  auto wider = at::empty({16, 4096}, at::kDouble);
  serial_copy(src, wider);
  BOOST_TEST(at::equal(wider, src.to(at::kDouble)));
  const auto strided = at::randn({8, 20}, at::kDouble).narrow(1, 3, 10);
  auto out = at::empty({8, 10}, at::kDouble);
  serial_copy(strided, out);
  BOOST_TEST(at::equal(out, strided));
  BOOST_CHECK_THROW(serial_copy(src, at::empty({4096, 16}, at::kBFloat16)), c10::Error);
}

BOOST_AUTO_TEST_SUITE_END()
