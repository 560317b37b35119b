//! How the `hapool` binary (and the examples beside it) is linked.
//!
//! On Linux the functions the compiler knows to be cold (panics, error
//! paths, whatever is marked `#[cold]`) are kept in a `.text.unlikely`
//! section of their own rather than between the functions a request runs
//! through, so that those take fewer instruction-cache lines
//! (docs/performance.md, "Cold code apart"). The flag changes where code
//! lies, not what it does; GNU ld (2.31 on) and LLD both take it.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for targets in ["bins", "examples"] {
            println!("cargo:rustc-link-arg-{targets}=-Wl,-z,keep-text-section-prefix");
        }
    }
}
