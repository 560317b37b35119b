//! Operator control: the admin port's routes that list a pool's sessions,
//! mark members and reload, and `hapool gateway ctl`, which calls them.

use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hapool_gateway::{AdminState, GatewayView, Reloaded};
use hapool_wire::{PoolElementId, PoolHandle};
use serde_json::Value;

use super::Reloader;

#[derive(clap::Args)]
pub(super) struct CtlArgs {
    #[command(flatten)]
    target: crate::admin::AdminTarget,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(clap::Subcommand)]
enum CtlAction {
    /// Every pool's members: state, availability, load, sessions.
    List,
    /// The listeners: address, protocol, pool, TLS, affinity, open
    /// connections.
    Listeners,
    /// A pool's sessions (most recently used first, at most 1000).
    Sessions {
        /// The pool handle.
        pool: String,
    },
    /// Reads the gateway's configuration file again and takes what can
    /// change while it runs (as SIGHUP does); says what takes a restart.
    Reload,
    /// Marks a member: active, restricted, out_of_service (drain) or
    /// pending_delete (drain, then remove).
    Set {
        /// The pool handle.
        pool: String,
        /// The member's PE identifier (hex, as `list` shows it).
        pe: String,
        /// The new state.
        state: String,
    },
}

/// `GET /sessions/{pool}`, `POST /pools/{pool}/members/{pe}/{state}` and
/// `POST /reload`.
pub(super) fn control_routes(view: GatewayView, reloader: Arc<Reloader>) -> Router {
    let sessions_view = view.clone();
    Router::new()
        .route(
            "/reload",
            post(move || {
                let reloader = reloader.clone();
                async move {
                    match reloader.reload().await {
                        Ok(done) => Ok(axum::Json(done)),
                        Err(e) => Err((
                            StatusCode::BAD_REQUEST,
                            format!("reload refused, the gateway goes on as it was: {e:#}\n"),
                        )),
                    }
                }
            }),
        )
        .route(
            "/sessions/{pool}",
            get(move |Path(pool): Path<String>| {
                let view = sessions_view.clone();
                async move {
                    let Some(pool) = view.pool(&PoolHandle::from(pool.as_str())) else {
                        return Err((StatusCode::NOT_FOUND, format!("no pool {pool:?}\n")));
                    };
                    let sessions: Vec<Value> = pool
                        .sessions
                        .list(1000)
                        .into_iter()
                        .map(|(key, s)| {
                            serde_json::json!({
                                "session": key.to_string(),
                                "pe_id": format!("{:08x}", s.member.0),
                                "requests": s.requests,
                                "idle_ms": s.last_seen.elapsed().as_millis() as u64,
                                "state_cookie": s.state.is_some(),
                            })
                        })
                        .collect();
                    Ok(axum::Json(Value::Array(sessions)))
                }
            }),
        )
        .route(
            "/pools/{pool}/members/{pe}/{state}",
            post(
                move |Path((pool, pe, state)): Path<(String, String, String)>| {
                    let view = view.clone();
                    async move { set_state(&view, &pool, &pe, &state) }
                },
            ),
        )
}

fn set_state(view: &GatewayView, pool: &str, pe: &str, state: &str) -> (StatusCode, String) {
    let Some(target) = view.pool(&PoolHandle::from(pool)) else {
        return (StatusCode::NOT_FOUND, format!("no pool {pool:?}\n"));
    };
    let Ok(id) = u32::from_str_radix(pe.trim_start_matches("0x"), 16) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{pe:?} is not a hexadecimal PE identifier\n"),
        );
    };
    let Some(state) = AdminState::parse(state) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{state:?}: active, restricted, out_of_service or pending_delete\n"),
        );
    };
    if target.set_admin(PoolElementId(id), state) {
        (
            StatusCode::OK,
            format!("{pool} {id:08x} {}\n", state.as_str()),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no member {id:08x}\n"),
        )
    }
}

/// The gateway's `/status` document.
async fn status(client: &crate::admin::AdminClient) -> anyhow::Result<Value> {
    let (code, body) = client.get("/status").await?;
    if !code.is_success() {
        bail!("{} answered {code}", client.base());
    }
    serde_json::from_slice(&body).context("/status is not JSON")
}

pub(super) async fn control(args: CtlArgs) -> anyhow::Result<()> {
    let client = crate::admin::AdminClient::from_target(&args.target, "127.0.0.1:3882")?;
    match args.action {
        CtlAction::List => {
            let doc = status(&client).await?;
            println!(
                "{:<16} {:<9} {:<22} {:<15} {:<12} {:>5} {:>7} {:>10} {:>8} {:>9}",
                "POOL",
                "PE",
                "ADDRESS",
                "STATE",
                "AVAILABILITY",
                "INDEX",
                "ACTIVE",
                "SERVED",
                "SESSIONS",
                "ANSWER-MS"
            );
            for pool in doc["pools"].as_array().into_iter().flatten() {
                for m in pool["members"].as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:08x}  {:<22} {:<15} {:<12} {:>5} {:>7} {:>10} {:>8} {:>9}",
                        pool["pool"].as_str().unwrap_or("?"),
                        m["id"].as_u64().unwrap_or(0),
                        m["address"].as_str().unwrap_or("?"),
                        m["admin"].as_str().unwrap_or("?"),
                        m["availability"].as_str().unwrap_or("?"),
                        m["availability_index"].as_u64().unwrap_or(0),
                        m["active"].as_u64().unwrap_or(0),
                        m["served"].as_u64().unwrap_or(0),
                        m["bound_sessions"].as_u64().unwrap_or(0),
                        match m["response_time_us"].as_u64().unwrap_or(0) {
                            0 => "-".to_string(),
                            us => format!("{:.1}", us as f64 / 1000.0),
                        },
                    );
                    if let Some(https) = m["availability_https"].as_str() {
                        println!("{:<16} {:<9} HTTPS port: {https}", "", "");
                    }
                }
            }
        }
        CtlAction::Sessions { pool } => {
            let (code, body) = client.get(&format!("/sessions/{pool}")).await?;
            if !code.is_success() {
                bail!("{}", String::from_utf8_lossy(&body).trim());
            }
            let doc: Value = serde_json::from_slice(&body)?;
            println!(
                "{:<40} {:<9} {:>9} {:>9} STATE-COOKIE",
                "SESSION", "PE", "REQUESTS", "IDLE-MS"
            );
            for s in doc.as_array().into_iter().flatten() {
                println!(
                    "{:<40} {:<9} {:>9} {:>9} {}",
                    s["session"].as_str().unwrap_or("?"),
                    s["pe_id"].as_str().unwrap_or("?"),
                    s["requests"].as_u64().unwrap_or(0),
                    s["idle_ms"].as_u64().unwrap_or(0),
                    s["state_cookie"].as_bool().unwrap_or(false)
                );
            }
        }
        CtlAction::Listeners => {
            let doc = status(&client).await?;
            println!(
                "{:<24} {:<9} {:<16} {:<4} {:<15} {:>11} {:>7} {:>10} {:>6}",
                "ADDRESS",
                "PROTOCOL",
                "POOL",
                "TLS",
                "AFFINITY",
                "CONNECTIONS",
                "SOCKETS",
                "TAKEN-OVER",
                "PASSED"
            );
            for l in doc["listeners"].as_array().into_iter().flatten() {
                let per_socket = l["connections"].as_array();
                let open: u64 = per_socket
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .sum();
                println!(
                    "{:<24} {:<9} {:<16} {:<4} {:<15} {:>11} {:>7} {:>10} {:>6}",
                    l["address"].as_str().unwrap_or("?"),
                    l["protocol"].as_str().unwrap_or("?"),
                    l["pool"].as_str().unwrap_or("?"),
                    if l["tls"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    l["affinity"].as_str().unwrap_or("?"),
                    open,
                    per_socket.map_or(0, Vec::len),
                    l["taken_over"].as_u64().unwrap_or(0),
                    l["passed"].as_u64().unwrap_or(0)
                );
            }
            let tickets = &doc["tickets"];
            if tickets["shared"].as_bool().unwrap_or(false) {
                println!(
                    "TLS session tickets: {} shared key(s), sealing with {}",
                    tickets["keys"].as_u64().unwrap_or(0),
                    tickets["sealing"].as_str().unwrap_or("?")
                );
            } else {
                println!("TLS session tickets: the gateway's own keys");
            }
        }
        CtlAction::Reload => {
            let (code, body) = client.post("/reload").await?;
            if !code.is_success() {
                bail!("{}", String::from_utf8_lossy(&body).trim());
            }
            let done: Reloaded =
                serde_json::from_slice(&body).context("/reload answered no report")?;
            for line in &done.applied {
                println!("in effect: {line}");
            }
            for line in &done.needs_restart {
                println!("takes a restart: {line}");
            }
            if done.applied.is_empty() && done.needs_restart.is_empty() {
                println!("nothing changed");
            }
        }
        CtlAction::Set { pool, pe, state } => {
            let (code, body) = client
                .post(&format!("/pools/{pool}/members/{pe}/{state}"))
                .await?;
            let text = String::from_utf8_lossy(&body);
            if !code.is_success() {
                bail!("{}", text.trim());
            }
            print!("{text}");
        }
    }
    Ok(())
}
