# The steps of the install_* tests, run as `cmake -D... -P consumer.cmake`.
#
#   STEP=install   PREFIX BUILD_DIR CONFIG
#       empties PREFIX, then cmake --install BUILD_DIR --prefix PREFIX
#   STEP=unbuilt   PREFIX SOURCE_DIR BINARY_DIR GENERATOR MAKE_PROGRAM C_COMPILER
#                  [FORTRAN_COMPILER] EXPECT [OPTIONS]
#       configures SOURCE_DIR in an empty BINARY_DIR, builds nothing, installs
#       into PREFIX and checks that every file of EXPECT (relative) is there
#   STEP=cmake     PREFIX SOURCE_DIR BINARY_DIR GENERATOR MAKE_PROGRAM C_COMPILER C_FLAGS
#                  LINKER_FLAGS VERSION [FORTRAN_COMPILER FORTRAN_FLAGS] [OPTIONS]
#       configures and builds the CMake project SOURCE_DIR in an empty BINARY_DIR
#       against PREFIX (CMAKE_PREFIX_PATH)
#   STEP=make      PREFIX SOURCE_DIR BINARY_DIR MAKE PKG_CONFIG TARGET C_COMPILER C_FLAGS
#                  LINKER_FLAGS [FORTRAN_COMPILER FORTRAN_FLAGS]
#       runs the Makefile of SOURCE_DIR with PKG_CONFIG_PATH at PREFIX's .pc files
cmake_minimum_required(VERSION 3.24)

function(run)
  execute_process(COMMAND ${ARGN} COMMAND_ECHO STDOUT COMMAND_ERROR_IS_FATAL ANY)
endfunction()

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" --config "${CONFIG}")

elseif(STEP STREQUAL "unbuilt")
  # A configured tree with nothing built: the install builds what it needs.
  file(REMOVE_RECURSE "${PREFIX}" "${BINARY_DIR}")
  set(fortran -DINSITRA_ENABLE_FORTRAN=OFF)
  if(FORTRAN_COMPILER)
    set(fortran -DINSITRA_ENABLE_FORTRAN=ON "-DCMAKE_Fortran_COMPILER=${FORTRAN_COMPILER}")
  endif()
  run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
      "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}" "-DCMAKE_C_COMPILER=${C_COMPILER}"
      -DCMAKE_BUILD_TYPE=Release -DINSITRA_ENABLE_TESTING=OFF ${fortran} ${OPTIONS})
  run("${CMAKE_COMMAND}" --install "${BINARY_DIR}" --prefix "${PREFIX}")
  foreach(file IN LISTS EXPECT)
    if(NOT EXISTS "${PREFIX}/${file}")
      message(FATAL_ERROR "the install of an unbuilt tree lacks ${PREFIX}/${file}")
    endif()
  endforeach()
  message(STATUS "installed from an unbuilt tree: ${EXPECT}")

elseif(STEP STREQUAL "cmake")
  file(REMOVE_RECURSE "${BINARY_DIR}")
  set(fortran "")
  if(FORTRAN_COMPILER)
    set(fortran "-DCMAKE_Fortran_COMPILER=${FORTRAN_COMPILER}" "-DCMAKE_Fortran_FLAGS=${FORTRAN_FLAGS}")
  endif()
  run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${BINARY_DIR}" -G "${GENERATOR}"
      "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}" "-DCMAKE_PREFIX_PATH=${PREFIX}"
      "-DCMAKE_C_COMPILER=${C_COMPILER}" "-DCMAKE_C_FLAGS=${C_FLAGS}"
      "-DCMAKE_EXE_LINKER_FLAGS=${LINKER_FLAGS}" ${fortran}
      "-DINSITRA_EXPECTED_VERSION=${VERSION}" "-DINSITRA_EXPECTED_PREFIX=${PREFIX}" ${OPTIONS})
  run("${CMAKE_COMMAND}" --build "${BINARY_DIR}")

elseif(STEP STREQUAL "make")
  file(REMOVE_RECURSE "${BINARY_DIR}")
  file(MAKE_DIRECTORY "${BINARY_DIR}")
  # Wherever the install put them (lib/pkgconfig, lib64/pkgconfig, ...).
  file(GLOB_RECURSE pc_files "${PREFIX}/*/insitra.pc")
  if(NOT pc_files)
    message(FATAL_ERROR "no insitra.pc under ${PREFIX}")
  endif()
  list(GET pc_files 0 pc_file)
  get_filename_component(pc_dir "${pc_file}" DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} "${pc_dir}:$ENV{PKG_CONFIG_PATH}")
  message(STATUS "PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH}")
  run("${MAKE}" -C "${SOURCE_DIR}" "OUT=${BINARY_DIR}" "PKG_CONFIG=${PKG_CONFIG}"
      "CC=${C_COMPILER}" "CFLAGS=${C_FLAGS}" "FC=${FORTRAN_COMPILER}" "FFLAGS=${FORTRAN_FLAGS}"
      "LDFLAGS=${LINKER_FLAGS}" "${TARGET}")

else()
  message(FATAL_ERROR "consumer.cmake: unknown STEP '${STEP}'")
endif()
