#!/usr/bin/env bash
# One call on a lent GPU machine (torch with CUDA, nvcc, no network, no Boost; see
# ../shared/BUILDING.md): build libunisub with its CUDA kernels for Hopper, run every test that
# has a CUDA variant, then the GPU benchmarks. Logs and JSON go to $OUT (default ./gpu-out).
#   bash benchmarks/device_run.sh [build] [test] [bench] [issue]     (default: build test bench)
# Pure-Python test dependencies missing there (tensorly) travel as wheels in .whl/.
# GPU_BENCH_ARGS passes options to benchmarks/gpu_jacobi.py (e.g. "--methods jacobi --sizes 32 64").
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" UNISUB_CUDA=ON TORCH_CUDA_ARCH_LIST=9.0
export UNISUB_BUILD_DIR=/tmp/unisub-build
# Built with the image's default compiler (/opt/gcc/bin/g++), libunisub segfaulted whenever an
# error message formatted a number: the backtrace ran through std::ostream code carried inside
# libunisub.so (seen 2026-11-26, H200). Built with the distribution's g++, which links libstdc++
# dynamically as torch does, all CUDA tests pass.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++; fi
export UNISUB_CMAKE_ARGS="-DUNISUB_BUILD_TESTS=OFF -DUNISUB_BUILD_TOOLS=OFF -DCMAKE_CUDA_ARCHITECTURES=90"
export PYTHONPATH="$PWD/torch_ops${PYTHONPATH:+:$PYTHONPATH}"
steps="${*:-build test bench}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

if [[ $steps == *build* ]]; then
  start=$SECONDS
  if ! python3 setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    echo "BUILD FAILED"
    exit 1
  fi
  echo "build: $((SECONDS - start)) s"
fi

if [[ $steps == *test* ]]; then
  start=$SECONDS
  timeout 180 python3 -m pytest tests/python -k cuda -q -n 12 -p no:cacheprovider -rf >"$OUT/tests.log" 2>&1
  echo "tests: rc $? in $((SECONDS - start)) s"
  grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -25
fi

if [[ $steps == *bench* ]]; then
  timeout 170 python3 benchmarks/gpu_jacobi.py ${GPU_BENCH_ARGS:-} --json "$OUT/gpu_jacobi.json" 2>&1 | tee "$OUT/gpu_jacobi.log"
fi

if [[ $steps == *issue* ]]; then
  timeout 120 python3 benchmarks/run.py decompositions --device cuda --size full --min-run-time 0.2 \
    --json "$OUT/decompositions_cuda.json" 2>&1 | tee "$OUT/decompositions_cuda.log"
  timeout 60 python3 benchmarks/lora_gram_accuracy.py --device cuda 2>&1 | tee "$OUT/lora_gram_accuracy_cuda.log"
  # Issue #17's GPU yardstick: the analysis job end to end with --device cuda on 500 rank-16 float16
  # adapters (one layer of q_proj and v_proj, 213 MB), against the time to read the files (cat)
  # and the same job on this machine's CPUs; both reports' eigenvalues compared.
  zoo=/tmp/unisub-lora-zoo-500-1-r16
  timeout 120 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_lora_zoo as b; \
b.make_zoo('$zoo', 500, 1, 16)" >"$OUT/zoo.log" 2>&1 || tail -5 "$OUT/zoo.log"
  cat "$zoo"/*/adapter_model.safetensors >/dev/null
  since() { awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $1 }"; }
  start=$EPOCHREALTIME; cat "$zoo"/*/adapter_model.safetensors >/dev/null
  echo "read (cat, warm): $(since "$start") s" | tee "$OUT/analysis_cuda.log"
  for dev in cuda cpu; do
    start=$EPOCHREALTIME
    timeout 150 python3 -m unisub analyze "$zoo" --out "/tmp/analysis-$dev" --modes delta --device $dev --profile --quiet --no-plots \
      >>"$OUT/analysis_cuda.log" 2>&1
    echo "analyze --device $dev: rc $? in $(since "$start") s" | tee -a "$OUT/analysis_cuda.log"
  done
  python3 - <<'PY' 2>&1 | tee -a "$OUT/analysis_cuda.log"
import json
a, b = (json.load(open(f"/tmp/analysis-{d}/report.json")) for d in ("cuda", "cpu"))
for slot, e in a["slots"].items():
    x, y = e["modes"]["delta"]["singular_values"], b["slots"][slot]["modes"]["delta"]["singular_values"]
    worst = max(abs(u * u - v * v) for u, v in zip(x, y)) / max(v * v for v in y)
    print(f"{slot}: gram {e.get('gram')}; eigenvalues cuda vs cpu: max |dl|/l_max {worst:.2e}")
print("cuda profile:", {k: round(v["seconds"], 3) for k, v in a["profile"]["stages"].items()})
PY
fi
