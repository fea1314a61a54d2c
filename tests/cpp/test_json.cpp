// libunisub's JSON parser reads every number of a report back (the run summary, the C++ tool's
// table, resumed entries) and every offset of a safetensors header: a number must come back as the
// double strtod gives for its text, out-of-range ones as ±inf or the underflow the text means, and
// integers exactly.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include "analysis/json.h"
#include "analysis/json_writer.h"

namespace json = unisub::analysis::json;

namespace {

double parsed(const std::string& text) {
  const auto v = json::parse(text);
  BOOST_REQUIRE(v.is_number());
  return v.number;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(json_numbers)

BOOST_AUTO_TEST_CASE(numbers_are_strtods_double) {
  std::mt19937_64 gen(5);
  std::uniform_real_distribution<double> mantissa(-1.0, 1.0);
  std::uniform_int_distribution<int> exponent(-320, 308);
  for (int i = 0; i < 20000; ++i) {
    const double x = std::ldexp(mantissa(gen), 0) * std::pow(10.0, exponent(gen));
    if (!std::isfinite(x)) continue;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", x);
    BOOST_TEST_INFO(buf);
    BOOST_CHECK_EQUAL(parsed(buf), std::strtod(buf, nullptr));
    // the report writer's shortest form parses back to the same double
    BOOST_CHECK_EQUAL(parsed(unisub::analysis::Json(x).dump()), x);
  }
}

BOOST_AUTO_TEST_CASE(out_of_range_and_edge_numbers) {
  const double inf = std::numeric_limits<double>::infinity();
  BOOST_CHECK_EQUAL(parsed("1e400"), inf);
  BOOST_CHECK_EQUAL(parsed("-1e400"), -inf);
  BOOST_CHECK_EQUAL(parsed("1e-400"), 0.0);
  BOOST_CHECK(!std::signbit(parsed("1e-400")) && std::signbit(parsed("-1e-400")));
  BOOST_CHECK_EQUAL(parsed("4.9406564584124654e-324"), std::numeric_limits<double>::denorm_min());
  BOOST_CHECK_EQUAL(parsed("1.7976931348623157e308"), std::numeric_limits<double>::max());
  BOOST_CHECK(std::signbit(parsed("-0")) && parsed("-0.0") == 0.0);
  BOOST_CHECK_EQUAL(parsed("0.1"), 0.1);
  const auto big = json::parse("9007199254740993");  // 2^53 + 1: exact as an integer, not as a double
  BOOST_CHECK(big.integer && big.int_value == 9007199254740993LL);
  const auto frac = json::parse("[1.5e3, 12, -7]");
  BOOST_REQUIRE(frac.is_array() && frac.items.size() == 3);
  BOOST_CHECK(!frac.items[0].integer && frac.items[0].number == 1500.0);
  BOOST_CHECK(frac.items[1].integer && frac.items[1].int_value == 12);
  BOOST_CHECK(frac.items[2].integer && frac.items[2].int_value == -7);
  for (const char* bad : {"01", "1.", ".5", "1e", "-", "+1", "NaN", "Infinity", "0x10"})
    BOOST_CHECK_THROW(json::parse(bad), json::ParseError);
}

BOOST_AUTO_TEST_SUITE_END()
