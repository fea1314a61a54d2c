#pragma once
// unisub's C++ API: one function per op, each a dispatcher call into libunisub.
#include "unisub/decompositions.h"
#include "unisub/gram.h"
#include "unisub/metrics.h"
#include "unisub/projection.h"
