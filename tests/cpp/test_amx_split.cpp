// lora_gram's AMX route (csrc/cpu/amx_split_gemm.h): the bfloat16 hi/lo split of every float16 is
// exact, the right operand's blocks are laid out as torch's own packing lays them out, products
// with row and column remainders and offsets match float64 to a float32 GEMM's accuracy, and the
// tiles of lora_gram give the same K either way. On a CPU without AMX the route is never taken and
// the cases that need it say so and stop.
#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>

#include "cpu/amx_split_gemm.h"
#include "cpu/lora_gram_cpu.h"

namespace {

using unisub::detail::amx_bf16_available;
using unisub::detail::amx_split_product;
using unisub::detail::SplitPanel;

float bf16_value(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool skip_without_amx() {
  if (amx_bf16_available()) return false;
  BOOST_TEST_MESSAGE("no AMX bfloat16 tiles on this CPU: the route is never taken, nothing to test");
  return true;
}

// C = a[a0:a0+na] · b[b0:b0+nb]ᵀ in float64
at::Tensor reference(const at::Tensor& a, int64_t a0, int64_t na, const at::Tensor& b, int64_t b0, int64_t nb) {
  return a.narrow(0, a0, na).to(at::kDouble).mm(b.narrow(0, b0, nb).to(at::kDouble).t());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(amx_split)

// Every finite float16 (all 63,488 of them, subnormals and ±65504 included) is hi + lo exactly.
BOOST_AUTO_TEST_CASE(every_float16_splits_exactly) {
  std::vector<int16_t> bits;
  for (int v = 0; v < 65536; ++v)
    if (((v >> 10) & 0x1F) != 0x1F) bits.push_back(static_cast<int16_t>(static_cast<uint16_t>(v)));
  const int64_t n = static_cast<int64_t>(bits.size());  // even: the split takes pairs
  const auto x = at::tensor(bits).view(at::kHalf).view({1, n});
  SplitPanel p;
  p.load_rows(x);
  BOOST_REQUIRE(p.has_lo());
  const auto want = x.to(at::kDouble);
  const double* w = want.const_data_ptr<double>();
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i)
    if (static_cast<double>(bf16_value(p.hi()[i])) + static_cast<double>(bf16_value(p.lo()[i])) != w[i]) ++wrong;
  BOOST_TEST(wrong == 0);
  // bfloat16 input: hi is the value, no lo; each row padded with zeros to a whole tile's depth
  const auto y = at::randn({3, 8}).to(at::kBFloat16);
  p.load_rows(y);
  BOOST_TEST(!p.has_lo());
  BOOST_TEST(p.depth() == 32);
  const auto* yb = static_cast<const uint16_t*>(y.const_data_ptr());
  for (int64_t i = 0; i < 3; ++i) {
    BOOST_TEST(std::memcmp(p.hi() + i * p.depth(), yb + i * 8, 8 * 2) == 0);
    for (int64_t t = 8; t < p.depth(); ++t) BOOST_TEST(p.hi()[i * p.depth() + t] == 0);
  }
}

// load_columns lays each block of 16 columns out as torch's pack() does (VNNI pairs), including a
// narrower last block (padded to 16 columns).
BOOST_AUTO_TEST_CASE(columns_are_packed_as_torch_packs_them) {
  if (skip_without_amx()) return;
  // k = 104: 52 pairs, three whole groups of 16 and 4 more; padded to a depth of 128 with zeros
  for (const int64_t k : {96, 104}) {
    for (const auto dtype : {at::kBFloat16, at::kHalf}) {
      const int64_t rows = 64 + 23;
      const auto src = at::randn({rows, k}).to(dtype);
      SplitPanel p;
      p.load_columns(src);
      BOOST_TEST(p.depth() == (k + 31) / 32 * 32);
      // what the split's hi is: src itself (bfloat16), or src rounded to bfloat16 (float16)
      const auto hi = dtype == at::kBFloat16 ? src : src.to(at::kFloat).to(at::kBFloat16);
      for (int64_t c = 0; c < rows; c += unisub::detail::kAmxBlockColumns) {
        const int64_t w = std::min<int64_t>(unisub::detail::kAmxBlockColumns, rows - c);
        const int64_t ld = unisub::detail::packed_width(w);
        BOOST_TEST(ld == 16);
        const auto kn = hi.narrow(0, c, w).t().contiguous();  // [k, w], what pack() takes
        auto packed = at::zeros({k * ld}, at::kBFloat16);
        at::native::cpublas::pack(k, w, w, ld, at::kBFloat16, at::kBFloat16, kn.const_data_ptr(), packed.data_ptr());
        const uint16_t* block = p.hi() + c * p.depth();
        BOOST_TEST(std::memcmp(block, packed.const_data_ptr(), static_cast<size_t>(k * ld) * 2) == 0,
                   "block at column " << c << ", k " << k);
        for (int64_t t = k * ld; t < p.depth() * ld; ++t) BOOST_TEST(block[t] == 0);
      }
    }
  }
}

// Products against float64, with row and column remainders, a row offset, a column offset of one
// block, float16 (four products) and bfloat16 (one) operands. Bound: |fl(xᵀy) − xᵀy| ≤ γ·Σ|x||y|
// with γ for 8k roundings (four products of k terms each into one float32 sum, each rounding at
// most one unit); the observed error is checked to be far inside it as well.
BOOST_AUTO_TEST_CASE(products_match_float64) {
  if (skip_without_amx()) return;
  for (const auto dtype : {at::kHalf, at::kBFloat16}) {
    const int64_t k = 1000;
    const auto a = at::randn({77, k}).to(dtype), b = at::randn({150, k}).to(dtype);
    SplitPanel pa, pb;
    pa.load_rows(a);
    pb.load_columns(b);
    const int64_t a0 = 5, na = 70, b0 = 64, nb = 83;  // 70 = 2·32 + 6 rows; 83 = 64 + 19 columns
    auto C = at::full({na, nb + 3}, 7.0f);  // ldc > nb: the 3 extra columns must stay untouched
    amx_split_product(pa, a0, na, pb, b0, nb, C.data_ptr<float>(), nb + 3);
    const auto ref = reference(a, a0, na, b, b0, nb);
    const auto mag = a.narrow(0, a0, na).to(at::kDouble).abs().mm(b.narrow(0, b0, nb).to(at::kDouble).abs().t());
    const double u = std::ldexp(1.0, -24), g = 8 * k * u / (1 - 8 * k * u);
    const auto err = (C.narrow(1, 0, nb).to(at::kDouble) - ref).abs();
    BOOST_TEST((err <= g * mag).all().item<bool>());
    BOOST_TEST((err / mag).max().item<double>() < 2e-6);
    BOOST_TEST((C.narrow(1, nb, 3) == 7.0f).all().item<bool>());
  }
}

// The split products add their small terms first: summed the other way, the tiles' truncating
// accumulation left every Kᵢᵢ of 4096-long float16 factors 4.5e-6 low on average (measured); MKL's
// float32 GEMM is 3.7e-7 off. Here the diagonal's mean relative error must stay below 1e-6.
BOOST_AUTO_TEST_CASE(sums_of_squares_carry_no_bias) {
  if (skip_without_amx()) return;
  const int64_t k = 4096;
  const auto a = (at::randn({64, k}) * 0.02).to(at::kHalf);
  SplitPanel rows, cols;
  rows.load_rows(a);
  cols.load_columns(a);
  auto C = at::empty({64, 64}, at::kFloat);
  amx_split_product(rows, 0, 64, cols, 0, 64, C.data_ptr<float>(), 64);
  const auto ref = reference(a, 0, 64, a, 0, 64).diagonal();
  const double bias = ((C.diagonal().to(at::kDouble) - ref) / ref).mean().item<double>();
  BOOST_TEST(std::abs(bias) < 1e-6, "mean relative error of the diagonal " << bias);
}

// lora_gram's tiles on AMX against the float32 route (MKL on converted panels), on shapes whose tile
// walk has remainders everywhere: both within the float32 bound of the float64 K, and equal to
// each other to a few float32 units.
BOOST_AUTO_TEST_CASE(lora_gram_tiles_agree_with_the_float32_route) {
  if (skip_without_amx()) return;
  struct Case {
    int64_t M, r, m, n;
  };
  for (const auto& c : {Case{150, 16, 64, 130}, Case{230, 5, 34, 18}, Case{5, 300, 20, 22}, Case{70, 12, 128, 96}}) {
    const auto B = at::randn({c.M * c.r, c.m}).to(at::kHalf), A = at::randn({c.M * c.r, c.n}).to(at::kHalf);
    auto K_amx = at::zeros({c.M, c.M}, at::kDouble), K_f32 = at::zeros({c.M, c.M}, at::kDouble);
    BOOST_TEST(unisub::detail::lora_gram_lower_cpu(B, A, c.r, K_amx, at::kFloat, 512, 1024, 64, /*allow_amx=*/true));
    BOOST_TEST(!unisub::detail::lora_gram_lower_cpu(B, A, c.r, K_f32, at::kFloat, 512, 1024, 64, /*allow_amx=*/false));
    const auto Bd = B.to(at::kDouble).view({c.M, c.r, c.m}), Ad = A.to(at::kDouble).view({c.M, c.r, c.n});
    const auto D = Bd.transpose(1, 2).bmm(Ad).reshape({c.M, -1});
    const auto ref = D.mm(D.t()).tril();
    const auto s = (Bd.norm(2, 2) * Ad.norm(2, 2)).sum(1);  // Σ_k ‖B_i[:, k]‖‖A_i[k, :]‖
    const double u = std::ldexp(1.0, -24);
    auto gamma = [u](double k) { return k * u / (1 - k * u); };
    const auto scale = s.unsqueeze(1) * s.unsqueeze(0);
    const auto bound = (gamma(8.0 * c.m) + gamma(8.0 * c.n) + 2 * u) * scale + u * ref.abs();
    BOOST_TEST(((K_amx.tril() - ref).abs() <= bound.tril()).all().item<bool>(), "M " << c.M << " r " << c.r);
    BOOST_TEST(((K_f32.tril() - ref).abs() <= bound.tril()).all().item<bool>(), "M " << c.M << " r " << c.r);
    BOOST_TEST(((K_amx - K_f32).abs() / scale).tril().max().item<double>() < 1e-5, "M " << c.M << " r " << c.r);
  }
}

BOOST_AUTO_TEST_SUITE_END()
