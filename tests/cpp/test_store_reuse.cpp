// DeltaStoreReuse (csrc/analysis/store_reuse.h): inside one, a released delta store's memory is
// taken by the next accumulator (its factors then land in pages already mapped) and the results
// are those of a fresh store; a store something else still refers to (a view of B() held) is never
// handed on, so what that view shows does not change.
#include <ATen/ATen.h>
#include <boost/test/unit_test.hpp>

#include <vector>

#include "analysis/accumulators.h"

namespace {

using unisub::analysis::DeltaAccumulator;
using unisub::analysis::DeltaStoreReuse;

struct Model {
  at::Tensor B, A;
};

std::vector<Model> models(int64_t M, int64_t m, int64_t n, int64_t r, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<Model> out;
  for (int64_t i = 0; i < M; ++i)
    out.push_back({at::randn({m, r}, gen, at::kDouble).to(at::kHalf), at::randn({r, n}, gen, at::kDouble).to(at::kHalf)});
  return out;
}

const void* store_address(const DeltaAccumulator& acc) {
  return acc.factors(at::kHalf, /*fold_scaling=*/false).first.data_ptr();
}

at::Tensor gram_of(const std::vector<Model>& ms, int64_t m, int64_t n) {
  DeltaAccumulator acc(m, n, true, at::kCPU);
  for (const auto& x : ms) acc.add(x.B, x.A, 1.5);
  return acc.gram(true);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(store_reuse)

BOOST_AUTO_TEST_CASE(the_next_accumulator_takes_the_released_store) {
  const DeltaStoreReuse reuse;
  const auto big = models(12, 64, 48, 4, 1), small = models(9, 40, 48, 3, 2);
  const void* first = nullptr;
  {
    DeltaAccumulator acc(64, 48, true, at::kCPU);
    acc.reserve(12);
    for (const auto& x : big) acc.add(x.B, x.A, 1.5);
    first = store_address(acc);
    acc.release_factors();
  }
  DeltaAccumulator next(40, 48, true, at::kCPU);  // needs less than the kept store: takes it
  next.reserve(9);
  for (const auto& x : small) next.add(x.B, x.A, 1.5);
  BOOST_TEST(store_address(next) == first);
  // the old contents under the new factors change nothing
  const auto B = next.B(), A = next.A();
  for (size_t i = 0; i < small.size(); ++i) BOOST_TEST((at::equal(B[i], small[i].B) && at::equal(A[i], small[i].A)));
  BOOST_TEST(at::equal(next.gram(true), gram_of(small, 40, 48)));
}

BOOST_AUTO_TEST_CASE(a_store_still_seen_elsewhere_is_not_handed_on) {
  const DeltaStoreReuse reuse;
  const auto ms = models(6, 32, 32, 2, 3), others = models(6, 32, 32, 2, 4);
  std::vector<at::Tensor> held;
  {
    DeltaAccumulator acc(32, 32, true, at::kCPU);
    for (const auto& x : ms) acc.add(x.B, x.A, 1.0);
    held = acc.B();  // views of the store (same dtype as given)
  }  // destroyed with the views alive: its store must not be kept for another
  DeltaAccumulator next(32, 32, true, at::kCPU);
  for (const auto& x : others) next.add(x.B, x.A, 1.0);
  for (size_t i = 0; i < ms.size(); ++i) BOOST_TEST(at::equal(held[i], ms[i].B));
}

BOOST_AUTO_TEST_CASE(a_larger_store_is_allocated_afresh_and_correct) {
  const DeltaStoreReuse reuse;
  const auto small = models(3, 16, 16, 2, 5), big = models(20, 80, 40, 5, 6);
  {
    DeltaAccumulator acc(16, 16, true, at::kCPU);
    for (const auto& x : small) acc.add(x.B, x.A, 1.0);
  }
  DeltaAccumulator next(80, 40, true, at::kCPU);  // grows past the kept block, doubling as it goes
  for (const auto& x : big) next.add(x.B, x.A, 1.5);
  BOOST_TEST(at::equal(next.gram(true), gram_of(big, 80, 40)));
}

BOOST_AUTO_TEST_SUITE_END()
