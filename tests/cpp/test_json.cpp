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

// parse_paths builds only the members on its paths ("*" any name; a path's end whole), and checks
// the rest of the text as strictly as parse does.
BOOST_AUTO_TEST_SUITE(json_paths)

BOOST_AUTO_TEST_CASE(builds_the_named_members_as_parse_does) {
  const std::string text =
      R"({"shape": [4, 5], "modes": {"out": {"rank": 3, "scores": [[1, 2], [3, 4]], "null": {"edge": 1.5, "big": [1e300, -0.25]}},)"
      R"( "in": {"rank": 2, "null": null, "split_half": {"max_sin": 0.125, "angles": [1, 2]}}}, "energy": {"mean_share": 0.5, "x": "s"}})";
  const auto all = json::parse(text);
  const auto some = json::parse_paths(text, {{"shape"}, {"modes", "*", "rank"}, {"modes", "*", "null", "edge"},
                                             {"modes", "in", "split_half", "max_sin"}, {"energy", "mean_share"}});
  BOOST_TEST(some.find("shape")->items.size() == 2u);
  BOOST_TEST(some.number_at({"modes", "out", "rank"}) == 3);
  BOOST_TEST(some.number_at({"modes", "in", "rank"}) == 2);
  BOOST_TEST(some.number_at({"modes", "out", "null", "edge"}) == all.number_at({"modes", "out", "null", "edge"}));
  BOOST_TEST(some.find_path({"modes", "in", "null"})->is_null());  // not an object: as it is
  BOOST_TEST(some.number_at({"modes", "in", "split_half", "max_sin"}) == 0.125);
  BOOST_TEST(some.number_at({"energy", "mean_share"}) == 0.5);
  // what no path names is not there
  BOOST_TEST(!some.find_path({"modes", "out", "scores"}));
  BOOST_TEST(!some.find_path({"modes", "out", "null", "big"}));
  BOOST_TEST(!some.find_path({"modes", "in", "split_half", "angles"}));
  BOOST_TEST(!some.find_path({"energy", "x"}));
  BOOST_TEST(some.find("modes")->find("out")->members.size() == 2u);  // rank, null
}

BOOST_AUTO_TEST_CASE(skipped_parts_are_checked) {
  const std::vector<std::vector<std::string>> keep = {{"a"}};
  for (const char* bad : {R"({"a": 1, "b": [1, 2,]})", R"({"a": 1, "b": {"c": 1, "c": 2}})", R"({"a": 1, "b": 01})",
                          R"({"a": 1, "b": NaN})", R"({"a": 1, "b": [1, 2})", R"({"a": 1, "b": "\x01"})",
                          R"({"a": 1, "a": 2})", R"({"a": 1, "b": 1} x)"}) {
    BOOST_TEST_INFO(bad);
    BOOST_CHECK_THROW(json::parse_paths(bad, keep), json::ParseError);
  }
  // a duplicate of a skipped key among more than 16 members (the hash-set branch)
  std::string many = "{";
  for (int i = 0; i < 20; ++i) many += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ", ";
  BOOST_CHECK_NO_THROW(json::parse_paths(many + "\"a\": 1}", keep));
  BOOST_CHECK_THROW(json::parse_paths(many + "\"k3\": 1}", keep), json::ParseError);
  BOOST_CHECK_THROW(json::parse(many + "\"k3\": 1}"), json::ParseError);
}

BOOST_AUTO_TEST_SUITE_END()
