// The profile's stages add up to the time they cover: a stage opened inside another on the same
// thread (the nulls inside the report) is counted for itself only.
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <string>
#include <thread>

#include "analysis/json.h"
#include "analysis/profile.h"

namespace {

double seconds_of(const unisub::analysis::json::Value& profile, const char* stage) {
  const auto* s = profile.find("stages")->find(stage);
  BOOST_REQUIRE(s != nullptr);
  return s->find("seconds")->number;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(profile_stages)

BOOST_AUTO_TEST_CASE(nested_stages_are_not_counted_twice) {
  using namespace std::chrono_literals;
  using unisub::analysis::ScopedStage;
  unisub::analysis::profile_reset();
  const auto start = std::chrono::steady_clock::now();
  {
    ScopedStage outer("report");
    std::this_thread::sleep_for(30ms);
    {
      ScopedStage inner("null");
      std::this_thread::sleep_for(60ms);
    }
    { ScopedStage inner("split_half"); }
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto p = unisub::analysis::json::parse(unisub::analysis::profile_json(false));
  const double report = seconds_of(p, "report"), null = seconds_of(p, "null"), split = seconds_of(p, "split_half");
  BOOST_TEST_INFO("report " << report << " null " << null << " split " << split << " wall " << wall);
  BOOST_CHECK(null >= 0.06 && report >= 0.03);  // what the sleeps guarantee, whatever the load
  // the three add up to the time they cover (counting the inner stages in the outer one too would
  // exceed it by the 60 ms of the inner sleep)
  BOOST_CHECK_SMALL(report + null + split - wall, 0.01);
  BOOST_CHECK_SMALL(p.find("total_seconds")->number - (report + null + split), 1e-12);
  // a stage on another thread is not nested in this thread's stage
  unisub::analysis::profile_reset();
  {
    ScopedStage outer("report");
    std::thread([] {
      ScopedStage other("read");
      std::this_thread::sleep_for(40ms);
    }).join();
  }
  const auto q = unisub::analysis::json::parse(unisub::analysis::profile_json(false));
  BOOST_CHECK(seconds_of(q, "report") >= 0.04 && seconds_of(q, "read") >= 0.04);
  unisub::analysis::profile_reset();
}

BOOST_AUTO_TEST_SUITE_END()
