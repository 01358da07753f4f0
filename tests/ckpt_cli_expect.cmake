# Runs one command and checks its exit status and output, for tests where
# both matter (PASS_REGULAR_EXPRESSION alone would ignore the status, so a
# crash that printed the right words would pass).
#   cmake -DCOMMAND=<program|arg|arg...> -DEXPECT_RC=<n> [-DMATCH_1=<regex> ... -DMATCH_6=<regex>]
#         [-DABSENT=<path that must not exist afterwards>] -P ckpt_cli_expect.cmake
# Arguments are separated by '|' (a ';' would split the test's own command line).
string(REPLACE "|" ";" command "${COMMAND}")
execute_process(COMMAND ${command} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("${out}${err}")
set(failed "")
if(NOT "${rc}" STREQUAL "${EXPECT_RC}")
  string(APPEND failed "exit status ${rc}, expected ${EXPECT_RC}\n")
endif()
foreach(i 1 2 3 4 5 6)
  if(DEFINED MATCH_${i} AND NOT "${out}${err}" MATCHES "${MATCH_${i}}")
    string(APPEND failed "the output does not match '${MATCH_${i}}'\n")
  endif()
endforeach()
if(DEFINED ABSENT AND EXISTS "${ABSENT}")
  string(APPEND failed "${ABSENT} exists\n")
endif()
if(failed)
  message(FATAL_ERROR "${failed}")
endif()
