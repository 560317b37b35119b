//! `hapool wire decode`: decoded messages as an indented, readable tree.

use std::fmt::Write;

use anyhow::bail;
use bytes::BytesMut;
use hapool_wire::{
    AsapMessage, DecodeError, Decoded, EnrpBody, EnrpMessage, ErrorCause, FrameDecoder, Message,
    OperationError, PoolElement, PoolElementId, PoolHandle, ResolutionOutcome,
};

use crate::Protocol;

/// Decodes every message in `bytes` and prints each; fails on the first
/// malformed one, naming what is wrong and the error cause it maps to.
pub(crate) fn decode(protocol: Protocol, bytes: &[u8]) -> anyhow::Result<()> {
    match protocol {
        Protocol::Asap => decode_all::<AsapMessage>(bytes, describe_asap),
        Protocol::Enrp => decode_all::<EnrpMessage>(bytes, describe_enrp),
    }
}

fn decode_all<M: Message>(bytes: &[u8], describe: fn(&M) -> String) -> anyhow::Result<()> {
    if bytes.is_empty() {
        bail!("no bytes to decode");
    }
    let mut buf = BytesMut::from(bytes);
    let mut decoder = FrameDecoder::<M>::default();
    let mut offset = 0;
    while !buf.is_empty() {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(Decoded { message, reports })) => {
                print!("{}", describe(&message));
                for report in &reports {
                    println!("  report to sender: {}", describe_cause(report));
                }
            }
            Ok(None) => bail!(
                "{} bytes at offset {offset} are not a whole {} message",
                buf.len(),
                M::PROTOCOL
            ),
            Err(e) => bail!(
                "{} message at offset {offset}: {}",
                M::PROTOCOL,
                explain(&e)
            ),
        }
        offset += before - buf.len();
    }
    Ok(())
}

/// The error and the cause a peer would be sent.
fn explain(e: &DecodeError) -> String {
    match e.cause() {
        Some(cause) => format!("{e} (peer would be sent: {})", describe_cause(&cause)),
        None => format!("{e} (discarded silently, as its action bits ask)"),
    }
}

fn describe_cause(cause: &ErrorCause) -> String {
    if cause.info.is_empty() {
        format!("{:?}", cause.code)
    } else {
        format!("{:?}, info {}", cause.code, hex::encode(&cause.info))
    }
}

fn element(out: &mut String, pe: &PoolElement) {
    let _ = writeln!(
        out,
        "  pool element {} home {} life {} ms\n    user transport {}\n    policy {}",
        pe.id, pe.home_registrar, pe.registration_life, pe.user_transport, pe.policy
    );
    if let Some(t) = &pe.asap_transport {
        let _ = writeln!(out, "    ASAP transport {t}");
    }
}

fn error(out: &mut String, e: &OperationError) {
    for cause in &e.causes {
        let _ = writeln!(out, "  error cause {}", describe_cause(cause));
    }
}

fn handle_pe_error(
    out: &mut String,
    pool_handle: &PoolHandle,
    pe_id: PoolElementId,
    e: Option<&OperationError>,
) {
    let _ = writeln!(out, "  pool handle \"{pool_handle}\"\n  PE {pe_id}");
    if let Some(e) = e {
        error(out, e);
    }
}

fn describe_asap(m: &AsapMessage) -> String {
    let mut out = format!("ASAP {:?}\n", m.message_type());
    let o = &mut out;
    match m {
        AsapMessage::Registration {
            pool_handle,
            pool_element,
            auth_token,
        } => {
            let _ = writeln!(o, "  pool handle \"{pool_handle}\"");
            element(o, pool_element);
            if let Some(token) = auth_token {
                // The secret itself is never printed.
                let _ = writeln!(o, "  authentication token ({} bytes)", token.len());
            }
        }
        AsapMessage::Deregistration { pool_handle, pe_id }
        | AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
        | AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
            let _ = writeln!(o, "  pool handle \"{pool_handle}\"\n  PE {pe_id}");
        }
        AsapMessage::RegistrationResponse {
            reject,
            pool_handle,
            pe_id,
            error: e,
        } => {
            let _ = writeln!(o, "  {}", if *reject { "REJECTED" } else { "accepted" });
            handle_pe_error(o, pool_handle, *pe_id, e.as_ref());
        }
        AsapMessage::DeregistrationResponse {
            pool_handle,
            pe_id,
            error: e,
        } => handle_pe_error(o, pool_handle, *pe_id, e.as_ref()),
        AsapMessage::HandleResolution {
            subscribe,
            pool_handle,
            items,
        } => {
            let _ = writeln!(o, "  pool handle \"{pool_handle}\"");
            match items {
                Some(u32::MAX) => o.push_str("  items: as many as possible\n"),
                Some(n) => {
                    let _ = writeln!(o, "  items: {n}");
                }
                None => o.push_str("  items: registrar's default\n"),
            }
            if *subscribe {
                o.push_str("  subscribe to updates\n");
            }
        }
        AsapMessage::HandleResolutionResponse {
            pool_handle,
            outcome,
            accepted,
        } => {
            let _ = writeln!(o, "  pool handle \"{pool_handle}\"");
            if *accepted {
                o.push_str("  subscription accepted\n");
            }
            match outcome {
                ResolutionOutcome::Error(e) => error(o, e),
                ResolutionOutcome::Members { policy, elements } => {
                    if let Some(p) = policy {
                        let _ = writeln!(o, "  pool policy {p}");
                    }
                    let _ = writeln!(o, "  {} pool element(s)", elements.len());
                    for pe in elements {
                        element(o, pe);
                    }
                }
            }
        }
        AsapMessage::EndpointKeepAlive {
            home,
            registrar_id,
            pool_handle,
            pe_id,
        } => {
            let _ = writeln!(
                o,
                "  from registrar {registrar_id}\n  pool handle \"{pool_handle}\""
            );
            if let Some(id) = pe_id {
                let _ = writeln!(o, "  PE {id}");
            }
            if *home {
                o.push_str("  sender becomes the PE's home registrar\n");
            }
        }
        AsapMessage::ServerAnnounce {
            registrar_id,
            transports,
        } => {
            let _ = writeln!(o, "  registrar {registrar_id}");
            for t in transports {
                let _ = writeln!(o, "  reachable at {t}");
            }
        }
        AsapMessage::Cookie { cookie } | AsapMessage::CookieEcho { cookie } => {
            let _ = writeln!(
                o,
                "  cookie ({} bytes) {}",
                cookie.len(),
                hex::encode(cookie)
            );
        }
        AsapMessage::BusinessCard {
            pool_handle,
            policy,
            elements,
        } => {
            let _ = writeln!(o, "  pool handle \"{pool_handle}\"");
            if let Some(p) = policy {
                let _ = writeln!(o, "  pool policy {p}");
            }
            for pe in elements {
                element(o, pe);
            }
        }
        AsapMessage::Error { error: e } => error(o, e),
        other => {
            let _ = writeln!(o, "  {other:?}");
        }
    }
    out
}

fn describe_enrp(m: &EnrpMessage) -> String {
    let mut out = format!(
        "ENRP {:?} from {} to {}\n",
        m.body.message_type(),
        m.sender,
        m.receiver
    );
    let o = &mut out;
    match &m.body {
        EnrpBody::Presence {
            reply_required,
            checksum,
            server_info,
        } => {
            let _ = writeln!(o, "  PE checksum {checksum:#06x}");
            if let Some(s) = server_info {
                let _ = writeln!(o, "  registrar {} at {}", s.registrar_id, s.transport);
            }
            if *reply_required {
                o.push_str("  reply required\n");
            }
        }
        EnrpBody::HandleTableRequest { own_children_only } => {
            if *own_children_only {
                o.push_str("  own children only\n");
            }
        }
        EnrpBody::HandleTableResponse {
            reject,
            more_to_send,
            pools,
        } => {
            if *reject {
                o.push_str("  REJECTED\n");
            }
            for pool in pools {
                let _ = writeln!(o, "  pool handle \"{}\"", pool.pool_handle);
                for pe in &pool.elements {
                    element(o, pe);
                }
            }
            if *more_to_send {
                o.push_str("  more to send\n");
            }
        }
        EnrpBody::HandleUpdate {
            takeover_suggested,
            action,
            pool_handle,
            pool_element,
        } => {
            let _ = writeln!(o, "  {action:?}\n  pool handle \"{pool_handle}\"");
            element(o, pool_element);
            if *takeover_suggested {
                o.push_str("  takeover suggested\n");
            }
        }
        EnrpBody::ListRequest => {}
        EnrpBody::ListResponse { reject, servers } => {
            if *reject {
                o.push_str("  REJECTED\n");
            }
            for s in servers {
                let _ = writeln!(o, "  registrar {} at {}", s.registrar_id, s.transport);
            }
        }
        EnrpBody::InitTakeover { target }
        | EnrpBody::InitTakeoverAck { target }
        | EnrpBody::TakeoverServer { target } => {
            let _ = writeln!(o, "  target registrar {target}");
        }
        EnrpBody::Error { error: e } => error(o, e),
        other => {
            let _ = writeln!(o, "  {other:?}");
        }
    }
    out
}
