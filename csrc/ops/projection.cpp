// Projection ops: schemas, input checks, the device-independent driver and the C++ API entries.
#include "ops/projection.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <unordered_set>

#include "ops/basis_checks.h"
#include "ops/checks.h"
#include "ops/overlap_checks.h"
#include "unisub/projection.h"

namespace unisub::detail {
namespace {

std::string indexed(std::string_view name, int64_t index) {
  return index < 0 ? std::string(name) : std::string(name) + "[" + std::to_string(index) + "]";
}

at::IntArrayRef batch_of(const at::Tensor& t) { return t.sizes().slice(0, t.dim() - 2); }

// Bases may have G's dtype or its compute dtype (float32 bases for float16/bfloat16 gradients,
// the usual mixed-precision setup); anything else is a mix we refuse rather than guess.
void check_basis_dtype(const at::Tensor& B, std::string_view b_name, const at::Tensor& G,
                       std::string_view g_name, std::string_view op) {
  const auto compute = result_dtype(G);
  TORCH_CHECK(B.scalar_type() == G.scalar_type() || B.scalar_type() == compute, "unisub.", op, ": ",
              b_name, " must have the dtype of ", g_name, " (", G.scalar_type(), ")",
              compute != G.scalar_type() ? " or float32" : "", ", got ", B.scalar_type());
}

// B[*, rows, cols] with rows == `rows` of the data tensor and cols ≤ rows; batch dims broadcast
// against `batch` (and, for in-place ops, must not enlarge it).
void check_basis_shape(const at::Tensor& B, std::string_view b_name, int64_t rows, std::string_view rows_what,
                       at::IntArrayRef batch, bool must_fit_batch, std::string_view op) {
  TORCH_CHECK(B.dim() >= 2, "unisub.", op, ": ", b_name, " must have at least 2 dimensions ([*, ",
              rows_what, ", k]), got shape ", B.sizes());
  TORCH_CHECK(B.size(-2) == rows, "unisub.", op, ": ", b_name, " must have ", rows, " rows (",
              rows_what, "), got shape ", B.sizes());
  TORCH_CHECK(B.size(-1) <= B.size(-2), "unisub.", op, ": ", b_name,
              " must not have more columns than rows (a basis of at most ", B.size(-2),
              " orthonormal columns), got shape ", B.sizes());
  const auto bb = batch_of(B);
  const int64_t extra = static_cast<int64_t>(bb.size()) - static_cast<int64_t>(batch.size());
  bool fits = !(must_fit_batch && extra > 0);
  for (int64_t i = 0; fits && i < static_cast<int64_t>(bb.size()); ++i) {
    const int64_t j = i - extra;  // aligned from the right
    if (j < 0) continue;
    fits = bb[i] == 1 || bb[i] == batch[j] || (!must_fit_batch && batch[j] == 1);
  }
  TORCH_CHECK(fits, "unisub.", op, ": the batch dims of ", b_name, " ", bb, " must ",
              must_fit_batch ? "broadcast to" : "broadcast with", " the batch dims ", batch,
              " of the data, got shape ", B.sizes());
}

}  // namespace

ProjectionArgs validate_projection(const at::Tensor& G, const OptTensor& U, const OptTensor& V,
                                   std::string_view op, int64_t index, std::string_view g_name,
                                   bool in_place) {
  const auto gn = indexed(g_name, index);
  check_float_input(G, op, gn);
  check_min_dim(G, 2, op, gn, "[*, m, n]");
  ProjectionArgs a{G, std::nullopt, std::nullopt, result_dtype(G)};
  const struct { const OptTensor& B; std::string name; int64_t rows; const char* what; OptTensor& out; } sides[] = {
      {U, indexed(index < 0 ? "U" : "Us", index), G.size(-2), "m, the rows of G", a.U},
      {V, indexed(index < 0 ? "V" : "Vs", index), G.size(-1), "n, the columns of G", a.V}};
  for (const auto& s : sides) {
    if (!s.B || !s.B->defined()) continue;
    check_float_input(*s.B, op, s.name);
    check_same_device(G, gn, *s.B, s.name, op);
    check_basis_dtype(*s.B, s.name, G, gn, op);
    check_basis_shape(*s.B, s.name, s.rows, s.what, batch_of(G), in_place, op);
    s.out = s.B->to(a.compute);
  }
  return a;
}

at::Tensor coefficients_compute(const at::Tensor& Gc, const OptTensor& U, const OptTensor& V) {
  if (!U && !V) return Gc.clone();
  if (!V) return at::matmul(U->mT(), Gc);
  if (!U) return at::matmul(Gc, *V);
  const double m = Gc.size(-2), n = Gc.size(-1), k = U->size(-1), l = V->size(-1);
  // (Uᵀ G) V costs k·m·n + k·n·l multiply-adds, Uᵀ (G V) costs m·n·l + k·m·l.
  return k * n * (m + l) <= m * l * (n + k) ? at::matmul(at::matmul(U->mT(), Gc), *V)
                                            : at::matmul(U->mT(), at::matmul(Gc, *V));
}

at::Tensor reconstruct_compute(const at::Tensor& C, const OptTensor& U, const OptTensor& V) {
  if (!U && !V) return C.clone();
  if (!V) return at::matmul(*U, C);
  if (!U) return at::matmul(C, V->mT());
  const double m = U->size(-2), k = C.size(-2), l = C.size(-1), n = V->size(-2);
  // (U C) Vᵀ costs m·k·l + m·l·n, U (C Vᵀ) costs k·l·n + m·k·n.
  return m * l * (k + n) <= k * n * (l + m) ? at::matmul(at::matmul(*U, C), V->mT())
                                            : at::matmul(*U, at::matmul(C, V->mT()));
}

namespace {

// The projection as one product L·R whose last GEMM can be fused with the update of G:
// U (UᵀG), (G V) Vᵀ, or U ((UᵀG V) Vᵀ).
std::pair<at::Tensor, at::Tensor> projection_factors(const at::Tensor& Gc, const OptTensor& U, const OptTensor& V) {
  if (!V) return {*U, at::matmul(U->mT(), Gc)};
  if (!U) return {at::matmul(Gc, *V), V->mT()};
  return {*U, at::matmul(coefficients_compute(Gc, U, V), V->mT())};
}

std::vector<int64_t> with_matrix(at::IntArrayRef batch, int64_t rows, int64_t cols) {
  std::vector<int64_t> s(batch.begin(), batch.end());
  s.push_back(rows);
  s.push_back(cols);
  return s;
}

// Broadcast to `batch` and flatten it, as a view wherever strides allow (a shared basis becomes
// a stride-0 batch, never a copy).
at::Tensor as_batch3(const at::Tensor& t, at::IntArrayRef batch, int64_t count) {
  return t.expand(with_matrix(batch, t.size(-2), t.size(-1))).reshape({count, t.size(-2), t.size(-1)});
}

}  // namespace

at::Tensor project_compute(const at::Tensor& Gc, const OptTensor& U, const OptTensor& V, bool complement) {
  if (!U && !V) return complement ? at::zeros_like(Gc) : Gc.clone();
  auto [L, R] = projection_factors(Gc, U, V);
  if (!complement) return at::matmul(L, R);
  if (Gc.dim() == 2 && L.dim() == 2 && R.dim() == 2) return at::addmm(Gc, L, R, 1, -1);
  // G − L·R in one fused batched GEMM rather than a product and a subtraction pass.
  const auto batch = at::infer_size(at::infer_size(batch_of(Gc), batch_of(L)), batch_of(R));
  const int64_t count = c10::multiply_integers(batch);
  const auto out = at::baddbmm(as_batch3(Gc, batch, count), as_batch3(L, batch, count),
                               as_batch3(R, batch, count), 1, -1);
  return out.view(with_matrix(batch, Gc.size(-2), Gc.size(-1)));
}

void project_inplace(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                     at::ScalarType compute) {
  if (G.numel() == 0) return;
  if (!U && !V) {
    if (complement) G.zero_();
    return;
  }
  // Half-precision or non-viewable G: compute in a float32/contiguous copy, round back once.
  if (G.scalar_type() != compute || !(G.dim() == 2 || G.is_contiguous())) {
    G.copy_(project_compute(G.to(compute), U, V, complement));
    return;
  }
  auto [L, R] = projection_factors(G, U, V);
  // G ← β·G + α·L·R: with β = 0 the GEMM does not read G, so no extra pass over it either way.
  const double beta = complement ? 1.0 : 0.0, alpha = complement ? -1.0 : 1.0;
  if (G.dim() == 2 && L.dim() == 2 && R.dim() == 2) {
    G.addmm_(L, R, beta, alpha);
    return;
  }
  const auto batch = batch_of(G);
  const int64_t count = c10::multiply_integers(batch);
  auto G3 = G.view({count, G.size(-2), G.size(-1)});
  G3.baddbmm_(as_batch3(L, batch, count), as_batch3(R, batch, count), beta, alpha);
}

void project_entry(const ListEntry& e, bool complement) { project_inplace(e.G, e.U, e.V, complement, e.compute); }

namespace {

// Entries that can share one batched computation: same G shape and dtype, same basis shapes.
std::string group_key(const ListEntry& e) {
  std::ostringstream key;
  key << e.G.scalar_type() << e.G.sizes();
  for (const auto* B : {&e.U, &e.V}) {
    if (*B) key << (*B)->sizes(); else key << "-";
  }
  return key.str();
}

// The bases of a group: the shared tensor itself when every entry uses the same one (no copy),
// else a stack of each entry's basis broadcast to its G's batch dims.
OptTensor stacked_basis(const std::vector<const ListEntry*>& group, OptTensor ListEntry::*side) {
  const auto& first = group.front()->*side;
  if (!first) return std::nullopt;
  const bool shared = std::all_of(group.begin(), group.end(), [&](const ListEntry* e) {
    return (e->*side)->is_same(*first);
  });
  if (shared) return first;
  std::vector<at::Tensor> parts;
  parts.reserve(group.size());
  for (const auto* e : group)
    parts.push_back((e->*side)->expand(with_matrix(batch_of(e->G), first->size(-2), first->size(-1))));
  return at::stack(parts);
}

}  // namespace

void project_list_grouped(const std::vector<ListEntry>& entries, bool complement) {
  std::map<std::string, std::vector<const ListEntry*>> groups;
  std::vector<at::Tensor> without_bases;  // left alone, or zeroed (all at once) when complementing
  for (const auto& e : entries) {
    if (!e.U && !e.V) without_bases.push_back(e.G);
    else groups[group_key(e)].push_back(&e);
  }
  if (complement && !without_bases.empty()) at::_foreach_zero_(without_bases);
  for (const auto& [key, group] : groups) {
    if (group.size() == 1) {
      project_entry(*group.front(), complement);
      continue;
    }
    std::vector<at::Tensor> Gs;
    Gs.reserve(group.size());
    for (const auto* e : group) Gs.push_back(e->G);
    auto stacked = at::stack(Gs).to(group.front()->compute);
    project_inplace(stacked, stacked_basis(group, &ListEntry::U), stacked_basis(group, &ListEntry::V),
                    complement, group.front()->compute);
    at::_foreach_copy_(Gs, stacked.unbind(0));
  }
}

namespace {

void check_bases(const ProjectionArgs& a, std::string_view op, const std::string& u_name,
                 const std::string& v_name) {
  if (a.U) check_orthonormal(*a.U, op, u_name);
  if (a.V) check_orthonormal(*a.V, op, v_name);
}

}  // namespace

at::Tensor project_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                        bool check_basis) {
  const auto a = validate_projection(G, U, V, "project");
  if (check_basis) check_bases(a, "project", "U", "V");
  return project_compute(G.to(a.compute), a.U, a.V, complement);
}

void project_inplace_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                          bool check_basis) {
  check_not_in_graph(G, "project_", "G", "use unisub.project (out of place, differentiable)");
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  const auto a = validate_projection(G, U, V, "project_", -1, "G", /*in_place=*/true);
  check_no_internal_overlap(G, "project_", "G");
  if (U) check_no_overlap(G, "G", *U, "U", "project_");
  if (V) check_no_overlap(G, "G", *V, "V", "project_");
  if (check_basis) check_bases(a, "project_", "U", "V");
  project_inplace(G, a.U, a.V, complement, a.compute);
}

void project_list_impl(at::TensorList Gs, const c10::List<OptTensor>& Us, const c10::List<OptTensor>& Vs,
                       bool complement, bool check_basis, const ProjectionKernels& k) {
  constexpr std::string_view op = "project_list_";
  for (size_t i = 0; i < Gs.size(); ++i)
    check_not_in_graph(Gs[i], op, "Gs[" + std::to_string(i) + "]", "use unisub.project on each (out of place, differentiable)");
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  const int64_t count = static_cast<int64_t>(Gs.size());
  TORCH_CHECK(count > 0, "unisub.", op, ": Gs must hold at least one tensor, got an empty list");
  TORCH_CHECK(static_cast<int64_t>(Us.size()) == count, "unisub.", op,
              ": Us must have one entry (a basis or None) per tensor of Gs: expected ", count,
              " entries, got ", Us.size());
  TORCH_CHECK(static_cast<int64_t>(Vs.size()) == count, "unisub.", op,
              ": Vs must have one entry (a basis or None) per tensor of Gs: expected ", count,
              " entries, got ", Vs.size());
  // Everything is validated before anything is written, so an error never leaves the list
  // half projected.
  std::vector<ListEntry> entries;
  entries.reserve(count);
  std::vector<at::Tensor> bases;
  std::vector<std::string> names;
  std::unordered_set<const void*> seen;
  std::vector<NamedTensor> written, read;
  for (int64_t i = 0; i < count; ++i) {
    if (Gs[i].defined()) written.push_back({Gs[i], indexed("Gs", i)});
    for (const auto& [B, name] : {std::pair{Us.get(i), indexed("Us", i)}, std::pair{Vs.get(i), indexed("Vs", i)}}) {
      if (B && B->defined()) read.push_back({*B, name});
    }
  }
  for (int64_t i = 0; i < count; ++i) {
    check_defined(Gs[i], op, indexed("Gs", i));
    if (i > 0) check_same_device(Gs[i], indexed("Gs", i), Gs[0], "Gs[0]", op);
    const OptTensor U = Us.get(i), V = Vs.get(i);
    // A model's gradient list holds biases and norms with no basis: any shape is fine for those.
    if (!(U && U->defined()) && !(V && V->defined())) {
      check_float_input(Gs[i], op, indexed("Gs", i));
      entries.push_back({Gs[i], std::nullopt, std::nullopt, result_dtype(Gs[i])});
      continue;
    }
    const auto a = validate_projection(Gs[i], U, V, op, i, "Gs", /*in_place=*/true);
    entries.push_back({Gs[i], a.U, a.V, a.compute});
    // A basis shared by many entries (one per layer type, say) is checked once.
    const std::pair<const OptTensor&, std::string> given[] = {{U, indexed("Us", i)}, {V, indexed("Vs", i)}};
    for (const auto& [B, name] : given) {
      if (B && B->defined() && seen.insert(B->unsafeGetTensorImpl()).second) {
        bases.push_back(*B);
        names.push_back(name);
      }
    }
  }
  for (const auto& w : written) check_no_internal_overlap(w.tensor, op, w.name);
  check_no_overlap_among(written, read, op);
  if (check_basis) check_orthonormal_all(bases, names, op);
  k.project_list(entries, complement);
}

at::Tensor coefficients_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check_basis) {
  const auto a = validate_projection(G, U, V, "coefficients");
  if (check_basis) check_bases(a, "coefficients", "U", "V");
  return coefficients_compute(G.to(a.compute), a.U, a.V);
}

at::Tensor reconstruct_impl(const at::Tensor& C, const OptTensor& U, const OptTensor& V, bool check_basis) {
  constexpr std::string_view op = "reconstruct";
  check_float_input(C, op, "C");
  check_min_dim(C, 2, op, "C", "[*, k, l]");
  const auto compute = result_dtype(C);
  OptTensor Uc, Vc;
  const struct { const OptTensor& B; const char* name; int64_t cols; const char* what; OptTensor& out; } sides[] = {
      {U, "U", C.size(-2), "k, the rows of C", Uc}, {V, "V", C.size(-1), "l, the columns of C", Vc}};
  for (const auto& s : sides) {
    if (!s.B || !s.B->defined()) continue;
    check_float_input(*s.B, op, s.name);
    check_same_device(C, "C", *s.B, s.name, op);
    check_basis_dtype(*s.B, s.name, C, "C", op);
    TORCH_CHECK(s.B->dim() >= 2 && s.B->size(-1) == s.cols, "unisub.", op, ": ", s.name,
                " must have shape [*, rows, ", s.cols, "] (", s.what, "), got shape ", s.B->sizes());
    check_basis_shape(*s.B, s.name, s.B->size(-2), "its rows", batch_of(C), false, op);
    if (check_basis) check_orthonormal(*s.B, op, s.name);
    s.out = s.B->to(compute);
  }
  return reconstruct_compute(C.to(compute), Uc, Vc);
}

at::Tensor subspace_energy_impl(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check_basis) {
  const at::NoGradGuard no_grad;  // not differentiable (see checks.h)
  const auto a = validate_projection(G, U, V, "subspace_energy");
  if (check_basis) check_bases(a, "subspace_energy", "U", "V");
  const auto Gc = G.to(a.compute);
  // ‖UᵀGV‖² = ‖P_U G P_V‖² for orthonormal bases: only the k × l coefficients are formed.
  // Norms rather than square().sum(): no temporary as large as G, one read of it. The norms are
  // accumulated in G's compute dtype (a float64 accumulation would copy G on CPU), where squares
  // overflow for ‖G‖ ≳ 1e19 and underflow (losing digits, then everything) for ‖G‖ ≲ 1e-12 in
  // float32. The ratio does not depend on G's scale, so those entries are recomputed from G
  // divided by its largest magnitude; G = 0 stays 0/0 = NaN.
  auto inside = at::linalg_vector_norm(coefficients_compute(Gc, a.U, a.V), 2, {-2, -1});
  auto total = at::linalg_vector_norm(Gc, 2, {-2, -1});
  const double low = a.compute == at::kDouble
                         ? std::sqrt(std::numeric_limits<double>::min()) / std::numeric_limits<double>::epsilon()
                         : std::sqrt(std::numeric_limits<float>::min()) / std::numeric_limits<float>::epsilon();
  const auto unsafe = at::isfinite(total).logical_not().logical_or(total < low);
  if (Gc.numel() > 0 && unsafe.any().item<bool>()) {
    auto peak = Gc.abs().amax({-2, -1}, /*keepdim=*/true);
    const auto Gs = Gc / at::where(peak > 0, peak, at::ones_like(peak));
    inside = at::where(unsafe, at::linalg_vector_norm(coefficients_compute(Gs, a.U, a.V), 2, {-2, -1}), inside);
    total = at::where(unsafe, at::linalg_vector_norm(Gs, 2, {-2, -1}), total);
  }
  return inside.div_(total).square_();
}

}  // namespace unisub::detail

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  m.def("project(Tensor G, Tensor? U, Tensor? V, bool complement=False, bool check_basis=True) -> Tensor");
  m.def("project_(Tensor(a!) G, Tensor? U, Tensor? V, bool complement=False, bool check_basis=True) -> ()");
  m.def("project_list_(Tensor(a!)[] Gs, Tensor?[] Us, Tensor?[] Vs, bool complement=False, "
        "bool check_basis=True) -> ()");
  m.def("coefficients(Tensor G, Tensor? U, Tensor? V, bool check_basis=True) -> Tensor");
  m.def("reconstruct(Tensor C, Tensor? U, Tensor? V, bool check_basis=True) -> Tensor");
  m.def("subspace_energy(Tensor G, Tensor? U, Tensor? V, bool check_basis=True) -> Tensor");
}

namespace unisub {
namespace {
using detail::OptTensor;
using Sig3 = at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, bool);

template <typename Sig>
auto typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
}  // namespace

at::Tensor project(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement, bool check_basis) {
  static auto op = typed_op<at::Tensor(const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>("unisub::project");
  return op.call(G, U, V, complement, check_basis);
}

const at::Tensor& project_(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool complement,
                           bool check_basis) {
  static auto op = typed_op<void(const at::Tensor&, const OptTensor&, const OptTensor&, bool, bool)>("unisub::project_");
  op.call(G, U, V, complement, check_basis);
  return G;
}

void project_list_(at::TensorList Gs, const std::vector<OptTensor>& Us, const std::vector<OptTensor>& Vs,
                   bool complement, bool check_basis) {
  static auto op = typed_op<void(at::TensorList, const c10::List<OptTensor>&, const c10::List<OptTensor>&, bool,
                                 bool)>("unisub::project_list_");
  // The dispatcher cannot route a call without any tensor, so the empty list is caught here.
  TORCH_CHECK(!Gs.empty(), "unisub.project_list_: Gs must hold at least one tensor, got an empty list");
  c10::List<OptTensor> us, vs;
  for (const auto& u : Us) us.push_back(u);
  for (const auto& v : Vs) vs.push_back(v);
  op.call(Gs, us, vs, complement, check_basis);
}

at::Tensor coefficients(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check_basis) {
  static auto op = typed_op<Sig3>("unisub::coefficients");
  return op.call(G, U, V, check_basis);
}

at::Tensor reconstruct(const at::Tensor& C, const OptTensor& U, const OptTensor& V, bool check_basis) {
  static auto op = typed_op<Sig3>("unisub::reconstruct");
  return op.call(C, U, V, check_basis);
}

at::Tensor subspace_energy(const at::Tensor& G, const OptTensor& U, const OptTensor& V, bool check_basis) {
  static auto op = typed_op<Sig3>("unisub::subspace_energy");
  return op.call(G, U, V, check_basis);
}

}  // namespace unisub
