# cmake -DREADME=<README.md> -DFILE=<path> -DNAME=<path as the README names it> -P readme_block.cmake
#
# The README shows examples/quickstart's files whole, each in the code block
# after a line `<!-- NAME -->`: the block must be the file, byte for byte, so
# the program a reader copies is the one the install tests build and run.
cmake_minimum_required(VERSION 3.24)
file(READ "${README}" readme)
file(READ "${FILE}" content)
set(marker "<!-- ${NAME} -->\n```")
string(FIND "${readme}" "${marker}" at)
if(at LESS 0)
  message(FATAL_ERROR "${README} has no block after '<!-- ${NAME} -->'")
endif()
string(SUBSTRING "${readme}" ${at} -1 rest)
string(FIND "${rest}" "\n" line_end)             # the marker line
math(EXPR from "${line_end} + 1")
string(SUBSTRING "${rest}" ${from} -1 rest)
string(FIND "${rest}" "\n" fence_end)            # the opening fence
math(EXPR from "${fence_end} + 1")
string(SUBSTRING "${rest}" ${from} -1 rest)
string(FIND "${rest}" "\n```\n" close)
if(close LESS 0)
  message(FATAL_ERROR "${README}: the block of ${NAME} is not closed")
endif()
math(EXPR length "${close} + 1")
string(SUBSTRING "${rest}" 0 ${length} block)
if(NOT block STREQUAL content)
  message(FATAL_ERROR "${README}: the block of ${NAME} differs from ${FILE}: copy the file into it")
endif()
message(STATUS "${README}: the block of ${NAME} is ${FILE}")
