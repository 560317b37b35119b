//! How many sockets listen on an address: for the tests of handovers,
//! here and in the `hapool` crate's (included there by path).

use std::fmt::Display;
use std::process::Command;

/// How many sockets listen on `addr`, as `ss` (iproute2) counts them
/// (asking the kernel for listening sockets only); `None`, and the check
/// skipped, without `ss`, unless `HAPOOL_REQUIRE_TOOLS=1`.
pub(crate) fn listening_sockets(addr: impl Display) -> Option<usize> {
    let Ok(out) = Command::new("ss")
        .args(["-Hltn", &format!("src {addr}")])
        .output()
    else {
        assert!(
            std::env::var_os("HAPOOL_REQUIRE_TOOLS").is_none(),
            "HAPOOL_REQUIRE_TOOLS is set but ss is not installed (apt-get install iproute2)"
        );
        eprintln!("SKIPPED: the count of listening sockets (no ss: apt-get install iproute2)");
        return None;
    };
    assert!(out.status.success(), "{out:?}");
    Some(String::from_utf8_lossy(&out.stdout).lines().count())
}
