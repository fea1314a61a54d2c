// Runs an AOTInductor package whose graph calls torch.ops.unisub.*, from C++ without Python:
//
//   unisub_aoti_example MODEL.pt2 DATA.pt
//
// MODEL.pt2 and DATA.pt are written by export.py: DATA.pt holds (inputs, outputs of the eager
// module). The program runs the package on the inputs and compares with the eager outputs.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<torch::Tensor> tensors(const c10::IValue& tuple) {
  std::vector<torch::Tensor> out;
  for (const auto& item : tuple.toTupleRef().elements()) out.push_back(item.toTensor());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: unisub_aoti_example MODEL.pt2 DATA.pt\n";
    return 2;
  }
  try {
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) throw std::runtime_error(std::string("cannot open ") + argv[2]);
    const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    const c10::IValue data = torch::pickle_load(bytes);
    const auto inputs = tensors(data.toTupleRef().elements().at(0));
    const auto expected = tensors(data.toTupleRef().elements().at(1));

    // Loading the package needs nothing of unisub; running it needs the ops registered, which
    // linking unisub::unisub does (libunisub's static registrations run when it is loaded).
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    torch::InferenceMode inference;
    const std::vector<torch::Tensor> outputs = loader.run(inputs);

    bool ok = outputs.size() == expected.size();
    for (std::size_t i = 0; ok && i < outputs.size(); ++i) {
      const bool same = torch::equal(outputs[i], expected[i]);
      std::cout << "output " << i << " " << outputs[i].sizes() << ": "
                << (same ? "bit-identical to eager" : "differs from eager") << "\n";
      ok = same;
    }
    std::cout << (ok ? "unisub AOTInductor example: ok" : "unisub AOTInductor example: mismatch") << std::endl;
    return ok ? 0 : 1;
  } catch (const c10::Error& e) {
    std::cerr << "unisub_aoti_example: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "unisub_aoti_example: " << e.what() << "\n";
    return 1;
  }
}
