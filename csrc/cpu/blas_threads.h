#pragma once
// The BLAS and LAPACK single-threaded on this thread while one of these lives. libunisub shares
// independent GEMMs or eigensolvers out among at::parallel_for workers and counts on each call
// running on its own thread. MKL does that inside a parallel region only while its dynamic
// adjustment is on, and torch.set_num_threads turns it off (mkl_set_dynamic(false)): from then on
// every worker's GEMM spread over all the threads again (a team per worker, the cores
// oversubscribed), and the results depended on whether the process had ever called
// set_num_threads (a Python run after it no longer matched unisub-analyze's bytes). Each worker
// sets MKL's thread-local count to one instead. Without MKL (or with another BLAS) it does nothing.
namespace unisub::detail {

class SequentialBlas {
 public:
  SequentialBlas();
  ~SequentialBlas();
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace unisub::detail
