#!/usr/bin/env bash
# Builds netev in release mode and installs it into PREFIX the way a C
# library is installed:
#
#   PREFIX/lib/libnetev.so.X.Y.Z        the shared library, SONAME libnetev.so.ABI
#   PREFIX/lib/libnetev.so.ABI          -> libnetev.so.X.Y.Z (what programs load)
#   PREFIX/lib/libnetev.so              -> libnetev.so.ABI   (what -lnetev finds)
#   PREFIX/lib/libnetev.a               the static library
#   PREFIX/include/netev.h              the C header (and netev.hpp, the C++ one)
#   PREFIX/lib/pkgconfig/netev.pc       for pkg-config
#   PREFIX/lib/cmake/netev/             for CMake's find_package(netev):
#                                       targets netev::netev and netev::netev_static
#
# ABI is the ABI version of the version X.Y.Z in Cargo.toml, by Cargo's rule
# for what is compatible: X from 1.0.0 on; 0.Y before (0.2.Z and 0.3.Z are as
# different as 1.Z and 2.Z), so netev 0.2.0 installs libnetev.so.0.2. Only an
# incompatible ABI change bumps it. Programs record libnetev.so.ABI, so an
# install of a later release of the same ABI replaces the library under them
# and one of another ABI sits beside it. build.rs derives the same name and
# refuses any other NETEV_SONAME.
#
# Usage: scripts/install.sh PREFIX
#   DESTDIR=/stage scripts/install.sh /usr   stages into /stage/usr, files still
#                                            naming /usr (for packagers)
#   NETEV_INSTALL_TARGET_DIR=DIR             where cargo builds (default:
#                                            ${CARGO_TARGET_DIR:-target}/install)
#
# A plain script rather than cargo-c: nothing to install beyond what building
# netev needs (cargo, cc, python3), and it works offline once the crates are
# fetched.
set -euo pipefail

usage() {
  echo "usage: $0 PREFIX   (e.g. /usr/local, or \$HOME/.local; DESTDIR is honoured)" >&2
  exit 2
}
(($# == 1)) || usage
[[ $1 != -* ]] || usage
[[ -n $1 ]] || usage

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo=${CARGO:-cargo}

# An absolute, normalised prefix: it is written into netev.pc.
prefix=$1
[[ $prefix == /* ]] || prefix="$PWD/$prefix"
prefix=$(python3 -c 'import os, sys; print(os.path.normpath(sys.argv[1]))' "$prefix")
destdir=${DESTDIR:-}
dest="$destdir$prefix"

# The version and description from Cargo.toml.
meta=$("$cargo" metadata --no-deps --format-version 1 --manifest-path "$root/Cargo.toml")
read -r version description < <(python3 -c '
import json, sys
pkg = next(p for p in json.load(sys.stdin)["packages"] if p["name"] == "netev")
print(pkg["version"], pkg.get("description") or "netev")
' <<<"$meta")
if [[ ! $version =~ ^([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
  echo "install.sh: version '$version' in Cargo.toml is not MAJOR.MINOR.PATCH" >&2
  exit 1
fi
major=${BASH_REMATCH[1]}
minor=${BASH_REMATCH[2]}
if ((major == 0)); then
  abi="0.$minor"
else
  abi="$major"
fi
soname="libnetev.so.$abi"
realname="libnetev.so.$version"

# Its own target directory: the SONAME differs from the in-tree build's, so
# sharing target/release would rebuild the library back and forth; and a
# `cargo test` calling this script holds the lock of its own target dir.
target_dir=${NETEV_INSTALL_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/install}
echo "==> building netev $version (SONAME $soname) in $target_dir"
NETEV_SONAME="$soname" CARGO_TARGET_DIR="$target_dir" \
  "$cargo" build --release --lib --manifest-path "$root/Cargo.toml"
built="$target_dir/release"
for f in libnetev.so libnetev.a; do
  [[ -f $built/$f ]] || {
    echo "install.sh: $built/$f was not built" >&2
    exit 1
  }
done

echo "==> installing into $dest"
install -d "$dest/lib" "$dest/include" "$dest/lib/pkgconfig" "$dest/lib/cmake/netev"
install -m 0755 "$built/libnetev.so" "$dest/lib/$realname"
ln -sfn "$realname" "$dest/lib/$soname"
ln -sfn "$soname" "$dest/lib/libnetev.so"
install -m 0644 "$built/libnetev.a" "$dest/lib/libnetev.a"
# build.rs regenerated the header from the sources just now.
install -m 0644 "$root/include/netev.h" "$dest/include/netev.h"
if [[ -f $root/include/netev.hpp ]]; then
  install -m 0644 "$root/include/netev.hpp" "$dest/include/netev.hpp"
fi

# pkg-config. Libs.private: what the Rust runtime inside libnetev.a needs,
# for `pkg-config --static --libs netev`.
cat >"$dest/lib/pkgconfig/netev.pc" <<EOF
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include

Name: netev
Description: $description
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lnetev
Libs.private: -lpthread -ldl -lm
EOF
chmod 0644 "$dest/lib/pkgconfig/netev.pc"

# CMake. The prefix is computed from where the file sits, so the whole tree
# can be moved (or staged with DESTDIR) and still be found.
cat >"$dest/lib/cmake/netev/netevConfig.cmake" <<EOF
# CMake package for netev $version (SONAME $soname), written by
# scripts/install.sh.
#
#   find_package(netev $major.$minor REQUIRED)
#   target_link_libraries(app PRIVATE netev::netev)          # libnetev.so
#   target_link_libraries(app PRIVATE netev::netev_static)   # libnetev.a
#
# Both targets carry the include directory; the static one also links the
# system libraries the Rust runtime needs (Threads, dl, m).

get_filename_component(_netev_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

foreach(_netev_file lib/$realname lib/libnetev.a include/netev.h)
  if(NOT EXISTS "\${_netev_prefix}/\${_netev_file}")
    set(netev_FOUND FALSE)
    set(netev_NOT_FOUND_MESSAGE "\${_netev_prefix}/\${_netev_file} is missing: reinstall netev")
    unset(_netev_file)
    unset(_netev_prefix)
    return()
  endif()
endforeach()
unset(_netev_file)

include(CMakeFindDependencyMacro)
find_dependency(Threads)

if(NOT TARGET netev::netev)
  add_library(netev::netev SHARED IMPORTED)
  set_target_properties(netev::netev PROPERTIES
    IMPORTED_LOCATION "\${_netev_prefix}/lib/$realname"
    IMPORTED_SONAME "$soname"
    INTERFACE_INCLUDE_DIRECTORIES "\${_netev_prefix}/include")
endif()

if(NOT TARGET netev::netev_static)
  add_library(netev::netev_static STATIC IMPORTED)
  set_target_properties(netev::netev_static PROPERTIES
    IMPORTED_LOCATION "\${_netev_prefix}/lib/libnetev.a"
    IMPORTED_LINK_INTERFACE_LANGUAGES "C"
    INTERFACE_INCLUDE_DIRECTORIES "\${_netev_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;dl;m")
endif()

unset(_netev_prefix)
EOF

# find_package(netev X.Y) accepts a netev of the same ABI (the SONAME's
# number: X from 1 on, 0.Y before; CMake's SameMajorVersion, or
# SameMinorVersion for 0.x) at least as new as X.Y, and only for the same
# pointer size: find_package(netev 0.1) never finds 0.2, whose ABI differs.
pointer_size=$(($(getconf LONG_BIT) / 8))
sed -e "s/@NETEV_VERSION@/$version/g" \
  -e "s/@NETEV_ABI@/$abi/g" \
  -e "s/@CMAKE_SIZEOF_VOID_P@/$pointer_size/g" >"$dest/lib/cmake/netev/netevConfigVersion.cmake" <<'EOF'
# Version check for find_package(netev), written by scripts/install.sh: a
# request is met by a netev of the same ABI (libnetev.so.@NETEV_ABI@: the
# major from 1.0 on, 0.MINOR before) at least as new as the request.

set(PACKAGE_VERSION "@NETEV_VERSION@")
set(PACKAGE_VERSION_COMPATIBLE FALSE)

if(PACKAGE_FIND_VERSION_RANGE)
  set(_netev_want "${PACKAGE_FIND_VERSION_MIN}")
else()
  set(_netev_want "${PACKAGE_FIND_VERSION}")
endif()
# The ABI of the version asked for; a bare "0" asks for any 0.x.
set(_netev_want_abi "")
if(_netev_want MATCHES "^0*([0-9]+)\\.0*([0-9]+)")
  if(CMAKE_MATCH_1 STREQUAL "0")
    set(_netev_want_abi "0.${CMAKE_MATCH_2}")
  else()
    set(_netev_want_abi "${CMAKE_MATCH_1}")
  endif()
elseif(_netev_want MATCHES "^0*([0-9]+)$")
  set(_netev_want_abi "${CMAKE_MATCH_1}")
endif()
if(_netev_want STREQUAL "")
  set(_netev_same TRUE) # no version asked for
elseif(_netev_want_abi STREQUAL "0")
  string(REGEX MATCH "^0\\." _netev_same "@NETEV_ABI@.")
else()
  string(COMPARE EQUAL "${_netev_want_abi}" "@NETEV_ABI@" _netev_same)
endif()

if(_netev_same AND NOT PACKAGE_VERSION VERSION_LESS _netev_want)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION_RANGE)
    if(PACKAGE_FIND_VERSION_RANGE_MAX STREQUAL "INCLUDE"
       AND PACKAGE_VERSION VERSION_GREATER PACKAGE_FIND_VERSION_MAX)
      set(PACKAGE_VERSION_COMPATIBLE FALSE)
    elseif(PACKAGE_FIND_VERSION_RANGE_MAX STREQUAL "EXCLUDE"
           AND NOT PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION_MAX)
      set(PACKAGE_VERSION_COMPATIBLE FALSE)
    endif()
  endif()
endif()
if(NOT PACKAGE_FIND_VERSION_RANGE AND PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_EXACT TRUE)
endif()
unset(_netev_want)
unset(_netev_want_abi)
unset(_netev_same)

# if the using project doesn't have CMAKE_SIZEOF_VOID_P set, ignore it:
if("${CMAKE_SIZEOF_VOID_P}" STREQUAL "" OR "@CMAKE_SIZEOF_VOID_P@" STREQUAL "")
  return()
endif()

# check that the installed version has the same 32/64bit-ness as the one which is currently searching:
if(NOT CMAKE_SIZEOF_VOID_P STREQUAL "@CMAKE_SIZEOF_VOID_P@")
  math(EXPR installedBits "@CMAKE_SIZEOF_VOID_P@ * 8")
  set(PACKAGE_VERSION "${PACKAGE_VERSION} (${installedBits}bit)")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
endif()
EOF
chmod 0644 "$dest/lib/cmake/netev/netevConfig.cmake" "$dest/lib/cmake/netev/netevConfigVersion.cmake"

echo "==> installed netev $version:"
echo "    $dest/lib/{$realname,$soname,libnetev.so,libnetev.a}"
echo "    $dest/include/netev.h$([[ -f $root/include/netev.hpp ]] && echo ", netev.hpp")"
echo "    $dest/lib/pkgconfig/netev.pc, $dest/lib/cmake/netev/"
if [[ -z $destdir ]]; then
  case "$prefix" in
  /usr | /usr/local)
    echo "    run ldconfig (as root) so the loader's cache knows $soname" ;;
  *)
    echo "    programs find $soname through an rpath (-Wl,-rpath,$prefix/lib) or LD_LIBRARY_PATH" ;;
  esac
fi
