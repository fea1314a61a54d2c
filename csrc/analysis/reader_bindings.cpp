// The reader as TorchScript custom classes, so Python (torch.classes.unisub.*) calls the same
// code as the C++ tool, without a Python C-API module:
//   SafetensorsFile(path)            one file's validated header; get(key) reads a tensor
//   Checkpoint(kind, paths, name)    kind "files" (shards of one model), "folder" (a Hugging Face
//                                    model folder) or "adapter" (a PEFT folder)
//   AdapterConfig(folder)            adapter_config.json's rules, for adapters Python reads with
//                                    torch.load (adapter_model.bin)
// and analysis_weight_problem(t, scaling) / analysis_delta_problem(B, A, s), the rules what is read
// for the analysis must pass.
// Shapes travel as one flat int list per object: for each tensor (in keys() order) its number of
// dimensions, the dimensions, then (SafetensorsFile only) its absolute begin and end offsets.
// A ReadError becomes a ValueError whose message is the C++ one followed by a line holding
// "\x1e" + hex(path) + "\x1f" + hex(slot) + "\x1f" + hex(message), which unisub.io turns into a
// CheckpointError with the same text, path and slot.
#include <torch/custom_class.h>
#include <torch/library.h>

#include "analysis/binding_errors.h"
#include "analysis/checkpoint_holder.h"
#include "analysis/model_reading.h"
#include "analysis/reader.h"
#include "ops/checks.h"

namespace unisub::analysis {
namespace {

void append_shape(std::vector<int64_t>& out, const std::vector<int64_t>& shape) {
  out.push_back(static_cast<int64_t>(shape.size()));
  out.insert(out.end(), shape.begin(), shape.end());
}

// Inverse of append_shape for `n` tensors.
std::vector<std::vector<int64_t>> shapes_of(size_t n, const std::vector<int64_t>& layout) {
  std::vector<std::vector<int64_t>> shapes;
  size_t i = 0;
  for (size_t k = 0; k < n; ++k) {
    TORCH_CHECK_VALUE(i < layout.size(), "layout: too short for ", n, " tensors");
    const auto d = layout[i++];
    TORCH_CHECK_VALUE(d >= 0 && i + static_cast<size_t>(d) <= layout.size(), "layout: bad number of dimensions");
    shapes.emplace_back(layout.begin() + static_cast<std::ptrdiff_t>(i), layout.begin() + static_cast<std::ptrdiff_t>(i + d));
    i += static_cast<size_t>(d);
  }
  TORCH_CHECK_VALUE(i == layout.size(), "layout: ", layout.size() - i, " values left over");
  return shapes;
}

struct SafetensorsFileHolder : torch::CustomClassHolder {
  SafetensorsHeader h;
};

struct AdapterConfigHolder : torch::CustomClassHolder {
  AdapterConfig cfg;
};

template <class Map>
std::vector<std::string> map_keys(const Map& m) {
  std::vector<std::string> out;
  for (const auto& [k, _] : m) out.push_back(k);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(unisub, m) {
  // the reading rule (model_reading.h) for tensors Python reads itself (torch.load): why the analysis
  // refuses one, or "" (kernels below)
  m.def("analysis_weight_problem(Tensor t, float? scaling=None) -> str");
  m.def("analysis_delta_problem(Tensor B, Tensor A, float s) -> (str, str)");
  m.class_<SafetensorsFileHolder>("SafetensorsFile")
      .def(torch::init([](const std::string& path) {
        auto self = c10::make_intrusive<SafetensorsFileHolder>();
        self->h = guarded([&] { return read_safetensors_header(path); });
        return self;
      }))
      .def_static("built_with_pcre2", []() { return built_with_pcre2(); })
      .def("path", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self) { return self->h.path; })
      .def("file_size", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self) {
        return static_cast<int64_t>(self->h.file_size);
      })
      .def("keys", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self) { return map_keys(self->h.tensors); })
      .def("dtypes", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self) {
        std::vector<std::string> out;
        for (const auto& [_, t] : self->h.tensors) out.push_back(t.dtype);
        return out;
      })
      .def("layout", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self) {
        std::vector<int64_t> out;
        for (const auto& [_, t] : self->h.tensors) {
          append_shape(out, t.shape);
          out.push_back(static_cast<int64_t>(t.begin));
          out.push_back(static_cast<int64_t>(t.end));
        }
        return out;
      })
      .def("metadata", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self) {
        c10::Dict<std::string, std::string> out;
        for (const auto& [k, v] : self->h.metadata) out.insert(k, v);
        return out;
      })
      .def("get", [](const c10::intrusive_ptr<SafetensorsFileHolder>& self, const std::string& key) {
        return guarded([&] { return read_safetensors_tensor(self->h, key); });
      });

  m.class_<CheckpointHolder>("Checkpoint")
      .def(torch::init([](const std::string& kind, const std::vector<std::string>& paths, const std::string& name) {
        auto self = c10::make_intrusive<CheckpointHolder>();
        TORCH_CHECK_VALUE(kind == "files" || paths.size() == 1, "Checkpoint(", kind, "): takes one folder");
        self->ck = guarded([&] {
          if (kind == "files") return open_safetensors(paths, name);
          if (kind == "folder") return open_model_folder(paths[0]);
          if (kind == "adapter") return open_adapter(paths[0]);
          TORCH_CHECK_VALUE(false, "Checkpoint: kind must be 'files', 'folder' or 'adapter', got '", kind, "'");
        });
        return self;
      }))
      .def("name", [](const c10::intrusive_ptr<CheckpointHolder>& self) { return self->ck.name; })
      .def("keys", [](const c10::intrusive_ptr<CheckpointHolder>& self) { return self->ck.keys(); })
      .def("dtypes", [](const c10::intrusive_ptr<CheckpointHolder>& self) {
        std::vector<std::string> out;
        for (const auto& k : self->ck.keys()) out.push_back(self->ck.info(k).dtype);
        return out;
      })
      .def("layout", [](const c10::intrusive_ptr<CheckpointHolder>& self) {
        std::vector<int64_t> out;
        for (const auto& k : self->ck.keys()) append_shape(out, self->ck.info(k).shape);
        return out;
      })
      .def("files", [](const c10::intrusive_ptr<CheckpointHolder>& self) {
        std::vector<std::string> out;
        for (const auto& k : self->ck.keys()) out.push_back(self->ck.file_of(k));
        return out;
      })
      .def("config_text", [](const c10::intrusive_ptr<CheckpointHolder>& self) {
        return self->ck.config ? self->ck.config->text : std::string();
      })
      .def("scalings", [](const c10::intrusive_ptr<CheckpointHolder>& self) {
        c10::Dict<std::string, double> out;
        for (const auto& [k, s] : self->ck.scalings) out.insert(k, s);
        return out;
      })
      .def("get", [](const c10::intrusive_ptr<CheckpointHolder>& self, const std::string& key, bool scale) {
        return guarded([&] { return self->ck.get(key, scale); });
      });

  m.class_<AdapterConfigHolder>("AdapterConfig")
      .def(torch::init([](const std::string& folder) {
        auto self = c10::make_intrusive<AdapterConfigHolder>();
        self->cfg = guarded([&] { return AdapterConfig::read(folder); });
        return self;
      }))
      .def("text", [](const c10::intrusive_ptr<AdapterConfigHolder>& self) { return self->cfg.text; })
      // names in the file -> names as analysed (PEFT's prefix dropped); two that collide are an error
      .def("names", [](const c10::intrusive_ptr<AdapterConfigHolder>& self, const std::vector<std::string>& raw,
                       const std::string& file) {
        return guarded([&] {
          std::map<std::string, std::string> seen;
          std::vector<std::string> out;
          for (const auto& k : raw) {
            auto as = adapter_tensor_name(k);
            auto [it, fresh] = seen.emplace(as, k);
            if (!fresh) throw ReadError(file, "also stored as '" + it->second + "': a tensor must be in the file once", as);
            out.push_back(std::move(as));
          }
          return out;
        });
      })
      // {lora_B name: scaling} for tensors (names as analysed, shapes as a flat layout) of `file`
      .def("scalings", [](const c10::intrusive_ptr<AdapterConfigHolder>& self, const std::vector<std::string>& keys,
                          const std::vector<int64_t>& layout, const std::string& file) {
        const auto shapes = shapes_of(keys.size(), layout);
        return guarded([&] {
          c10::Dict<std::string, double> out;
          for (size_t i = 0; i < keys.size(); ++i)
            if (auto s = self->cfg.check_factor(keys[i], shapes[i], file)) out.insert(keys[i], *s);
          return out;
        });
      });
}

}  // namespace unisub::analysis

// CompositeExplicitAutograd, not catch-all: the tracers would run a catch-all kernel on fake tensors
TORCH_LIBRARY_IMPL(unisub, CompositeExplicitAutograd, m) {
  m.impl("analysis_weight_problem", [](const at::Tensor& t, std::optional<double> scaling) {
    unisub::detail::check_has_values(t, "analysis_weight_problem", "t");
    return unisub::analysis::weight_problem(t, scaling);
  });
  m.impl("analysis_delta_problem", [](const at::Tensor& B, const at::Tensor& A, double s) {
    unisub::detail::check_has_values(B, "analysis_delta_problem", "B");
    unisub::detail::check_has_values(A, "analysis_delta_problem", "A");
    auto [which, why] = unisub::analysis::delta_problem(B, A, s);
    return std::make_tuple(which, why);
  });
}
