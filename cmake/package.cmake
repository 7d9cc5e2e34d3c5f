# `make deb`: a Debian package built by CPack from the install rules.
# Depends is computed by dpkg-shlibdeps from the binary's libraries (so it
# follows the distribution it is built on), never written by hand.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME kpiwatch)
set(CPACK_PACKAGE_VENDOR "kpiwatch")
set(CPACK_PACKAGE_CONTACT "kpiwatch maintainers <maintainers@users.noreply.github.com>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "watch and gate Future AGI simulation KPIs from Lua")
set(CPACK_PACKAGE_DESCRIPTION
    "kpiwatch fetches the KPIs of Future AGI simulated test executions and lets Lua\n scripts alert on them, gate CI pipelines on them and explore them in a REPL.")
set(CPACK_DEBIAN_PACKAGE_SECTION devel)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/kpiwatch/kpiwatch")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_STRIP_FILES OFF)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
include(CPack)
