# insitra_target_defaults(<target>): the compile settings every C (and CUDA)
# target of this project shares, the library, tools, tests, benchmarks and
# examples alike, so that a flag is changed in one place:
#   - C11 without GNU extensions, with POSIX.1-2008 declared: the library and
#     its programs use POSIX calls (clock_gettime, fsync, mkdir, sigaction)
#     that -std=c11 otherwise hides;
#   - -Wall -Wextra on C (through -Xcompiler on CUDA), errors under
#     INSITRA_WARNINGS_AS_ERRORS.
# Build-time only: none of this is part of an installed target's usage
# requirements, so a program linking insitra::insitra keeps its own flags.
# (The name is not insitraTargets.cmake: that is the file install(EXPORT)
# writes next to insitraConfig.cmake.)
function(insitra_target_defaults target)
  set_target_properties(${target} PROPERTIES
    C_STANDARD 11
    C_STANDARD_REQUIRED ON
    C_EXTENSIONS OFF)
  target_compile_definitions(${target} PRIVATE $<$<COMPILE_LANGUAGE:C>:_POSIX_C_SOURCE=200809L>)
  set(werror $<BOOL:${INSITRA_WARNINGS_AS_ERRORS}>)
  target_compile_options(${target} PRIVATE
    "$<$<COMPILE_LANGUAGE:C>:-Wall;-Wextra>"
    $<$<AND:$<COMPILE_LANGUAGE:C>,${werror}>:-Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,${werror}>:-Werror=all-warnings>)
endfunction()
