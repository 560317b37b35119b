//! Programs from outside that the gateway's tests use when they are
//! installed: `ss` to count listening sockets, Python for gRPC clients
//! and members and for socket activation. Here and in the `hapool`
//! crate's tests (included there by path). Without one, the check that
//! needs it is skipped, unless `HAPOOL_REQUIRE_TOOLS=1` (as in CI) makes
//! that a failure.

use std::fmt::Display;
use std::process::Command;

/// Says that `what` is missing (`apt-get install <package>` brings it):
/// a failure under `HAPOOL_REQUIRE_TOOLS`, else a skip.
fn missing(what: &str, package: &str) {
    assert!(
        std::env::var_os("HAPOOL_REQUIRE_TOOLS").is_none(),
        "HAPOOL_REQUIRE_TOOLS is set but {what} (apt-get install {package})"
    );
    eprintln!("SKIPPED: {what} (apt-get install {package})");
}

/// How many sockets listen on `addr`, as `ss` (iproute2) counts them
/// (asking the kernel for listening sockets only); `None` without `ss`.
pub(crate) fn listening_sockets(addr: impl Display) -> Option<usize> {
    let Ok(out) = Command::new("ss")
        .args(["-Hltn", &format!("src {addr}")])
        .output()
    else {
        missing("ss is not installed", "iproute2");
        return None;
    };
    assert!(out.status.success(), "{out:?}");
    Some(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// A Python 3 that can import `module` (Debian's `package` has it), when
/// there is one.
pub(crate) fn python_with(module: &str, package: &str) -> Option<&'static str> {
    let import = format!("import {module}");
    let found = ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", &import])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        missing(&format!("no python3 imports {module}"), package);
    }
    found
}
