#include "report.h"

namespace unisub_tool {

nlohmann::json parse_entry(const std::string& text) { return nlohmann::json::parse(text); }

}  // namespace unisub_tool
