# insitra-ckpt against real checkpoints: test_ckpt_cli_make writes two (steps
# 3 and 6, on 2 ranks) into a clean directory, then damaged copies; every CLI
# test requires those fixtures. Included from tests/CMakeLists.txt.

add_executable(test_ckpt_cli_make test_ckpt_cli_make.c ckpt_damage.c)
insitra_target_defaults(test_ckpt_cli_make)
target_link_libraries(test_ckpt_cli_make PRIVATE insitra_internal insitra_test_util HDF5::HDF5)

set(dir "${CMAKE_CURRENT_BINARY_DIR}/ckpt/cli")
set(step3 "${dir}/step-00000003.h5")
set(step6 "${dir}/step-00000006.h5")
set(tool "$<TARGET_FILE:insitra-ckpt>")
set(expect "${CMAKE_CURRENT_SOURCE_DIR}/ckpt_cli_expect.cmake")

add_test(NAME ckpt_cli_clean COMMAND ${CMAKE_COMMAND} -E rm -rf "${dir}")
set_tests_properties(ckpt_cli_clean PROPERTIES FIXTURES_SETUP ckpt_cli_clean LABELS ckpt)
insitra_add_test(NAME ckpt_cli_make TARGET test_ckpt_cli_make RANKS 2 LABELS ckpt
                 ARGS make "${dir}")
set_tests_properties(ckpt_cli_make PROPERTIES FIXTURES_REQUIRED ckpt_cli_clean
                                              FIXTURES_SETUP ckpt_cli_files)

# The damaged copies (name=mode|arguments): a flipped byte inside one
# tensor, half a file, a format version from the future, root attributes and
# the stored configuration changed (issue #16: each loaded silently before
# the metadata checksum), and a file made to look like format 1.
set(damage
  "corrupt=corrupt|${step6}|${dir}/corrupt.h5|/model/blocks.1.attn.qkv.weight"
  "truncate=truncate|${step6}|${dir}/truncated.h5"
  "version=attr|${step6}|${dir}/version4.h5|insitra_format|4"
  "step=attr|${step6}|${dir}/step.h5|step|73"
  "world4=attr|${step6}|${dir}/world4.h5|world_size|4"
  "world1=attr|${step6}|${dir}/world1.h5|world_size|1"
  "config=config|${step6}|${dir}/config.h5|d_model: 16|d_model: 24"
  "format1=downgrade|${step6}|${dir}/format1.h5")
foreach(entry IN LISTS damage)
  string(REGEX REPLACE "=.*" "" name "${entry}")
  string(REGEX REPLACE "^[^=]*=" "" args "${entry}")
  string(REPLACE "|" ";" args "${args}")
  insitra_add_test(NAME ckpt_cli_make_${name} TARGET test_ckpt_cli_make LABELS ckpt ARGS ${args})
  set_tests_properties(ckpt_cli_make_${name} PROPERTIES FIXTURES_REQUIRED ckpt_cli_files
                                                        FIXTURES_SETUP ckpt_cli_${name})
endforeach()

# ckpt_cli_check(NAME <name> ARGS <arg|arg...> RC <status> [MATCH <regex>...]
#                [ABSENT <path>] [FIXTURES <fixtures...>])
function(ckpt_cli_check)
  cmake_parse_arguments(arg "" "NAME;ARGS;RC;ABSENT" "MATCH;FIXTURES;SETUP" ${ARGN})
  set(defs "-DCOMMAND=${tool}|${arg_ARGS}" "-DEXPECT_RC=${arg_RC}")
  set(i 0)
  foreach(regex IN LISTS arg_MATCH)
    math(EXPR i "${i} + 1")
    list(APPEND defs "-DMATCH_${i}=${regex}")
  endforeach()
  if(arg_ABSENT)
    list(APPEND defs "-DABSENT=${arg_ABSENT}")
  endif()
  add_test(NAME ckpt_cli_${arg_NAME} COMMAND ${CMAKE_COMMAND} ${defs} -P "${expect}")
  set_tests_properties(ckpt_cli_${arg_NAME} PROPERTIES LABELS ckpt
    FIXTURES_REQUIRED "ckpt_cli_files;${arg_FIXTURES}")
  if(arg_SETUP)
    set_tests_properties(ckpt_cli_${arg_NAME} PROPERTIES FIXTURES_SETUP "${arg_SETUP}")
  endif()
endfunction()

ckpt_cli_check(NAME list ARGS "list|${dir}" RC 0
  MATCH "step-00000003\\.h5 +3 +[0-9.]+ [KM]?i?B +complete"
        "step-00000006\\.h5 +6 +[0-9.]+ [KM]?i?B +\\* +complete")
ckpt_cli_check(NAME info ARGS "info|${step6}" RC 0
  MATCH "step +6[^0-9]" "world +2 ranks \\(dp 2 x tp 1\\)" "zero_stage +1[^0-9]"
        "d_model=16 n_layers=2 n_heads=2 seq_len=8 in_features=3 out_features=2"
        "optimizer +AdamW moments: 31 tensors in /optim/m, 31 in /optim/v"
        "samples +22 stored \\(per rank: 12 10\\)")
# The stored configuration as YAML, and the planner reading it from the file.
ckpt_cli_check(NAME config ARGS "config|${step6}" RC 0
  MATCH "^device: cpu\n" "\nmodel:\n  seq_len: 8\n  in_features: 3\n  out_features: 2\n  d_model: 16\n"
        "\nparallel:\n  dp: 0\n  tp: 1\n  cp: 1\n  zero_stage: 1\n")
ckpt_cli_check(NAME config_truncated ARGS "config|${dir}/truncated.h5" RC 1
  MATCH "truncated or corrupt" FIXTURES ckpt_cli_truncate)
add_test(NAME ckpt_cli_plan
  COMMAND ${CMAKE_COMMAND} "-DCOMMAND=$<TARGET_FILE:insitra-plan>|--ranks|2|${step6}" -DEXPECT_RC=0
          "-DMATCH_1=configuration of .*step-00000006\\.h5 \\(step 6\\)"
          "-DMATCH_2=model: d_model=16 n_layers=2 n_heads=2 seq_len=8 batch_size=4"
          "-DMATCH_3=\n    2     3 " -P "${expect}")
set_tests_properties(ckpt_cli_plan PROPERTIES LABELS ckpt FIXTURES_REQUIRED ckpt_cli_files)
ckpt_cli_check(NAME verify_step3 ARGS "verify|${step3}" RC 0 MATCH "VALID: .*step-00000003\\.h5")
ckpt_cli_check(NAME verify_step6 ARGS "verify|${step6}" RC 0
  MATCH "VALID: .*step-00000006\\.h5 \\(95 float32 datasets")
ckpt_cli_check(NAME export ARGS "export|${step6}|${dir}/export.h5" RC 0
  MATCH "exported 31 tensors \\([0-9]+ parameters" SETUP ckpt_cli_export)
ckpt_cli_check(NAME export_verify ARGS "verify|${dir}/export.h5" RC 0
  MATCH "VALID: .*export\\.h5 \\(31 float32 datasets" FIXTURES ckpt_cli_export)
ckpt_cli_check(NAME export_info ARGS "info|${dir}/export.h5" RC 0
  MATCH "kind +model export" "stored +31 tensors in /model" FIXTURES ckpt_cli_export)
# Damage is found and named; nothing crashes.
ckpt_cli_check(NAME verify_corrupt ARGS "verify|${dir}/corrupt.h5" RC 1
  MATCH "PROBLEM /model/blocks\\.1\\.attn\\.qkv\\.weight: crc32c mismatch: attribute 0x"
        "INVALID: .*corrupt\\.h5 \\(1 problem\\)" FIXTURES ckpt_cli_corrupt)
ckpt_cli_check(NAME export_corrupt ARGS "export|${dir}/corrupt.h5|${dir}/corrupt_export.h5" RC 1
  MATCH "blocks\\.1\\.attn\\.qkv\\.weight: crc32c mismatch" ABSENT "${dir}/corrupt_export.h5"
  FIXTURES ckpt_cli_corrupt)
ckpt_cli_check(NAME verify_truncated ARGS "verify|${dir}/truncated.h5" RC 1
  MATCH "truncated or corrupt" FIXTURES ckpt_cli_truncate)
ckpt_cli_check(NAME info_truncated ARGS "info|${dir}/truncated.h5" RC 1
  MATCH "truncated or corrupt" FIXTURES ckpt_cli_truncate)
ckpt_cli_check(NAME verify_version ARGS "verify|${dir}/version4.h5" RC 1
  MATCH "checkpoint format version 4; this insitra reads versions 1 to 3"
  FIXTURES ckpt_cli_version)
# Every root attribute and the stored configuration are inside the metadata
# checksum; a format 1 file (none) verifies with a note.
foreach(name step world4 world1 config)
  ckpt_cli_check(NAME verify_meta_${name} ARGS "verify|${dir}/${name}.h5" RC 1
    MATCH "PROBLEM /: metadata checksum mismatch" FIXTURES ckpt_cli_${name})
endforeach()
ckpt_cli_check(NAME verify_format1 ARGS "verify|${dir}/format1.h5" RC 0
  MATCH "NOTE: no metadata checksum" "VALID: .*format1\\.h5" FIXTURES ckpt_cli_format1)
# A real format 1 file, written by insitra before the metadata checksum
# (test_ckpt_cli_make make at 9fb8478): it verifies with a note and loads.
set(format1 "${CMAKE_CURRENT_SOURCE_DIR}/data/ckpt-format1-step6.h5")
ckpt_cli_check(NAME verify_format1_real ARGS "verify|${format1}" RC 0
  MATCH "NOTE: no metadata checksum" "VALID: .*ckpt-format1-step6\\.h5 \\(95 float32 datasets")
insitra_add_test(NAME ckpt_format1_load TARGET test_ckpt_cli_make RANKS 2 LABELS ckpt
                 ARGS load "${format1}" 6)
ckpt_cli_check(NAME verify_not_hdf5 ARGS "verify|${dir}/latest" RC 1 MATCH "not an HDF5 file")
ckpt_cli_check(NAME info_missing ARGS "info|${dir}/step-99999999.h5" RC 1
  MATCH "cannot open: No such file")
ckpt_cli_check(NAME usage ARGS "verify" RC 2 MATCH "wrong number of arguments" "usage: insitra-ckpt")
ckpt_cli_check(NAME unknown_command ARGS "inspect|${step6}" RC 2 MATCH "unknown command 'inspect'")
