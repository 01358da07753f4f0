# Finds everything libinsitra.a needs, the standard way, and fails with a
# message that says what to install.

find_package(MPI REQUIRED COMPONENTS C)
find_package(OpenMP REQUIRED COMPONENTS C)

set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT HDF5_IS_PARALLEL)
  message(FATAL_ERROR
    "insitra needs a parallel (MPI) build of HDF5, but the HDF5 found (${HDF5_C_LIBRARIES}) "
    "is serial. Install one (Debian: libhdf5-mpich-dev; Spack: hdf5+mpi) or point HDF5_ROOT at it.")
endif()

# CBLAS: cblas.h and the cblas_* functions, from any BLAS that has both
# (OpenBLAS carries them in libopenblas itself). A caller that already knows
# the provider (Spack) passes BLAS_LIBRARIES and INSITRA_CBLAS_INCLUDE_DIR:
# FindBLAS is skipped then, since it would discard a given BLAS_LIBRARIES and
# search by vendor. Otherwise FindBLAS looks for BLA_VENDOR (OpenBLAS unless
# set); INSITRA_BLAS_FROM_FINDBLAS tells insitraConfig.cmake which it was.
if(BLAS_LIBRARIES)
  set(INSITRA_BLAS_FROM_FINDBLAS OFF)
  set(insitra_blas_link "${BLAS_LIBRARIES}")
else()
  set(INSITRA_BLAS_FROM_FINDBLAS ON)
  set(BLA_VENDOR OpenBLAS CACHE STRING "BLAS vendor (FindBLAS)")
  find_package(BLAS REQUIRED)
  set(insitra_blas_link BLAS::BLAS)
endif()
# BLIS (BLA_VENDOR=FLAME) keeps its cblas.h apart from OpenBLAS's on Debian:
# looked at first, so that the header matches the library.
set(insitra_blis_include_hints "")
foreach(dir IN LISTS CMAKE_SYSTEM_INCLUDE_PATH CMAKE_C_IMPLICIT_INCLUDE_DIRECTORIES)
  list(APPEND insitra_blis_include_hints "${dir}/${CMAKE_LIBRARY_ARCHITECTURE}/blis-openmp" "${dir}/blis")
endforeach()
set(insitra_cblas_hints "")
if(BLA_VENDOR STREQUAL "FLAME")
  set(insitra_cblas_hints ${insitra_blis_include_hints})
endif()
find_path(INSITRA_CBLAS_INCLUDE_DIR cblas.h
  HINTS ${insitra_cblas_hints}
  PATH_SUFFIXES openblas openblas-openmp openblas-pthread blis
  DOC "Directory holding cblas.h")
if(NOT INSITRA_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: install a BLAS with the CBLAS interface (Debian: "
                      "libopenblas-openmp-dev) or set INSITRA_CBLAS_INCLUDE_DIR")
endif()
# A Fortran-only BLAS (reference BLAS, BLIS without CBLAS) lacks cblas_sgemm:
# say so here rather than with an undefined symbol when a program links. The
# cached verdict is redone when the libraries or the header directory change.
include(CheckSymbolExists)
include(CMakePushCheckState)
set(insitra_cblas_key "${BLAS_LIBRARIES}|${INSITRA_CBLAS_INCLUDE_DIR}")
if(NOT insitra_cblas_key STREQUAL "${INSITRA_CBLAS_CHECKED}")
  unset(INSITRA_HAVE_CBLAS_SGEMM CACHE)
endif()
cmake_push_check_state(RESET)
set(CMAKE_REQUIRED_INCLUDES "${INSITRA_CBLAS_INCLUDE_DIR}")
set(CMAKE_REQUIRED_LIBRARIES ${insitra_blas_link} OpenMP::OpenMP_C)
check_symbol_exists(cblas_sgemm cblas.h INSITRA_HAVE_CBLAS_SGEMM)
cmake_pop_check_state()
set(INSITRA_CBLAS_CHECKED "${insitra_cblas_key}" CACHE INTERNAL "BLAS checked for cblas_sgemm")
if(NOT INSITRA_HAVE_CBLAS_SGEMM)
  message(FATAL_ERROR "the BLAS has no CBLAS interface: cblas_sgemm from "
                      "${INSITRA_CBLAS_INCLUDE_DIR}/cblas.h does not link with ${BLAS_LIBRARIES}. "
                      "insitra needs a BLAS with cblas.h and the cblas_* functions (OpenBLAS, "
                      "BLIS with CBLAS): set BLAS_LIBRARIES to one")
endif()
if(NOT TARGET insitra_cblas)
  add_library(insitra_cblas INTERFACE)
  # SYSTEM: BLIS's cblas.h defines unused static functions (warnings).
  target_include_directories(insitra_cblas SYSTEM INTERFACE "${INSITRA_CBLAS_INCLUDE_DIR}")
  target_link_libraries(insitra_cblas INTERFACE ${insitra_blas_link})
endif()

# The GEMMs of the CPU backend's linear layers (lib/cpu/gemm.c): oneDNN's
# dnnl_sgemm, or the CBLAS above (attention calls the CBLAS either way).
# Measured on the model's own shapes (bench/bench_gemm.c, bench/README.md
# "GEMM candidates"): oneDNN led on S, OpenBLAS with the right core on M. The
# default is the BLAS: with Debian's oneDNN 2.6.3 the heap was corrupted
# inside dnnl_sgemm in 6 of 16 runs of the burgers1d interrupt-and-resume test
# (a SIGUSR1 during training; 0 of 16 with the BLAS), a fault not understood
# yet (docs/install.md). AUTO takes oneDNN when found, else the BLAS.
set(INSITRA_CPU_GEMM "BLAS" CACHE STRING
    "GEMM of the CPU backend's linear layers: BLAS (default), oneDNN, AUTO (oneDNN if found, else BLAS)")
set_property(CACHE INSITRA_CPU_GEMM PROPERTY STRINGS AUTO oneDNN BLAS)
if(NOT INSITRA_CPU_GEMM MATCHES "^(AUTO|oneDNN|BLAS)$")
  message(FATAL_ERROR "INSITRA_CPU_GEMM=${INSITRA_CPU_GEMM}: allowed values are AUTO, oneDNN, BLAS")
endif()
if(INSITRA_CPU_GEMM STREQUAL "oneDNN")
  find_package(oneDNN)
  if(NOT oneDNN_FOUND)
    message(FATAL_ERROR "INSITRA_CPU_GEMM=oneDNN but oneDNN was not found (Debian: libdnnl-dev; "
                        "Spack: onednn): set oneDNN_ROOT to its prefix, or choose "
                        "INSITRA_CPU_GEMM=BLAS")
  endif()
elseif(INSITRA_CPU_GEMM STREQUAL "AUTO")
  find_package(oneDNN QUIET)
endif()
if(oneDNN_FOUND AND NOT INSITRA_CPU_GEMM STREQUAL "BLAS")
  set(INSITRA_CPU_GEMM_USED oneDNN)
else()
  set(INSITRA_CPU_GEMM_USED BLAS)
endif()
# For bench/run_step_bench.sh, which reads the build's CMakeCache.txt.
set(INSITRA_CPU_GEMM_USED "${INSITRA_CPU_GEMM_USED}" CACHE INTERNAL "The CPU GEMM provider chosen")
message(STATUS "insitra: CPU linear-layer GEMMs from ${INSITRA_CPU_GEMM_USED} "
               "(INSITRA_CPU_GEMM=${INSITRA_CPU_GEMM}); BLAS: ${insitra_blas_link}")

find_package(PkgConfig REQUIRED)
pkg_check_modules(YAML REQUIRED IMPORTED_TARGET yaml-0.1)

if(INSITRA_ENABLE_CUDA)
  find_package(CUDAToolkit REQUIRED)
  find_package(NCCL REQUIRED)

  # cuDNN 9 (optional): fused attention through its SDPA engines
  # (lib/cuda/attention_cudnn.cu; INSITRA_GPU_ATTENTION picks at run time,
  # docs/gpu.md). Only the header and
  # libcudnn are needed (the backend C API; no cudnn-frontend). Left unset,
  # INSITRA_ENABLE_CUDNN follows what is found; ON insists.
  find_path(INSITRA_CUDNN_INCLUDE_DIR cudnn_graph.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV CUDNN_ROOT
            PATH_SUFFIXES include)
  find_library(INSITRA_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR} ENV CUDNN_ROOT
               PATH_SUFFIXES lib lib64)
  set(_insitra_cudnn_found OFF)
  if(INSITRA_CUDNN_INCLUDE_DIR AND INSITRA_CUDNN_LIBRARY)
    set(_insitra_cudnn_found ON)
  endif()
  if(NOT DEFINED INSITRA_ENABLE_CUDNN)
    set(INSITRA_ENABLE_CUDNN ${_insitra_cudnn_found})
    message(STATUS "insitra: cuDNN attention ${INSITRA_ENABLE_CUDNN} (cuDNN 9 found: ${_insitra_cudnn_found}; "
                   "-DINSITRA_ENABLE_CUDNN=ON|OFF decides)")
  elseif(INSITRA_ENABLE_CUDNN AND NOT _insitra_cudnn_found)
    message(FATAL_ERROR "INSITRA_ENABLE_CUDNN=ON but cuDNN 9 was not found (cudnn_graph.h: "
                        "${INSITRA_CUDNN_INCLUDE_DIR}, libcudnn: ${INSITRA_CUDNN_LIBRARY}): set CUDNN_ROOT to "
                        "its install prefix, or -DINSITRA_ENABLE_CUDNN=OFF")
  endif()
endif()
