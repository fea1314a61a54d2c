#include "analysis/store_reuse.h"

#include <ATen/ATen.h>

#include <mutex>
#include <utility>

namespace unisub::analysis {
namespace {

std::mutex& reuse_mutex() {
  static std::mutex m;
  return m;
}

int& scopes() {
  static int n = 0;
  return n;
}

at::Tensor& kept() {
  static at::Tensor t;
  return t;
}

bool owned_alone(const at::Tensor& t) { return t.defined() && t.storage().use_count() == 1; }

}  // namespace

DeltaStoreReuse::DeltaStoreReuse() {
  std::lock_guard<std::mutex> g(reuse_mutex());
  ++scopes();
}

DeltaStoreReuse::~DeltaStoreReuse() {
  at::Tensor gone;  // freed outside the lock
  std::lock_guard<std::mutex> g(reuse_mutex());
  if (--scopes() == 0) gone = std::move(kept());
}

namespace detail {

at::Tensor take_store_bytes(int64_t bytes) {
  {
    std::lock_guard<std::mutex> g(reuse_mutex());
    at::Tensor& k = kept();
    if (k.defined() && k.numel() >= bytes && owned_alone(k)) return std::exchange(k, at::Tensor());
    k = at::Tensor();  // too small: freed before the new block is allocated
  }
  return at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
}

void keep_store_bytes(at::Tensor bytes) {
  if (!bytes.defined() || !bytes.device().is_cpu() || !owned_alone(bytes)) return;
  std::lock_guard<std::mutex> g(reuse_mutex());
  if (scopes() == 0) return;
  at::Tensor& k = kept();
  if (!k.defined() || bytes.numel() > k.numel()) std::swap(k, bytes);  // the smaller one goes
}

}  // namespace detail
}  // namespace unisub::analysis
