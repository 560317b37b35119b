//! The gateway's per-pool, per-member and per-listener series for
//! `/metrics`, rendered from its status at each scrape: a member that
//! leaves the pool leaves no series behind, and nothing is counted twice
//! (the counters are the members' own).

use std::fmt::Write;

use hapool_gateway::{Availability, GatewayStatus, MemberStatus};

/// One series of a member's.
struct Series {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&MemberStatus) -> f64,
}

/// Every member series; each line carries the labels `pool`, `member` (its
/// PE identifier in hex) and `address`.
const MEMBER_SERIES: [Series; 8] = [
    Series {
        name: "hapool_gateway_member_up",
        kind: "gauge",
        help: "1 while the member answers its probes and connections, else 0.",
        value: |m| f64::from(u8::from(m.availability != Availability::Unreachable)),
    },
    Series {
        name: "hapool_gateway_member_availability_index",
        kind: "gauge",
        help: "100 minus the member's load in percent.",
        value: |m| f64::from(m.availability_index),
    },
    Series {
        name: "hapool_gateway_member_active_sessions",
        kind: "gauge",
        help: "HTTP requests and TCP connections open to the member now.",
        value: |m| f64::from(m.active),
    },
    Series {
        name: "hapool_gateway_member_sessions_total",
        kind: "counter",
        help: "New sessions (HTTP requests, TCP connections) the gateway chose the member for.",
        value: |m| m.chosen as f64,
    },
    Series {
        name: "hapool_gateway_member_served_total",
        kind: "counter",
        help: "Sessions the member finished: HTTP requests it answered, TCP connections that ended without failing.",
        value: |m| m.served as f64,
    },
    Series {
        name: "hapool_gateway_member_failures_total",
        kind: "counter",
        help: "Requests and connections to the member that failed.",
        value: |m| m.failed as f64,
    },
    Series {
        name: "hapool_gateway_member_bytes_total",
        kind: "counter",
        help: "Bytes carried to and from the member over TCP listeners.",
        value: |m| m.bytes as f64,
    },
    Series {
        name: "hapool_gateway_member_response_seconds",
        kind: "gauge",
        help: "The member's recent time to answer an HTTP request (0: no answer in the last second).",
        value: |m| f64::from(m.response_time_us) / 1e6,
    },
];

/// A label value as the exposition format writes it.
fn escaped(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The series of `status`, in the Prometheus text format.
pub(crate) fn render(status: &GatewayStatus) -> String {
    let mut out = String::new();
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    for series in &MEMBER_SERIES {
        head(&mut out, series.name, series.kind, series.help);
        for pool in &status.pools {
            for m in &pool.members {
                let _ = writeln!(
                    out,
                    "{}{{pool=\"{}\",member=\"{:08x}\",address=\"{}\"}} {}",
                    series.name,
                    escaped(&pool.pool),
                    m.id,
                    m.address,
                    (series.value)(m)
                );
            }
        }
    }
    head(
        &mut out,
        "hapool_gateway_member_state",
        "gauge",
        "1 for each member, with the operator's mark (admin) and how it stands for a new session (availability) as labels.",
    );
    for pool in &status.pools {
        for m in &pool.members {
            let _ = writeln!(
                out,
                "hapool_gateway_member_state{{pool=\"{}\",member=\"{:08x}\",address=\"{}\",admin=\"{}\",availability=\"{}\"}} 1",
                escaped(&pool.pool),
                m.id,
                m.address,
                m.admin.as_str(),
                m.availability.as_str()
            );
        }
    }
    head(
        &mut out,
        "hapool_gateway_pool_sessions",
        "gauge",
        "Sessions in the pool's session table.",
    );
    for pool in &status.pools {
        let _ = writeln!(
            out,
            "hapool_gateway_pool_sessions{{pool=\"{}\"}} {}",
            escaped(&pool.pool),
            pool.sessions
        );
    }
    head(
        &mut out,
        "hapool_gateway_listener_connections",
        "gauge",
        "Client connections open on the listener, all its threads together.",
    );
    for listener in &status.listeners {
        let _ = writeln!(
            out,
            "hapool_gateway_listener_connections{{listener=\"{}\",pool=\"{}\"}} {}",
            listener.address,
            escaped(&listener.pool),
            listener.connections.iter().sum::<usize>()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_break_a_line() {
        assert_eq!(escaped("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
