# libFuzzer targets (-DKW_FUZZ=ON, clang only): one executable per
# spec/fuzz/*.c, each linking the whole runtime and the embedded Lua
# library. Everything in this build, the host core included, is compiled
# with coverage instrumentation, AddressSanitizer and UBSan, so a memory
# error anywhere under a parser aborts the run; the Lua parsers get their
# coverage from a line hook (spec/fuzz/fuzz_lua.h).
#
# Included from CMakeLists.txt before the targets are defined, so that the
# compile options below reach kwcore too. Run by tools/fuzz.sh (make fuzz,
# make test-fuzz).
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "KW_FUZZ needs clang (libFuzzer): configure with -DCMAKE_C_COMPILER=clang")
endif()
if(KW_SANITIZE)
  message(FATAL_ERROR "KW_FUZZ already builds with ASan and UBSan: leave KW_SANITIZE off")
endif()

add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
                    -fno-omit-frame-pointer -g)
add_link_options(-fsanitize=address,undefined)

file(GLOB fuzz_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/fuzz/*.c)
set(KW_FUZZ_TARGETS "")
foreach(src ${fuzz_sources})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE kwcore)
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  target_compile_definitions(${name} PRIVATE KW_FUZZ_DIR="${CMAKE_SOURCE_DIR}/spec/fuzz")
  list(APPEND KW_FUZZ_TARGETS ${name})
endforeach()
add_custom_target(fuzz_targets DEPENDS ${KW_FUZZ_TARGETS})
