# One fuzz_* test (tests/fuzz/CMakeLists.txt): runs FUZZER on RUNS inputs
# with -seed SEED, starting from the committed corpus CORPUS (never written
# to: new inputs go to WORK/corpus, crash reproducers to WORK/artifacts).
# RUNS 0 replays CORPUS only. Fails when the fuzzer reports a crash, a leak, a
# sanitizer error or a broken invariant (the harness aborts).
foreach(var FUZZER CORPUS DICT WORK RUNS SEED)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzz.cmake: -D${var}=... missing")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK}/artifacts")
file(MAKE_DIRECTORY "${WORK}/artifacts")
# -close_fd_mask=3: the harnesses' own output (insitra-ckpt prints every
# problem it finds) is dropped; libFuzzer and the sanitizers still report
# on their own copy of stderr.
set(common -seed=${SEED} -timeout=20 -rss_limit_mb=4096 -close_fd_mask=3 -print_final_stats=1
           -artifact_prefix=${WORK}/artifacts/)
if(EXISTS "${DICT}")
  list(APPEND common -dict=${DICT})
endif()
# libFuzzer adds what it finds to the first directory: WORK's, emptied
# first so that every run starts from the committed corpus alone (and the
# same seed then means the same inputs).
file(REMOVE_RECURSE "${WORK}/corpus")
file(MAKE_DIRECTORY "${WORK}/corpus")
# -max_total_time: a bound for slow machines, far above the usual minute.
set(cmd "${FUZZER}" ${common} -runs=${RUNS} -max_total_time=600 "${WORK}/corpus" "${CORPUS}")
string(REPLACE ";" " " shown "${cmd}")
message(STATUS "run_fuzz: ${shown}")
execute_process(COMMAND ${cmd} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  file(GLOB found "${WORK}/artifacts/*")
  message(FATAL_ERROR "run_fuzz: the fuzzer failed (status ${rc}); reproducers: ${found}\n"
                      "Replay one with: ${FUZZER} <file>")
endif()
