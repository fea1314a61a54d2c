#include "cpu/blas_threads.h"

// MKL's thread-local thread count, exported by the torch builds that link MKL; weak, so that a
// torch without MKL loads libunisub all the same (the pointer is then null). The C entry point is
// MKL_Set_Num_Threads_Local (mkl_service.h maps the lower-case name to it): the lower-case symbol
// itself is the Fortran one, which takes a pointer.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace unisub::detail {

SequentialBlas::SequentialBlas() {
  if (MKL_Set_Num_Threads_Local) previous_ = MKL_Set_Num_Threads_Local(1);
}

// 0 restores "the global setting", which is what an unset thread-local count means
SequentialBlas::~SequentialBlas() {
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
}

}  // namespace unisub::detail
