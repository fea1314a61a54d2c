# Locate LibTorch through the installed `torch` wheel, so that C++ and Python users build against
# the very torch they run (ABI, version and CUDA flavour all match). Re-queried on every
# configure, so a build folder reused with another Python follows that Python's torch.
# A standalone LibTorch: -DUNISUB_TORCH_FROM_PYTHON=OFF -DTorch_DIR=<libtorch>/share/cmake/Torch
option(UNISUB_TORCH_FROM_PYTHON "Find LibTorch through the Python interpreter's torch" ON)
if(UNISUB_TORCH_FROM_PYTHON)
  find_package(Python 3.9 REQUIRED COMPONENTS Interpreter)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import torch.utils; print(torch.utils.cmake_prefix_path, end='')"
    OUTPUT_VARIABLE _unisub_torch_prefix RESULT_VARIABLE _unisub_rc)
  if(NOT _unisub_rc EQUAL 0)
    message(FATAL_ERROR "unisub: cannot import torch with ${Python_EXECUTABLE}: install torch there and build "
                        "with `pip install --no-build-isolation .` (pip's build isolation hides it); for a "
                        "standalone LibTorch, pass -DUNISUB_TORCH_FROM_PYTHON=OFF -DTorch_DIR=<libtorch>/share/cmake/Torch")
  endif()
  if(DEFINED UNISUB_TORCH_PREFIX AND NOT UNISUB_TORCH_PREFIX STREQUAL _unisub_torch_prefix)
    # Another torch than last configure: drop every cached library path found under the old one.
    get_cmake_property(_unisub_cached CACHE_VARIABLES)
    foreach(_var IN LISTS _unisub_cached)
      if(_var MATCHES "_LIBRARY$")
        unset(${_var} CACHE)
      endif()
    endforeach()
  endif()
  set(UNISUB_TORCH_PREFIX "${_unisub_torch_prefix}" CACHE INTERNAL "torch cmake prefix of the last configure")
  set(Torch_DIR "${_unisub_torch_prefix}/Torch" CACHE PATH "" FORCE)
  set(Caffe2_DIR "${_unisub_torch_prefix}/Caffe2" CACHE PATH "" FORCE)
endif()
# torch's wheels link kineto (the profiler) into libtorch_cpu, yet TorchConfig.cmake looks for a
# separate libkineto and warns "library kineto not found" on every configure where there is none.
# Consumers of unisub link torch's imported target only, so the answer "kineto is in torch" (the
# target's name as kineto_LIBRARY) is true and silences it; unisubConfig.cmake does the same when
# the torch found here has no separate libkineto.
set(UNISUB_KINETO_IN_TORCH OFF)
if(UNISUB_TORCH_FROM_PYTHON AND (NOT kineto_LIBRARY OR kineto_LIBRARY STREQUAL "torch"))
  file(GLOB _unisub_kineto "${_unisub_torch_prefix}/../../lib/libkineto*")
  if(NOT _unisub_kineto)
    set(UNISUB_KINETO_IN_TORCH ON)
    set(kineto_LIBRARY torch CACHE STRING "kineto is linked into libtorch_cpu (unisub)" FORCE)
  endif()
endif()
find_package(Torch REQUIRED)
message(STATUS "unisub: torch ${Torch_VERSION} at ${TORCH_INSTALL_PREFIX}")
