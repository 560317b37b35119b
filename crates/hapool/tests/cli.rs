//! The `hapool` command as a user runs it.

use std::process::Command;

fn hapool(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hapool"))
        .args(args)
        .output()
        .expect("run hapool");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn wire_decode_prints_each_message_of_a_stream() {
    // A registration and a keep-alive ack back to back, as on a TCP stream.
    let (ok, out, err) = hapool(&[
        "wire",
        "decode",
        "01000038 000900084563686f 000a002c 11223344 00000000 00007530",
        "00050010 00070000 00010008 0a000001 0008000c 40000001 40000000",
        "08000014 000900084563686f 000e000811223344",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "ASAP Registration\n  pool handle \"Echo\"\n  pool element 11223344 home 00000000 life 30000 ms\n    user transport tcp://10.0.0.1:7\n    policy LU load=25.00%\nASAP EndpointKeepAliveAck\n  pool handle \"Echo\"\n  PE 11223344\n"
    );
}

#[test]
fn wire_decode_enrp() {
    let (ok, out, err) = hapool(&[
        "wire",
        "decode",
        "--protocol",
        "enrp",
        "07000010 0a0b0c0d 00000000 0badbeef",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "ENRP InitTakeover from 0a0b0c0d to 00000000\n  target registrar 0badbeef\n"
    );
}

#[test]
fn wire_decode_names_the_fault_and_the_cause() {
    // A deregistration whose PE identifier parameter says length 12.
    let (ok, _, err) = hapool(&[
        "wire",
        "decode",
        "02000014 000900084563686f 000e000c11223344",
    ]);
    assert!(!ok);
    assert!(err.contains("ASAP message at offset 0"), "{err}");
    assert!(err.contains("Invalid Values (0x0003)"), "{err}");
    // An unknown message type maps to Unrecognized Message.
    let (ok, _, err) = hapool(&["wire", "decode", "7f000004"]);
    assert!(!ok);
    assert!(err.contains("Unrecognized Message (0x0002)"), "{err}");
    // Not hex at all.
    let (ok, _, err) = hapool(&["wire", "decode", "zz"]);
    assert!(!ok);
    assert!(err.contains("not hex"), "{err}");
    // A message cut short.
    let (ok, _, err) = hapool(&["wire", "decode", "08000014 00090008"]);
    assert!(!ok);
    assert!(err.contains("not a whole ASAP message"), "{err}");
}
