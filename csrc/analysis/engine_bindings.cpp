// The analysis engine as TorchScript custom classes and ops, so that unisub.analyze (Python) runs
// the code unisub-analyze (C++) runs, without a Python C-API module:
//   torch.classes.unisub.ModeAccumulator(m, n, modes, center, device)
//   torch.classes.unisub.DeltaAccumulator(m, n, center, device)
//   torch.classes.unisub.OutputFolder(dir, run_json, resume, primary)
//   torch.ops.unisub.{discover_sources, slot_file_stem, save_safetensors, write_file_atomically}
// A finished slot crosses as (entry, tensor names, tensors, metadata): SlotResult's fields.
#include <torch/custom_class.h>
#include <torch/library.h>

#include "analysis/accumulators.h"
#include "analysis/binding_errors.h"
#include "analysis/checkpoint_holder.h"
#include "analysis/discover.h"
#include "analysis/model_reading.h"
#include "analysis/output_folder.h"
#include "analysis/profile.h"
#include "analysis/release_memory.h"
#include "analysis/run_report.h"
#include "analysis/slot_result.h"
#include "analysis/writer.h"

namespace unisub::analysis {
namespace {

using SlotTuple = std::tuple<std::string, std::vector<std::string>, std::vector<at::Tensor>, std::string>;

SlotTuple to_tuple(const SlotResult& r) {
  std::vector<std::string> names;
  std::vector<at::Tensor> tensors;
  for (const auto& [k, t] : r.tensors) names.push_back(k), tensors.push_back(t);
  return {r.entry, names, tensors, r.meta};
}

SlotResult from_parts(const std::string& entry, const std::vector<std::string>& names,
                      const std::vector<at::Tensor>& tensors, const std::string& meta) {
  TORCH_CHECK_VALUE(names.size() == tensors.size(), "a slot result needs one name per tensor, got ", names.size(),
                    " names and ", tensors.size(), " tensors");
  SlotResult r{entry, {}, meta};
  for (size_t i = 0; i < names.size(); ++i) r.tensors.emplace_back(names[i], tensors[i]);
  return r;
}

ReportOptions options_of(const std::vector<double>& taus, const std::vector<int64_t>& error_ranks) {
  for (double t : taus) TORCH_CHECK_VALUE(t > 0 && t <= 1, "taus must lie in (0, 1], got ", t);
  return {taus, error_ranks};
}

struct ModeAccumulatorHolder : torch::CustomClassHolder {
  ModeAccumulator acc;
  ModeAccumulatorHolder(int64_t m, int64_t n, std::vector<std::string> modes, bool center, const std::string& device)
      : acc(m, n, std::move(modes), center, at::Device(device)) {}
};

struct DeltaAccumulatorHolder : torch::CustomClassHolder {
  DeltaAccumulator acc;
  DeltaAccumulatorHolder(int64_t m, int64_t n, bool center, const std::string& device)
      : acc(m, n, center, at::Device(device)) {}
};

struct DeltaStoreReuseHolder : torch::CustomClassHolder {
  DeltaStoreReuse reuse;
};

struct OutputFolderHolder : torch::CustomClassHolder {
  std::unique_ptr<OutputFolder> folder;
  OutputFolder& get() {
    TORCH_CHECK_VALUE(folder, "OutputFolder: already closed");
    return *folder;
  }
};

using ModePtr = c10::intrusive_ptr<ModeAccumulatorHolder>;
using DeltaPtr = c10::intrusive_ptr<DeltaAccumulatorHolder>;

std::vector<at::Tensor> owned(std::vector<at::Tensor> tensors) {
  for (auto& t : tensors) t = t.clone(at::MemoryFormat::Contiguous);
  return tensors;
}
using FolderPtr = c10::intrusive_ptr<OutputFolderHolder>;

std::tuple<std::vector<std::string>, std::vector<std::string>> discover_op(std::vector<std::string> paths) {
  const auto found = guarded([&] { return discover_sources(paths); });
  std::vector<std::string> p, k;
  for (const auto& s : found) p.push_back(s.path), k.push_back(s.kind);
  return {p, k};
}

void save_safetensors_op(std::string path, std::vector<std::string> names, std::vector<at::Tensor> tensors,
                         std::vector<std::string> meta_keys, std::vector<std::string> meta_values) {
  TORCH_CHECK_VALUE(names.size() == tensors.size(), "save_safetensors: one name per tensor, got ", names.size(),
                    " and ", tensors.size());
  TORCH_CHECK_VALUE(meta_keys.size() == meta_values.size(), "save_safetensors: one value per metadata key");
  std::vector<std::pair<std::string, at::Tensor>> items;
  for (size_t i = 0; i < names.size(); ++i) items.emplace_back(names[i], tensors[i]);
  std::map<std::string, std::string> meta;
  for (size_t i = 0; i < meta_keys.size(); ++i) meta[meta_keys[i]] = meta_values[i];
  guarded([&] { save_safetensors(path, items, meta); });
}

void write_file_op(std::string path, std::string text) { guarded([&] { write_file_atomically(path, text); }); }

}  // namespace
}  // namespace unisub::analysis

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  using namespace unisub::analysis;
  m.def("discover_sources(str[] paths) -> (str[], str[])", &discover_op);
  m.def("slot_file_stem(str slot) -> str", [](std::string slot) { return slot_file_stem(slot); });
  m.def("save_safetensors(str path, str[] names, Tensor[] tensors, str[] meta_keys, str[] meta_values) -> ()",
        &save_safetensors_op);
  m.def("write_file_atomically(str path, str text) -> ()", &write_file_op);
  m.def("analysis_options_json(str[] slots, str[] modes, float? energy, int? rank, bool center, int batch_size, "
        "int world, bool scale_lora, bool include_1d, float[] taus, int[] error_ranks, str[] delta_slots, "
        "int eigen_weights, int max_gram_bytes=2147483648, str gram_precision=\"float64\") -> str",
        [](std::vector<std::string> slots, std::vector<std::string> modes, std::optional<double> energy,
           std::optional<int64_t> rank, bool center, int64_t batch_size, int64_t world, bool scale_lora, bool include_1d,
           std::vector<double> taus, std::vector<int64_t> error_ranks, std::vector<std::string> delta_slots,
           int64_t eigen_weights, int64_t max_gram_bytes, std::string gram_precision) {
          parse_gram_precision(gram_precision);  // a bad name is an error here, before any output
          return options_json({slots, modes, delta_slots, energy, rank, center, scale_lora, include_1d, batch_size,
                               world, eigen_weights, taus, error_ranks, max_gram_bytes, gram_precision});
        });
  m.def("analysis_run_json(str[] sources, int[] source_bytes, str options) -> str",
        [](std::vector<std::string> sources, std::vector<int64_t> bytes, std::string options) {
          return run_json(sources, bytes, options);
        });
  m.def("analysis_report_json(str tool, str[] sources, str options, str[] skipped_slots, str[] skipped_reasons, "
        "str[] slots, str[] entries, str profile=\"\", str plan=\"\") -> str",
        [](std::string tool, std::vector<std::string> sources, std::string options,
           std::vector<std::string> skipped_slots, std::vector<std::string> reasons, std::vector<std::string> slots,
           std::vector<std::string> entries, std::string profile, std::string plan) {
          TORCH_CHECK_VALUE(skipped_slots.size() == reasons.size() && slots.size() == entries.size(),
                            "analysis_report_json: one reason per skipped slot and one entry per slot");
          std::vector<std::pair<std::string, std::string>> skipped, items;
          for (size_t i = 0; i < reasons.size(); ++i) skipped.emplace_back(skipped_slots[i], reasons[i]);
          for (size_t i = 0; i < entries.size(); ++i) items.emplace_back(slots[i], entries[i]);
          return report_json(tool, sources, options, skipped, items, profile, plan);
        });
  m.def("analysis_profile_reset() -> ()", [] { profile_reset(); });
  m.def("release_freed_memory() -> ()", [] { release_freed_memory(); });
  m.def("analysis_profile_json(bool measure_gemm) -> str", [](bool measure) { return profile_json(measure); });
  m.def("analysis_profile_table(str profile) -> str", [](std::string text) { return profile_table(text); });

  m.class_<ModeAccumulatorHolder>("ModeAccumulator")
      .def(torch::init<int64_t, int64_t, std::vector<std::string>, bool, std::string>())
      .def("update", [](const ModePtr& self, std::vector<at::Tensor> models) { self->acc.update(models); })
      .def("merge", [](const ModePtr& self, const ModePtr& other) { self->acc.merge(other->acc); })
      .def("load", [](const ModePtr& self, int64_t count, at::Tensor mean, std::vector<at::Tensor> grams,
                      int64_t float32_models, double float32_energy) {
        self->acc.load(count, mean, grams, float32_models, float32_energy);
      })
      .def("set_gram_precision", [](const ModePtr& self, std::string p) {
        self->acc.set_gram_precision(parse_gram_precision(p));
      })
      .def("gram_precision", [](const ModePtr& self) { return gram_precision_name(self->acc.gram_precision()); })
      .def("float32_models", [](const ModePtr& self) { return self->acc.float32_models(); })
      .def("float32_energy", [](const ModePtr& self) { return self->acc.float32_energy(); })
      .def("precision_json", [](const ModePtr& self) { return self->acc.precision_json(); })
      .def("count", [](const ModePtr& self) { return self->acc.count(); })
      .def("shape", [](const ModePtr& self) { return std::vector<int64_t>{self->acc.rows(), self->acc.cols()}; })
      .def("modes", [](const ModePtr& self) { return self->acc.modes(); })
      .def("center", [](const ModePtr& self) { return self->acc.center(); })
      .def("mean", [](const ModePtr& self) { return self->acc.mean(); })
      .def("grams", [](const ModePtr& self) { return self->acc.grams(); })
      .def("spectra", [](const ModePtr& self, std::optional<int64_t> rank, std::optional<double> energy) {
        auto s = mode_spectra(self->acc, rank, energy);
        return std::make_tuple(s.eigenvalues, s.bases);
      })
      // self: the even half (models of even index), other: the odd half
      .def("finalize_slot", [](const ModePtr& self, const ModePtr& odd, std::string slot, std::optional<int64_t> rank,
                               std::optional<double> energy, int64_t null_seed, std::string metadata,
                               std::vector<double> taus, std::vector<int64_t> error_ranks) {
        return to_tuple(finalize_mode_slot(slot, self->acc, odd->acc, rank, energy, null_seed, metadata,
                                           options_of(taus, error_ranks)));
      });

  // alive around the delta slots: a released store is kept for the next slot (store_reuse.h)
  m.class_<DeltaStoreReuseHolder>("DeltaStoreReuse").def(torch::init<>());

  m.class_<DeltaAccumulatorHolder>("DeltaAccumulator")
      .def(torch::init<int64_t, int64_t, bool, std::string>())
      .def("add", [](const DeltaPtr& self, at::Tensor B, at::Tensor A, double scaling, int64_t id) {
        self->acc.add(B, A, scaling, id);
      })
      // one model's factors read from a checkpoint of libunisub's reader and added, by the rule
      // unisub-analyze follows (model_reading.h): one call a model instead of six
      // (the checkpoint typed Any: reader_bindings.cpp registers its class, maybe after this file's)
      .def("add_model", [](const DeltaPtr& self, c10::IValue model, std::string a_key, std::string b_key, bool scale,
                           int64_t id) {
        TORCH_CHECK_TYPE(model.isCustomClass() && model.type()->str() == "__torch__.torch.classes.unisub.Checkpoint",
                         "DeltaAccumulator.add_model: model must be a torch.classes.unisub.Checkpoint, got ",
                         model.isCustomClass() ? model.type()->str() : model.tagKind());
        const auto ck = model.toCustomClass<CheckpointHolder>();
        guarded([&] { add_delta_model(self->acc, ck->ck, a_key, b_key, scale, id); });
      })
      .def("merge", [](const DeltaPtr& self, const DeltaPtr& other) { self->acc.merge(other->acc); })
      .def("reserve", [](const DeltaPtr& self, int64_t models) { self->acc.reserve(models); })
      .def("sort_by_id", [](const DeltaPtr& self) { self->acc.sort_by_id(); })
      .def("count", [](const DeltaPtr& self) { return self->acc.count(); })
      .def("shape", [](const DeltaPtr& self) { return std::vector<int64_t>{self->acc.rows(), self->acc.cols()}; })
      .def("center", [](const DeltaPtr& self) { return self->acc.center(); })
      // copies: the accumulator's store is not the caller's to change (nor to save, with its spare rows)
      .def("B", [](const DeltaPtr& self) { return owned(self->acc.B()); })
      .def("A", [](const DeltaPtr& self) { return owned(self->acc.A()); })
      .def("scalings", [](const DeltaPtr& self) { return self->acc.scalings(); })
      .def("ids", [](const DeltaPtr& self) { return self->acc.ids(); })
      .def("ranks", [](const DeltaPtr& self) { return self->acc.ranks(); })
      .def("factors", [](const DeltaPtr& self) {
        auto [B, A] = self->acc.factors(at::kDouble);
        return std::make_tuple(B, A);
      })
      .def("gram", [](const DeltaPtr& self, bool center) { return self->acc.gram(center); })
      .def("set_gram_precision", [](const DeltaPtr& self, std::string p) {
        self->acc.set_gram_precision(parse_gram_precision(p));
      })
      .def("gram_precision", [](const DeltaPtr& self) { return gram_precision_name(self->acc.gram_precision()); })
      .def("precision_json", [](const DeltaPtr& self) { return self->acc.precision_json(); })
      .def("combine", [](const DeltaPtr& self, at::Tensor weights) { return self->acc.combine(weights); })
      .def("finalize_slot", [](const DeltaPtr& self, std::string slot, std::optional<int64_t> rank,
                               std::optional<double> energy, int64_t eigen_weights, int64_t null_seed,
                               std::string metadata, std::vector<double> taus, std::vector<int64_t> error_ranks,
                               bool release_factors) {
        return to_tuple(finalize_delta_slot(slot, self->acc, rank, energy, eigen_weights, null_seed, metadata,
                                            options_of(taus, error_ranks), release_factors));
      })
      .def("release_factors", [](const DeltaPtr& self) { self->acc.release_factors(); })
      .def("factors_released", [](const DeltaPtr& self) { return self->acc.factors_released(); });

  m.class_<OutputFolderHolder>("OutputFolder")
      .def(torch::init([](std::string dir, std::string run_json, bool resume, bool primary) {
        auto h = c10::make_intrusive<OutputFolderHolder>();
        h->folder = guarded([&] { return std::make_unique<OutputFolder>(dir, run_json, resume, primary); });
        return h;
      }))
      .def("close", [](const FolderPtr& self) {
        if (self->folder) self->folder->close();
        self->folder.reset();
      })
      .def("subspace_path", [](const FolderPtr& self, std::string slot) { return self->get().subspace_path(slot); })
      .def("entry_path", [](const FolderPtr& self, std::string slot) { return self->get().entry_path(slot); })
      .def("finished", [](const FolderPtr& self, std::string slot) { return self->get().finished(slot); })
      .def("load_entry", [](const FolderPtr& self, std::string slot) {
        return guarded([&] { return self->get().load_entry(slot); });
      })
      .def("save_slot", [](const FolderPtr& self, std::string slot, std::string entry, std::vector<std::string> names,
                           std::vector<at::Tensor> tensors, std::string meta) {
        guarded([&] { self->get().save_slot(slot, from_parts(entry, names, tensors, meta)); });
      })
      .def("write_report", [](const FolderPtr& self, std::string text) {
        guarded([&] { self->get().write_report(text); });
      })
      .def("save_partial_modes", [](const FolderPtr& self, std::string slot, int64_t next_batch, const ModePtr& even,
                                    const ModePtr& odd, int64_t rank_id) {
        guarded([&] { self->get().save_partial(slot, next_batch, even->acc, odd->acc, rank_id); });
      })
      .def("load_partial_modes", [](const FolderPtr& self, std::string slot, const ModePtr& even, const ModePtr& odd,
                                    int64_t rank_id) {
        return guarded([&] { return self->get().load_partial(slot, even->acc, odd->acc, rank_id); });
      })
      .def("save_partial_delta", [](const FolderPtr& self, std::string slot, int64_t next_batch, const DeltaPtr& acc,
                                    int64_t rank_id) {
        guarded([&] { self->get().save_partial(slot, next_batch, acc->acc, rank_id); });
      })
      .def("load_partial_delta", [](const FolderPtr& self, std::string slot, const DeltaPtr& acc, int64_t rank_id) {
        return guarded([&] { return self->get().load_partial(slot, acc->acc, rank_id); });
      })
      .def("drop_partial", [](const FolderPtr& self, int64_t rank_id) { self->get().drop_partial(rank_id); });
}
