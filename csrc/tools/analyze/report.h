// The report entries are computed by libunisub (unisub/analysis.h), the code `unisub analyze`
// runs too, and come back as strict JSON text; the tool assembles them into its report.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace unisub_tool {

// A report entry from libunisub's JSON text (its numbers parse back to the same doubles).
nlohmann::json parse_entry(const std::string& text);

}  // namespace unisub_tool
