# The test suite, registered with ctest:
#  - unit/<name>: C unit tests (cmocka), one executable per spec/unit/*.c
#  - lua/<name>: busted specs, one ctest per spec/lua/*_spec.lua, run by the
#    binary itself (busted --lua=kpiwatch)
#  - e2e/<name>: spec/e2e/test_* scripts that run the binary as a user would
pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)
find_program(BUSTED busted REQUIRED)

file(GLOB unit_tests CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/spec/unit/*.c)
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
