# FindNCCL: the NVIDIA Collective Communications Library.
#
# Searched in NCCL_ROOT (CMake or environment variable), the environment
# variable NCCL_HOME, CMAKE_PREFIX_PATH, the CUDA toolkit found by
# find_package(CUDAToolkit), and the system paths. Set NCCL_USE_STATIC to
# prefer libnccl_static.a.
#
# Result: NCCL_FOUND, NCCL_VERSION, NCCL_INCLUDE_DIRS, NCCL_LIBRARIES, and the
# imported target NCCL::NCCL. Cache: NCCL_INCLUDE_DIR, NCCL_LIBRARY.

set(_nccl_hints "")
foreach(_nccl_dir IN ITEMS "$ENV{NCCL_HOME}" "${CUDAToolkit_LIBRARY_ROOT}")
  if(_nccl_dir)
    list(APPEND _nccl_hints "${_nccl_dir}")
  endif()
endforeach()

find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${_nccl_hints} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include
  DOC "Directory holding nccl.h")

if(NCCL_USE_STATIC)
  set(_nccl_names nccl_static nccl)
else()
  set(_nccl_names nccl nccl_static)
endif()
find_library(NCCL_LIBRARY NAMES ${_nccl_names}
  HINTS ${_nccl_hints} ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64
  DOC "The NCCL library")

# The version, from the NCCL_MAJOR / NCCL_MINOR / NCCL_PATCH defines of nccl.h.
unset(NCCL_VERSION)
if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _nccl_defines
    REGEX "^#define NCCL_(MAJOR|MINOR|PATCH)[ \t]+[0-9]+")
  foreach(_nccl_part MAJOR MINOR PATCH)
    string(REGEX MATCH "NCCL_${_nccl_part}[ \t]+([0-9]+)" _nccl_match "${_nccl_defines}")
    set(_nccl_${_nccl_part} "${CMAKE_MATCH_1}")
  endforeach()
  if(NOT _nccl_MAJOR STREQUAL "" AND NOT _nccl_MINOR STREQUAL "" AND NOT _nccl_PATCH STREQUAL "")
    set(NCCL_VERSION "${_nccl_MAJOR}.${_nccl_MINOR}.${_nccl_PATCH}")
  endif()
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL
  REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
  VERSION_VAR NCCL_VERSION)

if(NCCL_FOUND)
  set(NCCL_INCLUDE_DIRS "${NCCL_INCLUDE_DIR}")
  set(NCCL_LIBRARIES "${NCCL_LIBRARY}")
  if(NOT TARGET NCCL::NCCL)
    add_library(NCCL::NCCL UNKNOWN IMPORTED)
    set_target_properties(NCCL::NCCL PROPERTIES
      IMPORTED_LOCATION "${NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
    # The static library leaves the CUDA runtime to the program.
    if(NCCL_LIBRARY MATCHES "nccl_static" AND TARGET CUDA::cudart_static)
      set_property(TARGET NCCL::NCCL APPEND PROPERTY INTERFACE_LINK_LIBRARIES CUDA::cudart_static)
    endif()
  endif()
endif()

mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
unset(_nccl_hints)
unset(_nccl_names)
unset(_nccl_defines)
