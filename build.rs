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
    // NETEV_SONAME=libnetev.so.0, the ABI major, for an installed library.
    println!("cargo:rerun-if-env-changed=NETEV_SONAME");
    let soname = std::env::var("NETEV_SONAME").unwrap_or_else(|_| "libnetev.so".into());
    if soname.is_empty() || soname.contains(|c: char| c.is_whitespace() || c == ',' || c == '/') {
        panic!("NETEV_SONAME={soname:?}: expected a file name such as libnetev.so.0");
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
