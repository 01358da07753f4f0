# FindoneDNN: oneDNN's C API (dnnl_sgemm), for the CPU backend's GEMMs.
#
# oneDNN ships a CMake config (find_package(dnnl CONFIG)), but Debian's
# (libdnnl-dev 2.6, built with the OpenCL GPU runtime) requires the OpenCL
# development files even for CPU-only use; insitra uses only the C API,
# which needs the header and the library. Searched in oneDNN_ROOT / DNNL_ROOT,
# CMAKE_PREFIX_PATH and the system paths.
#
# Result: oneDNN_FOUND, oneDNN_VERSION, and the imported target oneDNN::oneDNN.
# Cache: oneDNN_INCLUDE_DIR, oneDNN_LIBRARY.

find_path(oneDNN_INCLUDE_DIR oneapi/dnnl/dnnl.h
  HINTS "$ENV{DNNL_ROOT}" "${DNNL_ROOT}"
  PATH_SUFFIXES include
  DOC "Directory holding oneapi/dnnl/dnnl.h")
find_library(oneDNN_LIBRARY NAMES dnnl
  HINTS "$ENV{DNNL_ROOT}" "${DNNL_ROOT}"
  PATH_SUFFIXES lib lib64
  DOC "The oneDNN library")

unset(oneDNN_VERSION)
if(oneDNN_INCLUDE_DIR AND EXISTS "${oneDNN_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h")
  file(STRINGS "${oneDNN_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h" _onednn_defines
    REGEX "^#define DNNL_VERSION_(MAJOR|MINOR|PATCH)[ \t]+[0-9]+")
  foreach(_onednn_part MAJOR MINOR PATCH)
    string(REGEX MATCH "DNNL_VERSION_${_onednn_part}[ \t]+([0-9]+)" _onednn_match "${_onednn_defines}")
    set(_onednn_${_onednn_part} "${CMAKE_MATCH_1}")
  endforeach()
  set(oneDNN_VERSION "${_onednn_MAJOR}.${_onednn_MINOR}.${_onednn_PATCH}")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(oneDNN
  REQUIRED_VARS oneDNN_LIBRARY oneDNN_INCLUDE_DIR
  VERSION_VAR oneDNN_VERSION)

if(oneDNN_FOUND AND NOT TARGET oneDNN::oneDNN)
  add_library(oneDNN::oneDNN UNKNOWN IMPORTED)
  set_target_properties(oneDNN::oneDNN PROPERTIES
    IMPORTED_LOCATION "${oneDNN_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${oneDNN_INCLUDE_DIR}")
endif()
mark_as_advanced(oneDNN_INCLUDE_DIR oneDNN_LIBRARY)
