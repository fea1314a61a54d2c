#pragma once
// unisub's C++ API: one function per op, each a dispatcher call into libunisub.
#include "unisub/gram.h"
#include "unisub/projection.h"
#include "unisub/metrics.h"
