# A thin wrapper over CMake (as Neovim's): `make run` and `make test` are
# all a newcomer needs; both install missing Debian packages first.
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
# seconds of fuzzing per target: `make fuzz`, and the short run of `make test`
FUZZ_SECONDS ?= 60
FUZZ_TEST_SECONDS ?= 10
FUZZ_TARGETS ?=
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PREFIX     ?= /usr/local
CTEST_ARGS ?=

.PHONY: all deb deps run test test-fast test-fresh test-asan test-fuzz fuzz fuzz-build lint test-valgrind install bench format doc clean

all: $(BUILD)/kpiwatch

deps:
	@tools/deps.sh build

$(BUILD)/Makefile: CMakeLists.txt
	@tools/deps.sh build
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=$(PREFIX)

$(BUILD)/kpiwatch: $(BUILD)/Makefile FORCE
	cmake --build $(BUILD) -j $(JOBS)

# The main job: the alert rules of scripts/rules.lua (kpiwatch check) over the sandbox's
# executions, then the CI gate, all with no account.
run: $(BUILD)/kpiwatch
	@scripts/demo.sh $(BUILD)/kpiwatch

test: test-fast test-asan test-fuzz lint test-valgrind

test-fast:
	@tools/deps.sh test
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKW_TESTS_REQUIRED=ON
	cmake --build $(BUILD) -j $(JOBS)
	cd $(BUILD) && ctest -j $(JOBS) --output-on-failure $(CTEST_ARGS)

# The same suite once more under AddressSanitizer and UBSan; any report
# fails the run (halt_on_error, and -fno-sanitize-recover).
test-asan:
	@tools/deps.sh test
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DKW_SANITIZE=ON -DKW_TESTS_REQUIRED=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  KW_SANITIZED=1 ctest -j $(JOBS) --output-on-failure $(CTEST_ARGS)

# libFuzzer targets of spec/fuzz (clang, ASan+UBSan) in their own build.
fuzz-build:
	@tools/deps.sh test
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DKW_FUZZ=ON -DKW_TESTS=OFF
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_targets

# Fuzz every target (or FUZZ_TARGETS="json_kpi template") for FUZZ_SECONDS
# each, growing $(FUZZ_BUILD)/fuzz-corpus; crashes land in
# $(FUZZ_BUILD)/fuzz-artifacts.
fuzz: fuzz-build
	tools/fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Part of `make test`: replay the regression inputs, then a short run of each.
test-fuzz: fuzz-build
	tools/fuzz.sh $(FUZZ_BUILD) $(FUZZ_TEST_SECONDS)

# clang-tidy and cppcheck over runtime/*.c (.clang-tidy, tools/cppcheck.supp),
# luacheck over the Lua code (.luacheckrc).
lint:
	@tools/deps.sh test
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKW_TESTS_REQUIRED=ON >/dev/null
	tools/lint.sh $(BUILD)

# memcheck over the C unit tests and end-to-end runs of the binary.
test-valgrind:
	@tools/deps.sh test
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKW_TESTS_REQUIRED=ON >/dev/null
	cmake --build $(BUILD) -j $(JOBS)
	tools/valgrind.sh $(BUILD)

# --prefix at install time: the prefix cached in an existing build/ (from
# the first configure) must not win over PREFIX given now.
install: $(BUILD)/kpiwatch
	cmake --install $(BUILD) --prefix $(PREFIX)

# The README's two commands, each first, on a fresh Debian 12 (debootstrap,
# as root; minutes, not part of `make test`; doc/testing.md).
test-fresh:
	tools/test-fresh.sh

# A Debian package of the release build in $(BUILD) (CPack; Depends from
# dpkg-shlibdeps): $(BUILD)/kpiwatch_<version>_<arch>.deb
deb: $(BUILD)/kpiwatch
	@tools/deps.sh package
	cd $(BUILD) && cpack -G DEB

bench: $(BUILD)/kpiwatch
	@tools/deps.sh bench
	spec/bench/run.sh $(BUILD)/kpiwatch

# doc/lua-api.md from the LuaCATS annotations of lualib/ (e2e/test_docs
# fails when it is stale).
doc: $(BUILD)/kpiwatch
	$(BUILD)/kpiwatch tools/gen_lua_api.lua lualib > doc/lua-api.md.tmp
	mv doc/lua-api.md.tmp doc/lua-api.md

format:
	clang-format -i runtime/*.c runtime/*.h spec/unit/*.c

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)

FORCE:
