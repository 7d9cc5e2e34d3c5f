# The test suite, registered with ctest:
#  - unit/<name>: C unit tests (cmocka), one executable per spec/unit/*.c
#  - lua/<name>: busted specs, one ctest per spec/lua/*_spec.lua, run by the
#    binary itself (busted --lua=kpiwatch)
#  - e2e/<name>: spec/e2e/test_* scripts that run the binary as a user would
#
# cmocka and busted are test dependencies only: building and running
# kpiwatch (`make run`) must not need them. Without them the suites they
# run are left out with a note, unless KW_TESTS_REQUIRED (set by the
# Makefile's test targets, after tools/deps.sh test) makes them required.
if(KW_TESTS_REQUIRED)
  set(kw_req REQUIRED)
endif()
pkg_check_modules(CMOCKA ${kw_req} IMPORTED_TARGET cmocka)
find_program(BUSTED busted ${kw_req})
if(NOT CMOCKA_FOUND)
  message(STATUS "cmocka not found: the C unit tests are not registered (tools/deps.sh test)")
endif()
if(NOT BUSTED)
  message(STATUS "busted not found: the Lua specs are not registered (tools/deps.sh test)")
endif()

file(GLOB unit_tests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/unit/*.c)
if(NOT CMOCKA_FOUND)
  set(unit_tests "")
endif()
foreach(src ${unit_tests})
  get_filename_component(name ${src} NAME_WE)
  add_executable(unit_${name} ${src})
  target_link_libraries(unit_${name} PRIVATE kwcore PkgConfig::CMOCKA)
  add_test(NAME unit/${name} COMMAND unit_${name})
endforeach()

# KPIWATCH_HISTORY=off: no test writes into the user's history file; the
# history's own tests name theirs
set(KW_TEST_ENV "KPIWATCH=$<TARGET_FILE:kpiwatch>;KPIWATCH_SRC=${CMAKE_SOURCE_DIR};FI_API_KEY=;FI_SECRET_KEY=;FI_BASE_URL=;KPIWATCH_HISTORY=off")

file(GLOB lua_specs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/lua/*_spec.lua)
if(NOT BUSTED)
  set(lua_specs "")
endif()
foreach(spec ${lua_specs})
  get_filename_component(name ${spec} NAME_WE)
  add_test(NAME lua/${name}
           COMMAND ${BUSTED} --lua=$<TARGET_FILE:kpiwatch> -o utfTerminal ${spec}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(lua/${name} PROPERTIES ENVIRONMENT "${KW_TEST_ENV}" TIMEOUT 300)
endforeach()

file(GLOB e2e_tests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/e2e/test_*)
foreach(script ${e2e_tests})
  get_filename_component(name ${script} NAME_WE)
  if(script MATCHES "\\.py$")
    set(cmd python3 ${script})
  else()
    set(cmd bash ${script})
  endif()
  add_test(NAME e2e/${name} COMMAND ${cmd} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(e2e/${name} PROPERTIES ENVIRONMENT "${KW_TEST_ENV}" TIMEOUT 300)
endforeach()
