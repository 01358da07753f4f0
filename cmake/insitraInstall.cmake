# What `cmake --install` puts under the prefix, and the two ways users link
# against it afterwards: the CMake package (find_package(insitra CONFIG)) and
# the pkg-config files (insitra.pc, insitra-fortran.pc). docs/install.md is the
# user's side of this file.
#
# Included last by the top-level CMakeLists.txt, once every target it installs
# exists. A command-line tool is installed by appending its target to the
# global property INSITRA_CLI_TARGETS where the tool is defined, before this
# file is included:
#   set_property(GLOBAL APPEND PROPERTY INSITRA_CLI_TARGETS insitra-inspect)

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(INSITRA_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/insitra" CACHE STRING
    "Where insitraConfig.cmake goes, relative to the install prefix")
set(INSITRA_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig" CACHE STRING
    "Where insitra.pc and insitra-fortran.pc go, relative to the install prefix")
# Fortran .mod files are compiler-specific (format and often version): they
# go next to the headers, in a directory of their own.
set(INSITRA_INSTALL_MODDIR "${CMAKE_INSTALL_INCLUDEDIR}/insitra")
mark_as_advanced(INSITRA_INSTALL_CMAKEDIR INSITRA_INSTALL_PKGCONFIGDIR)

set(insitra_package_dir "${PROJECT_BINARY_DIR}/package")

# `cmake --install` builds nothing, and a build of some targets only (the
# demo builds heat2d) lacks some of what is installed: so the install first
# builds whatever installed target has no file yet. Everything there (after
# a full build, or under `make install`, which builds first) means no nested
# build. Stale files are installed as they are, as CMake always does.
set(insitra_built_targets insitra)
if(INSITRA_ENABLE_FORTRAN AND TARGET insitra_fortran)
  list(APPEND insitra_built_targets insitra_fortran)
endif()
get_property(insitra_cli_targets GLOBAL PROPERTY INSITRA_CLI_TARGETS)
list(APPEND insitra_built_targets ${insitra_cli_targets})
set(insitra_built_files "")
foreach(insitra_target IN LISTS insitra_built_targets)
  list(APPEND insitra_built_files "$<TARGET_FILE:${insitra_target}>")
endforeach()
install(CODE "set(insitra_build_dir \"${PROJECT_BINARY_DIR}\")
set(insitra_built_targets \"${insitra_built_targets}\")
set(insitra_built_files \"${insitra_built_files}\")")
install(CODE [[
  set(insitra_missing "")
  foreach(insitra_file IN LISTS insitra_built_files)
    if(NOT EXISTS "${insitra_file}")
      list(APPEND insitra_missing "${insitra_file}")
    endif()
  endforeach()
  if(insitra_missing)
    list(JOIN insitra_built_targets " " insitra_list)
    list(LENGTH insitra_missing insitra_count)
    message(STATUS "${insitra_count} of the installed targets not built yet: "
                   "building ${insitra_list} first")
    set(insitra_config_arg "")
    if(CMAKE_INSTALL_CONFIG_NAME)
      set(insitra_config_arg --config "${CMAKE_INSTALL_CONFIG_NAME}")
    endif()
    execute_process(COMMAND "${CMAKE_COMMAND}" --build "${insitra_build_dir}" ${insitra_config_arg}
                            --target ${insitra_built_targets}
                    RESULT_VARIABLE insitra_rc)
    if(NOT insitra_rc EQUAL 0)
      message(FATAL_ERROR "building ${insitra_list} for the install failed (exit ${insitra_rc})")
    endif()
  endif()
]])

# Installed shared libraries (BUILD_SHARED_LIBS=ON) and tools keep the run
# path to the libraries they link, which CMake drops by default, and find
# insitra's own libraries relative to themselves.
set(insitra_origin_libdir "$ORIGIN")
file(RELATIVE_PATH insitra_bin_to_lib "/${CMAKE_INSTALL_BINDIR}" "/${CMAKE_INSTALL_LIBDIR}")
set(insitra_origin_bindir "$ORIGIN/${insitra_bin_to_lib}")

# The C library and the public headers. The library links PRIVATE to
# insitra_cblas, which a static library's users still link: it travels in the
# export as insitra::insitra_cblas (not for direct use).
set_target_properties(insitra PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS insitra EXPORT insitraTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(TARGETS insitra_cblas EXPORT insitraTargets)
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
  FILES_MATCHING PATTERN "*.h")
install(EXPORT insitraTargets NAMESPACE insitra:: DESTINATION "${INSITRA_INSTALL_CMAKEDIR}")

# The Fortran module library and its .mod files, in an export of its own:
# insitraConfig.cmake loads it only for projects that enable Fortran.
set(insitra_has_fortran OFF)
if(INSITRA_ENABLE_FORTRAN AND TARGET insitra_fortran)
  set(insitra_has_fortran ON)
  set_target_properties(insitra_fortran PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
  set_property(TARGET insitra_fortran APPEND PROPERTY INSTALL_RPATH "${insitra_origin_libdir}")
  install(TARGETS insitra_fortran EXPORT insitraFortranTargets
    ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
    LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
    RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
    INCLUDES DESTINATION "${INSITRA_INSTALL_MODDIR}")
  get_target_property(insitra_moddir insitra_fortran Fortran_MODULE_DIRECTORY)
  if(NOT insitra_moddir)
    message(FATAL_ERROR "insitra_fortran has no Fortran_MODULE_DIRECTORY: its .mod files "
                        "cannot be installed")
  endif()
  install(DIRECTORY "${insitra_moddir}/" DESTINATION "${INSITRA_INSTALL_MODDIR}"
    FILES_MATCHING PATTERN "*.mod" PATTERN "*.smod")
  install(EXPORT insitraFortranTargets NAMESPACE insitra::
    DESTINATION "${INSITRA_INSTALL_CMAKEDIR}")
endif()

# The command-line tools.
if(insitra_cli_targets)
  set_target_properties(${insitra_cli_targets} PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
  set_property(TARGET ${insitra_cli_targets} APPEND PROPERTY INSTALL_RPATH "${insitra_origin_bindir}")
  install(TARGETS ${insitra_cli_targets} RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
endif()

# The examples' directories, with a CMakeLists.txt of their own that builds
# every one against the installed package (the Spack smoke test does). A
# directory holding Fortran sources needs an insitra built with Fortran.
set(insitra_examples_dir "${CMAKE_INSTALL_DATADIR}/insitra/examples")
file(GLOB insitra_example_dirs LIST_DIRECTORIES true "${PROJECT_SOURCE_DIR}/examples/*")
foreach(insitra_dir IN LISTS insitra_example_dirs)
  if(NOT IS_DIRECTORY "${insitra_dir}")
    continue()
  endif()
  # A directory with a CMakeLists.txt of its own (quickstart) builds its
  # Fortran program only where insitra has the module: installed always.
  file(GLOB_RECURSE insitra_fortran_sources "${insitra_dir}/*.f90" "${insitra_dir}/*.F90")
  if(insitra_fortran_sources AND NOT insitra_has_fortran AND NOT EXISTS "${insitra_dir}/CMakeLists.txt")
    continue()
  endif()
  install(DIRECTORY "${insitra_dir}" DESTINATION "${insitra_examples_dir}" USE_SOURCE_PERMISSIONS
    PATTERN "__pycache__" EXCLUDE PATTERN "*.jsonl" EXCLUDE PATTERN "checkpoints" EXCLUDE)
endforeach()
install(FILES "${PROJECT_SOURCE_DIR}/cmake/installed-examples.CMakeLists.txt"
  DESTINATION "${insitra_examples_dir}" RENAME CMakeLists.txt)

# The CMake package.
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/insitraConfig.cmake.in"
  "${insitra_package_dir}/insitraConfig.cmake"
  INSTALL_DESTINATION "${INSITRA_INSTALL_CMAKEDIR}"
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR INSITRA_INSTALL_MODDIR)
# 0.x: a new minor version may change the API.
write_basic_package_version_file("${insitra_package_dir}/insitraConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}" COMPATIBILITY SameMinorVersion)
install(FILES
  "${insitra_package_dir}/insitraConfig.cmake"
  "${insitra_package_dir}/insitraConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/FindNCCL.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/FindoneDNN.cmake"
  DESTINATION "${INSITRA_INSTALL_CMAKEDIR}")

# pkg-config. The flags come from the same targets CMake links with: a
# target's link libraries, link options and (public dependencies only)
# include directories, compile definitions and options, followed through
# INTERFACE and imported targets. A PkgConfig::<P> target becomes a Requires
# entry on the module it was made from.
#
# _insitra_pc_flags(<out-prefix> <link items...>) sets <out-prefix>_LIBS,
# <out-prefix>_CFLAGS and <out-prefix>_REQUIRES.
function(_insitra_pc_flags out)
  set(libs "")
  set(cflags "")
  set(requires "")
  set(seen "")
  set(queue ${ARGN})
  while(queue)
    list(POP_FRONT queue item)
    if(item MATCHES "^\\$<LINK_ONLY:(.*)>$")
      set(item "${CMAKE_MATCH_1}")
    endif()
    if(item MATCHES "^SHELL:(.*)$")
      separate_arguments(words UNIX_COMMAND "${CMAKE_MATCH_1}")
      list(APPEND libs ${words})
      continue()
    endif()
    if(item MATCHES "\\$<")
      message(WARNING "pkg-config: skipped the generator expression ${item}")
      continue()
    endif()
    if(NOT TARGET "${item}")
      if(item MATCHES "^-" OR IS_ABSOLUTE "${item}")
        list(APPEND libs "${item}")
      elseif(NOT item STREQUAL "")
        list(APPEND libs "-l${item}")
      endif()
      continue()
    endif()
    if(item IN_LIST seen)
      continue()
    endif()
    list(APPEND seen "${item}")
    if(item MATCHES "^PkgConfig::(.+)$")
      set(module "${${CMAKE_MATCH_1}_MODULE_NAME}")
      if(module)
        list(APPEND requires "${module}")
        continue()
      endif()
    endif()
    get_target_property(type "${item}" TYPE)
    get_target_property(imported "${item}" IMPORTED)
    if(NOT imported AND NOT type STREQUAL "INTERFACE_LIBRARY")
      continue()  # a library of this project: the .pc names it itself
    endif()
    if(imported AND NOT type STREQUAL "INTERFACE_LIBRARY")
      get_target_property(location "${item}" LOCATION)
      if(location)
        list(APPEND libs "${location}")
      endif()
    endif()
    get_target_property(options "${item}" INTERFACE_LINK_OPTIONS)
    if(options)
      list(PREPEND queue ${options})
    endif()
    get_target_property(deps "${item}" INTERFACE_LINK_LIBRARIES)
    if(deps)
      list(APPEND queue ${deps})
    endif()
    get_target_property(dirs "${item}" INTERFACE_INCLUDE_DIRECTORIES)
    foreach(dir IN LISTS dirs)
      if(dir AND NOT dir MATCHES "\\$<")
        list(APPEND cflags "-I${dir}")
      endif()
    endforeach()
    get_target_property(defs "${item}" INTERFACE_COMPILE_DEFINITIONS)
    foreach(def IN LISTS defs)
      if(def AND NOT def MATCHES "\\$<")
        list(APPEND cflags "-D${def}")
      endif()
    endforeach()
    get_target_property(copts "${item}" INTERFACE_COMPILE_OPTIONS)
    set(words "")
    foreach(opt IN LISTS copts)
      if(opt MATCHES "^SHELL:(.*)$")
        separate_arguments(shell_words UNIX_COMMAND "${CMAKE_MATCH_1}")
        list(APPEND words ${shell_words})
      elseif(opt AND NOT opt MATCHES "\\$<")
        list(APPEND words "${opt}")
      endif()
    endforeach()
    # A wrapper's record of the machine it was built on (MPICH's mpif90 has
    # -ffile-prefix-map=/build/mpich-.../=.) is not for the user's compiles.
    list(FILTER words EXCLUDE REGEX "^-f(file|debug|macro|profile)-prefix-map=")
    list(APPEND cflags ${words})
  endwhile()
  foreach(var libs cflags requires)
    list(REMOVE_DUPLICATES ${var})
    list(JOIN ${var} " " ${var})
  endforeach()
  string(REPLACE " " ", " requires "${requires}")
  set(${out}_LIBS "${libs}" PARENT_SCOPE)
  set(${out}_CFLAGS "${cflags}" PARENT_SCOPE)
  set(${out}_REQUIRES "${requires}" PARENT_SCOPE)
endfunction()

# Splits a target's link interface into what its users compile and link with
# (public) and what only a static link needs ($<LINK_ONLY:...>, private).
function(_insitra_pc_target out target)
  get_target_property(items "${target}" INTERFACE_LINK_LIBRARIES)
  set(public "")
  set(private "")
  foreach(item IN LISTS items)
    if(item MATCHES "^\\$<LINK_ONLY:")
      list(APPEND private "${item}")
    else()
      list(APPEND public "${item}")
    endif()
  endforeach()
  _insitra_pc_flags(pub ${public})
  _insitra_pc_flags(priv ${private})
  get_target_property(name "${target}" OUTPUT_NAME)
  if(NOT name)
    set(name "${target}")
  endif()
  # A shared build (BUILD_SHARED_LIBS): programs find the library at run time.
  get_target_property(type "${target}" TYPE)
  set(rpath "")
  if(type STREQUAL "SHARED_LIBRARY")
    set(rpath "-Wl,-rpath,\${libdir}")
  endif()
  set(${out}_NAME "${name}" PARENT_SCOPE)
  set(${out}_RPATH "${rpath}" PARENT_SCOPE)
  set(${out}_CFLAGS "${pub_CFLAGS}" PARENT_SCOPE)
  set(${out}_LIBS "${pub_LIBS}" PARENT_SCOPE)
  set(${out}_REQUIRES "${pub_REQUIRES}" PARENT_SCOPE)
  set(${out}_LIBS_PRIVATE "${priv_LIBS}" PARENT_SCOPE)
  set(${out}_REQUIRES_PRIVATE "${priv_REQUIRES}" PARENT_SCOPE)
endfunction()

# prefix=${pcfiledir}/..: the .pc files stay right wherever the tree is
# installed (cmake --install --prefix, Spack, a tarball).
file(RELATIVE_PATH insitra_pc_to_prefix "/${INSITRA_INSTALL_PKGCONFIGDIR}" "/")
string(REGEX REPLACE "/$" "" insitra_pc_to_prefix "${insitra_pc_to_prefix}")

_insitra_pc_target(insitra_pc insitra)
configure_file("${PROJECT_SOURCE_DIR}/cmake/insitra.pc.in" "${insitra_package_dir}/insitra.pc" @ONLY)
install(FILES "${insitra_package_dir}/insitra.pc" DESTINATION "${INSITRA_INSTALL_PKGCONFIGDIR}")
if(insitra_has_fortran)
  _insitra_pc_target(insitra_fortran_pc insitra_fortran)
  list(PREPEND insitra_fortran_pc_REQUIRES "insitra = ${PROJECT_VERSION}")
  list(JOIN insitra_fortran_pc_REQUIRES ", " insitra_fortran_pc_REQUIRES)
  configure_file("${PROJECT_SOURCE_DIR}/cmake/insitra-fortran.pc.in"
    "${insitra_package_dir}/insitra-fortran.pc" @ONLY)
  install(FILES "${insitra_package_dir}/insitra-fortran.pc"
    DESTINATION "${INSITRA_INSTALL_PKGCONFIGDIR}")
endif()
