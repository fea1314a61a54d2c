// unisub-run-script: run a TorchScript program that calls unisub ops, without Python.
//
//   unisub-run-script MODULE.pt INPUTS.pt OUTPUTS.pt [--method NAME]
//
// INPUTS.pt holds one tensor or a tuple/list of tensors (torch.save); the result is written to
// OUTPUTS.pt, loadable with torch.load. Linking libunisub registers the ops the script calls.
#include <fmt/core.h>
#include <torch/script.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "unisub/unisub.h"

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open '{}' for reading", path));
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file_atomically(const std::string& path, const std::vector<char>& bytes) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw std::runtime_error(fmt::format("cannot open '{}' for writing", tmp));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error(fmt::format("short write to '{}'", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error(fmt::format("cannot rename '{}' to '{}'", tmp, path));
}

std::vector<c10::IValue> as_arguments(const c10::IValue& loaded) {
  if (loaded.isTuple()) {
    const auto& items = loaded.toTupleRef().elements();
    // Not braces: {begin, end} would pick initializer_list<IValue> and turn iterators into bools.
    return std::vector<c10::IValue>(items.begin(), items.end());
  }
  if (loaded.isList()) {
    auto list = loaded.toList();
    return std::vector<c10::IValue>(list.begin(), list.end());
  }
  return {loaded};
}

// One line for the user: no C++ backtrace (c10::Error's what() carries one), and of a TorchScript
// interpreter error ("The following operation failed ... Traceback of TorchScript ...", not a
// c10::Error) its last line, which names the failing op and the reason.
std::string one_line(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find('\n', start), text.size());
    std::string line = text.substr(start, end - start);
    line.erase(0, line.find_first_not_of(" \t\r"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (!line.empty()) lines.push_back(line);
    start = end + 1;
  }
  if (lines.empty()) return "unknown error";
  const bool interpreter = text.find("TorchScript interpreter") != std::string::npos;
  return interpreter ? lines.back() : lines.front();
}

int usage() {
  fmt::print(stderr, "usage: unisub-run-script MODULE.pt INPUTS.pt OUTPUTS.pt [--method NAME]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 6) return usage();
  std::string method = "forward";
  if (argc == 6) {
    if (std::string(argv[4]) != "--method") return usage();
    method = argv[5];
  }
  try {
    auto module = torch::jit::load(argv[1]);
    module.eval();
    const auto inputs = torch::pickle_load(read_file(argv[2]));
    auto fn = module.find_method(method);
    if (!fn) throw std::runtime_error(fmt::format("'{}' has no method '{}'", argv[1], method));
    torch::NoGradGuard no_grad;
    const c10::IValue result = (*fn)(as_arguments(inputs));
    write_file_atomically(argv[3], torch::pickle_save(result));
  } catch (const c10::Error& e) {
    fmt::print(stderr, "unisub-run-script: {}\n", one_line(e.what_without_backtrace()));
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "unisub-run-script: {}\n", one_line(e.what()));
    return 1;
  }
  return 0;
}
