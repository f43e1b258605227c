//! Generates include/netev.h from the sources with cbindgen.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    // Let a host dlclose() netev safely: its runtime's thread-local
    // destructors and atfork handler must never point into unmapped code.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    // The SONAME: plain `libnetev.so` for the in-tree build (examples and
    // tests link target/*/libnetev.so directly); scripts/install.sh sets
    // NETEV_SONAME=libnetev.so.<ABI> for an installed library, where ABI is
    // the version's by Cargo's rule of what is compatible: the major from
    // 1.0.0 on, 0.MINOR before (netev 0.2.0: libnetev.so.0.2). Any other
    // name is refused, so a stale script cannot install a library whose
    // SONAME claims another ABI.
    println!("cargo:rerun-if-env-changed=NETEV_SONAME");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    let abi_soname = match major.as_str() {
        "0" => format!("libnetev.so.0.{minor}"),
        _ => format!("libnetev.so.{major}"),
    };
    let soname = std::env::var("NETEV_SONAME").unwrap_or_else(|_| "libnetev.so".into());
    if soname != "libnetev.so" && soname != abi_soname {
        panic!(
            "NETEV_SONAME={soname:?}: expected {abi_soname:?} (the ABI of version {major}.{minor}), \
             or unset for the in-tree libnetev.so"
        );
    }
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    let config = match cbindgen::Config::from_file(dir.join("cbindgen.toml")) {
        Ok(c) => c,
        Err(e) => panic!("cbindgen.toml: {e}"),
    };
    match cbindgen::generate_with_config(&dir, config) {
        Ok(bindings) => {
            bindings.write_to_file(dir.join("include/netev.h"));
        }
        Err(e) => panic!("cbindgen could not generate include/netev.h: {e}"),
    }
}
