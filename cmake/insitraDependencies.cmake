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

# CBLAS: OpenBLAS carries the cblas_* symbols in libopenblas itself.
set(BLA_VENDOR OpenBLAS CACHE STRING "BLAS vendor (FindBLAS)")
find_package(BLAS REQUIRED)
find_path(INSITRA_CBLAS_INCLUDE_DIR cblas.h
  PATH_SUFFIXES openblas openblas-openmp openblas-pthread
  DOC "Directory holding cblas.h")
if(NOT INSITRA_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h not found: install OpenBLAS (Debian: libopenblas-openmp-dev) "
                      "or set INSITRA_CBLAS_INCLUDE_DIR")
endif()
if(NOT TARGET insitra_cblas)
  add_library(insitra_cblas INTERFACE)
  target_include_directories(insitra_cblas INTERFACE "${INSITRA_CBLAS_INCLUDE_DIR}")
  target_link_libraries(insitra_cblas INTERFACE BLAS::BLAS)
endif()

find_package(PkgConfig REQUIRED)
pkg_check_modules(YAML REQUIRED IMPORTED_TARGET yaml-0.1)

if(INSITRA_ENABLE_CUDA)
  find_package(CUDAToolkit REQUIRED)
  find_package(NCCL REQUIRED)
endif()
