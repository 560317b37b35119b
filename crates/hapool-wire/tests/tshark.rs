//! Cross-check against Wireshark's ASAP and ENRP dissectors.
//!
//! Needs `tshark` (Debian package `tshark`). Without it the test says so
//! and passes, unless `HAPOOL_REQUIRE_TOOLS=1` (as CI sets), where a missing
//! tshark fails the test.
//!
//! Every message is written into a pcap file as a TCP segment of its own
//! stream: ASAP to port 3863 (where Wireshark decodes ASAP over TCP), ENRP
//! to port 9901 with `tools/wireshark/enrp-over-tcp.lua`, which hands
//! TCP-framed ENRP to Wireshark's stock ENRP dissector (Wireshark registers
//! ENRP on SCTP and UDP only). tshark's JSON must show no malformed-packet
//! or expert item, and for every field we put on the wire (message type,
//! flags, pool handle, PE ids, registrar ids, policy type and values,
//! addresses, ports, error causes, ...) exactly the values we encoded.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use hapool_wire::strategy::{asap_message, enrp_message};
use hapool_wire::{
    AsapMessage, EnrpBody, EnrpMessage, Message, OperationError, Policy, PoolElement, PoolHandle,
    ResolutionOutcome, ServerInformation, Transport, TransportUse, UpdateAction,
};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::Value;

/// A field value tshark shows: exact text, or a number compared with a
/// tolerance (loads and delay penalty factors are shown as fractions).
#[derive(Clone, Debug)]
enum Shown {
    Text(String),
    Approx(f64),
}

type Fields = Vec<(String, Shown)>;

struct Expect<'a> {
    prefix: &'a str,
    fields: Fields,
}

impl Expect<'_> {
    fn text(&mut self, name: &str, value: impl ToString) {
        self.fields.push((
            format!("{}.{name}", self.prefix),
            Shown::Text(value.to_string()),
        ));
    }

    fn approx(&mut self, name: &str, value: f64) {
        self.fields
            .push((format!("{}.{name}", self.prefix), Shown::Approx(value)));
    }

    fn hex32(&mut self, name: &str, value: u32) {
        self.text(name, format!("{value:#010x}"));
    }

    fn bytes(&mut self, name: &str, value: &[u8]) {
        let shown: Vec<String> = value.iter().map(|b| format!("{b:02x}")).collect();
        self.text(name, shown.join(":"));
    }

    fn handle(&mut self, h: &PoolHandle) {
        self.bytes("pool_handle_pool_handle", h.as_bytes());
    }

    fn pe_id(&mut self, id: hapool_wire::PoolElementId) {
        self.hex32("pe_identifier", id.0);
    }

    fn address(&mut self, a: &IpAddr) {
        match a {
            IpAddr::V4(v4) => self.text("ipv4_address", v4),
            IpAddr::V6(v6) => self.text("ipv6_address", v6),
        }
    }

    fn transport(&mut self, t: &Transport) {
        let use_of = |u: &TransportUse| match u {
            TransportUse::DataOnly => 0,
            TransportUse::DataPlusControl => 1,
        };
        match t {
            Transport::Sctp {
                port,
                transport_use,
                addresses,
            } => {
                self.text("sctp_transport_port", port);
                self.text("transport_use", use_of(transport_use));
                for a in addresses {
                    self.address(a);
                }
            }
            Transport::Tcp {
                port,
                transport_use,
                address,
            } => {
                self.text("tcp_transport_port", port);
                self.text("transport_use", use_of(transport_use));
                self.address(address);
            }
            Transport::Udp { port, address } => {
                self.text("udp_transport_port", port);
                self.address(address);
            }
            Transport::UdpLite { port, address } => {
                self.text("udp_lite_transport_port", port);
                self.address(address);
            }
            Transport::Dccp { port, address, .. } => {
                self.text("dccp_transport_port", port);
                self.address(address);
            }
        }
    }

    fn policy(&mut self, p: &Policy) {
        let fraction = |v: u32| f64::from(v) / f64::from(u32::MAX);
        self.hex32("pool_member_selection_policy_type", p.policy_type().0);
        let pre = "pool_member_selection_policy_";
        match *p {
            Policy::RoundRobin | Policy::Random => {}
            Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
                self.text(&format!("{pre}weight"), weight);
            }
            Policy::Priority { priority } => self.text(&format!("{pre}priority"), priority),
            Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => {
                self.approx(&format!("{pre}load"), 100.0 * fraction(load));
            }
            Policy::LeastUsedDegradation { load, degradation }
            | Policy::PriorityLeastUsed { load, degradation } => {
                self.approx(&format!("{pre}load"), 100.0 * fraction(load));
                self.approx(&format!("{pre}degradation"), 100.0 * fraction(degradation));
            }
            // Wireshark 4.0 shows the values of rsplib's extension
            // policies (but for WRAND-DPF and LU-DPF) as raw bytes.
            Policy::RandomizedPriorityLeastUsed { load, degradation }
            | Policy::RandomizedLeastUsedDegradation { load, degradation }
            | Policy::PriorityLeastUsedDegradation { load, degradation }
            | Policy::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
                self.words(&[load, degradation]);
            }
            Policy::WeightedRandomDpf {
                weight,
                weight_dpf,
                distance,
            } => {
                self.text(&format!("{pre}weight"), weight);
                self.approx(&format!("{pre}weight_dpf"), fraction(weight_dpf));
                self.text(&format!("{pre}distance"), distance);
            }
            Policy::LeastUsedDpf {
                load,
                load_dpf,
                distance,
            } => {
                self.approx(&format!("{pre}load"), 100.0 * fraction(load));
                self.approx(&format!("{pre}load_dpf"), fraction(load_dpf));
                self.text(&format!("{pre}distance"), distance);
            }
            Policy::LeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
            | Policy::PriorityLeastUsedDpf {
                load,
                degradation,
                load_dpf,
                distance,
            }
            | Policy::PriorityLeastUsedDegradationDpf {
                load,
                degradation,
                load_dpf,
                distance,
            } => self.words(&[load, degradation, load_dpf, distance]),
            Policy::Other { ref values, .. } => {
                if !values.is_empty() {
                    self.bytes(&format!("{pre}value"), values);
                }
            }
            _ => unreachable!("every policy is listed"),
        }
    }

    /// Policy value words shown as one raw byte string.
    fn words(&mut self, words: &[u32]) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        self.bytes("pool_member_selection_policy_value", &bytes);
    }

    fn element(&mut self, pe: &PoolElement) {
        self.hex32("pool_element_pe_identifier", pe.id.0);
        self.hex32(
            "pool_element_home_enrp_server_identifier",
            pe.home_registrar.0,
        );
        self.text(
            "pool_element_registration_life",
            pe.registration_life as i32,
        );
        self.transport(&pe.user_transport);
        self.policy(&pe.policy);
        if let Some(t) = &pe.asap_transport {
            self.transport(t);
        }
    }

    /// The causes, and what Wireshark dissects inside them: the
    /// parameter or message that [`dissectable_error`] put there.
    fn error(&mut self, e: &OperationError) {
        for cause in &e.causes {
            self.text("cause_code", format!("{:#06x}", cause.code.0));
            match cause.code.0 {
                0x0001 | 0x0003 | 0x0005 | 0x0007 => self.hex32("pe_identifier", 42),
                0x0002 if self.prefix == "asap" => {
                    self.text("message_type", 9);
                    self.text("message_flags", "0x00");
                }
                0x0002 => {
                    self.text("message_type", 5);
                    self.text("message_flags", "0x00");
                    self.hex32("sender_servers_id", 1);
                    self.hex32("receiver_servers_id", 2);
                }
                _ => {}
            }
        }
    }

    fn server_info(&mut self, s: &ServerInformation) {
        self.hex32("server_information_server_identifier", s.registrar_id.0);
        self.transport(&s.transport);
    }
}

fn asap_fields(m: &AsapMessage, flags: u8) -> Fields {
    let mut e = Expect {
        prefix: "asap",
        fields: Vec::new(),
    };
    e.text("message_type", m.message_type() as u8);
    e.text("message_flags", format!("{flags:#04x}"));
    match m {
        AsapMessage::Registration {
            pool_handle,
            pool_element,
            ..
        } => {
            e.handle(pool_handle);
            e.element(pool_element);
        }
        AsapMessage::Deregistration { pool_handle, pe_id }
        | AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
        | AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
            e.handle(pool_handle);
            e.pe_id(*pe_id);
        }
        AsapMessage::RegistrationResponse {
            pool_handle,
            pe_id,
            error,
            ..
        }
        | AsapMessage::DeregistrationResponse {
            pool_handle,
            pe_id,
            error,
        } => {
            e.handle(pool_handle);
            e.pe_id(*pe_id);
            if let Some(error) = error {
                e.error(error);
            }
        }
        AsapMessage::HandleResolution {
            pool_handle, items, ..
        } => {
            e.handle(pool_handle);
            if let Some(items) = items {
                e.text("hropt_items", items);
            }
        }
        AsapMessage::HandleResolutionResponse {
            pool_handle,
            outcome,
            ..
        } => {
            e.handle(pool_handle);
            match outcome {
                ResolutionOutcome::Error(error) => e.error(error),
                ResolutionOutcome::Members { policy, elements } => {
                    if let Some(p) = policy {
                        e.policy(p);
                    }
                    for pe in elements {
                        e.element(pe);
                    }
                }
            }
        }
        AsapMessage::EndpointKeepAlive {
            registrar_id,
            pool_handle,
            pe_id,
            ..
        } => {
            e.hex32("server_identifier", registrar_id.0);
            e.handle(pool_handle);
            if let Some(id) = pe_id {
                e.pe_id(*id);
            }
        }
        AsapMessage::ServerAnnounce {
            registrar_id,
            transports,
        } => {
            e.hex32("server_identifier", registrar_id.0);
            for t in transports {
                e.transport(t);
            }
        }
        AsapMessage::Cookie { cookie } | AsapMessage::CookieEcho { cookie } => {
            if !cookie.is_empty() {
                e.bytes("cookie", cookie);
            }
        }
        AsapMessage::BusinessCard {
            pool_handle,
            policy,
            elements,
        } => {
            e.handle(pool_handle);
            if let Some(p) = policy {
                e.policy(p);
            }
            for pe in elements {
                e.element(pe);
            }
        }
        AsapMessage::Error { error } => e.error(error),
        _ => unreachable!("every message is listed"),
    }
    e.fields
}

fn enrp_fields(m: &EnrpMessage, flags: u8) -> Fields {
    let mut e = Expect {
        prefix: "enrp",
        fields: Vec::new(),
    };
    e.text("message_type", m.body.message_type() as u8);
    e.text("message_flags", format!("{flags:#04x}"));
    e.hex32("sender_servers_id", m.sender.0);
    e.hex32("receiver_servers_id", m.receiver.0);
    match &m.body {
        EnrpBody::Presence {
            checksum,
            server_info,
            ..
        } => {
            e.text("pe_checksum", format!("{checksum:#06x}"));
            if let Some(s) = server_info {
                e.server_info(s);
            }
        }
        EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
        EnrpBody::HandleTableResponse { pools, .. } => {
            for pool in pools {
                e.handle(&pool.pool_handle);
                for pe in &pool.elements {
                    e.element(pe);
                }
            }
        }
        EnrpBody::HandleUpdate {
            action,
            pool_handle,
            pool_element,
            ..
        } => {
            e.text(
                "update_action",
                match action {
                    UpdateAction::AddPe => 0,
                    UpdateAction::DelPe => 1,
                },
            );
            e.handle(pool_handle);
            e.element(pool_element);
        }
        EnrpBody::ListResponse { servers, .. } => {
            for s in servers {
                e.server_info(s);
            }
        }
        EnrpBody::InitTakeover { target }
        | EnrpBody::InitTakeoverAck { target }
        | EnrpBody::TakeoverServer { target } => e.hex32("target_servers_id", target.0),
        EnrpBody::Error { error } => e.error(error),
        _ => unreachable!("every message is listed"),
    }
    e.fields
}

/// Gives every error cause information that Wireshark can dissect: a
/// parameter for the causes that carry one, a message for "Unrecognized
/// Message", nothing for the rest.
fn dissectable_error(error: &mut OperationError, message: &'static [u8]) {
    for cause in &mut error.causes {
        cause.info = match cause.code.0 {
            0x0001 | 0x0003 | 0x0005 | 0x0007 => {
                Bytes::from_static(&[0x00, 0x0E, 0x00, 0x08, 0, 0, 0, 42])
            }
            0x0002 => Bytes::from_static(message),
            _ => Bytes::new(),
        };
    }
}

/// An unrecognized-message cause's information: a header-only message.
const ASAP_INFO: &[u8] = &[0x09, 0x00, 0x00, 0x04];
const ENRP_INFO: &[u8] = &[0x05, 0x00, 0x00, 0x0C, 0, 0, 0, 1, 0, 0, 0, 2];

fn asap_dissectable(mut m: AsapMessage) -> AsapMessage {
    match &mut m {
        AsapMessage::RegistrationResponse {
            error: Some(error), ..
        }
        | AsapMessage::DeregistrationResponse {
            error: Some(error), ..
        }
        | AsapMessage::HandleResolutionResponse {
            outcome: ResolutionOutcome::Error(error),
            ..
        }
        | AsapMessage::Error { error } => dissectable_error(error, ASAP_INFO),
        _ => {}
    }
    m
}

fn enrp_dissectable(mut m: EnrpMessage) -> EnrpMessage {
    if let EnrpBody::Error { error } = &mut m.body {
        dissectable_error(error, ENRP_INFO);
    }
    m
}

/// Writes Ethernet/IPv4/TCP frames into a classic pcap file.
struct Pcap(Vec<u8>);

impl Pcap {
    fn new() -> Self {
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65_535u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
        Self(b)
    }

    fn tcp_segment(&mut self, index: u32, src_port: u16, dst_port: u16, payload: &[u8]) {
        let mut tcp = Vec::with_capacity(20 + payload.len());
        tcp.extend_from_slice(&src_port.to_be_bytes());
        tcp.extend_from_slice(&dst_port.to_be_bytes());
        tcp.extend_from_slice(&1u32.to_be_bytes()); // seq
        tcp.extend_from_slice(&1u32.to_be_bytes()); // ack
        tcp.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]); // PSH|ACK
        tcp.extend_from_slice(payload);
        let total = 20 + tcp.len();
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 2]);
        let sum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut pseudo = vec![127, 0, 0, 1, 127, 0, 0, 2, 0, 6];
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&tcp);
        let sum = internet_checksum(&pseudo);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&tcp);
        self.0.extend_from_slice(&index.to_le_bytes());
        self.0.extend_from_slice(&0u32.to_le_bytes());
        self.0
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.0
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.0.extend_from_slice(&frame);
    }
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Every (key, leaf value) under `value` (tshark run with
/// `--no-duplicate-keys`, so repeated fields come as arrays), and every
/// expert item or malformed-packet marker.
fn collect(value: &Value, out: &mut BTreeMap<String, Vec<String>>, problems: &mut Vec<String>) {
    let Value::Object(map) = value else {
        return;
    };
    for (k, v) in map {
        if ["_ws.expert", "_ws.malformed", "_ws.lua.error"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            problems.push(format!("{k}: {v}"));
        }
        collect_values(k, v, out, problems);
    }
}

fn collect_values(
    key: &str,
    value: &Value,
    out: &mut BTreeMap<String, Vec<String>>,
    problems: &mut Vec<String>,
) {
    match value {
        Value::String(s) => out.entry(key.to_owned()).or_default().push(s.clone()),
        Value::Array(items) => {
            for item in items {
                collect_values(key, item, out, problems);
            }
        }
        Value::Object(_) => collect(value, out, problems),
        _ => {}
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tshark_available() -> bool {
    let found = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("HAPOOL_REQUIRE_TOOLS").is_none(),
            "HAPOOL_REQUIRE_TOOLS is set but tshark is not installed (apt-get install tshark)"
        );
        eprintln!("SKIPPED: tshark is not installed (apt-get install tshark); not cross-checked");
    }
    found
}

/// Encodes `frames` into a pcap, runs tshark on it and checks every frame.
fn cross_check(frames: &[(u16, Vec<u8>, Fields)], name: &str) {
    let mut pcap = Pcap::new();
    for (i, (port, bytes, _)) in frames.iter().enumerate() {
        pcap.tcp_segment(i as u32, 20_000 + i as u16, *port, bytes);
    }
    let dir = std::env::temp_dir().join(format!("hapool-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.pcap"));
    std::fs::write(&file, &pcap.0).unwrap();
    let lua = workspace_root().join("tools/wireshark/enrp-over-tcp.lua");
    let output = Command::new("tshark")
        .arg("-X")
        .arg(format!("lua_script:{}", lua.display()))
        .arg("-r")
        .arg(&file)
        .args(["-T", "json", "--no-duplicate-keys"])
        .output()
        .expect("run tshark");
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let packets: Vec<Value> = serde_json::from_slice(&output.stdout).expect("tshark JSON");
    assert_eq!(packets.len(), frames.len());
    for (i, (packet, (_, bytes, expected))) in packets.iter().zip(frames).enumerate() {
        let layers = &packet["_source"]["layers"];
        let mut shown = BTreeMap::new();
        let mut problems = Vec::new();
        collect(layers, &mut shown, &mut problems);
        let context = || format!("frame {i} of {}: {}", file.display(), hex::encode(bytes));
        assert!(problems.is_empty(), "{}: {problems:?}", context());
        let protocol = &expected[0].0[..4];
        assert!(
            layers.get(protocol).is_some(),
            "{}: no {protocol} layer",
            context()
        );
        // Group what we expect by field and compare with what tshark shows.
        let mut wanted: BTreeMap<&str, Vec<&Shown>> = BTreeMap::new();
        for (k, v) in expected {
            wanted.entry(k).or_default().push(v);
        }
        for (field, values) in wanted {
            let got = shown.get(field).cloned().unwrap_or_default();
            assert_eq!(
                got.len(),
                values.len(),
                "{}: field {field}: tshark shows {got:?}, we encoded {values:?}",
                context()
            );
            // Compare as multisets: merged duplicate keys lose the order.
            if let Shown::Approx(_) = values[0] {
                let mut want: Vec<f64> = values
                    .iter()
                    .map(|v| match v {
                        Shown::Approx(x) => *x,
                        Shown::Text(t) => panic!("mixed field {field}: {t}"),
                    })
                    .collect();
                let mut got: Vec<f64> = got.iter().map(|g| g.parse().unwrap()).collect();
                want.sort_by(f64::total_cmp);
                got.sort_by(f64::total_cmp);
                for (w, g) in want.iter().zip(&got) {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                        "{}: field {field}: tshark {got:?}, we {want:?}",
                        context()
                    );
                }
            } else {
                let mut want: Vec<String> = values
                    .iter()
                    .map(|v| match v {
                        Shown::Text(t) => t.to_lowercase(),
                        Shown::Approx(x) => panic!("mixed field {field}: {x}"),
                    })
                    .collect();
                let mut got: Vec<String> = got.iter().map(|g| g.to_lowercase()).collect();
                want.sort();
                got.sort();
                assert_eq!(got, want, "{}: field {field}", context());
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn asap_frame(m: &AsapMessage) -> (u16, Vec<u8>, Fields) {
    let bytes = m.to_bytes().unwrap().to_vec();
    let fields = asap_fields(m, bytes[1]);
    (hapool_wire::ASAP_PORT, bytes, fields)
}

fn enrp_frame(m: &EnrpMessage) -> (u16, Vec<u8>, Fields) {
    let bytes = m.to_bytes().unwrap().to_vec();
    let fields = enrp_fields(m, bytes[1]);
    (hapool_wire::ENRP_PORT, bytes, fields)
}

/// Generated messages of every type (and every policy, transport and
/// flag along the way) go through tshark.
#[test]
fn tshark_decodes_every_message_as_encoded() {
    if !tshark_available() {
        return;
    }
    let mut runner = TestRunner::deterministic();
    let asap = asap_message().prop_map(asap_dissectable);
    let enrp = enrp_message().prop_map(enrp_dissectable);
    let mut frames = Vec::new();
    let mut asap_types = std::collections::BTreeSet::new();
    let mut enrp_types = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let m = asap.new_tree(&mut runner).unwrap().current();
        asap_types.insert(m.message_type() as u8);
        frames.push(asap_frame(&m));
        let m = enrp.new_tree(&mut runner).unwrap().current();
        enrp_types.insert(m.body.message_type() as u8);
        frames.push(enrp_frame(&m));
    }
    assert_eq!(asap_types.len(), 14);
    assert_eq!(enrp_types.len(), 10);
    cross_check(&frames, "generated");
}
