#define BOOST_TEST_MODULE unisub_cpp_api
#include <boost/test/unit_test.hpp>
