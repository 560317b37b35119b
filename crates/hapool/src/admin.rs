//! The admin HTTP port of every daemon: `GET /` (the live dashboard),
//! `GET /status` (JSON), `GET /events` (the status once a second, as
//! server-sent events) and `GET /metrics` (Prometheus text format); and `hapool status`, which
//! reads `/status` and prints it as a table.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tokio::net::TcpListener;

/// Produces the daemon's `/status` document.
pub(crate) type StatusFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Value> + Send>> + Send + Sync>;

/// The live dashboard: one page, no external assets; it renders `/status`
/// and follows `/events`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The status document once a second, as server-sent events.
fn status_events(
    status: StatusFn,
) -> impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>> {
    futures_util::stream::unfold(status, |status| async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let doc = status().await;
        Some((Ok(Event::default().data(doc.to_string())), status))
    })
}

/// Installs the process-wide Prometheus recorder.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")
}

/// Binds the admin port at `addr` and installs the metrics recorder (before
/// the daemon starts, so that its first gauges are recorded).
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, PrometheusHandle)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the admin port"))?;
    Ok((listener, install_metrics()?))
}

/// Serves the admin port on `listener` until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    status: StatusFn,
    metrics: PrometheusHandle,
) -> anyhow::Result<()> {
    serve_with(listener, status, metrics, Router::new()).await
}

/// Serves the admin port with the daemon's own routes `extra` besides
/// `/status` and `/metrics`.
pub(crate) async fn serve_with(
    listener: TcpListener,
    status: StatusFn,
    metrics: PrometheusHandle,
    extra: Router,
) -> anyhow::Result<()> {
    let events_status = status.clone();
    let app = extra
        .route(
            "/",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    DASHBOARD,
                )
            }),
        )
        .route(
            "/events",
            get(move || {
                let status = events_status.clone();
                async move { Sse::new(status_events(status)).keep_alive(KeepAlive::default()) }
            }),
        )
        .route(
            "/status",
            get(move || {
                let status = status.clone();
                async move { axum::Json(status().await) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        );
    axum::serve(listener, app)
        .await
        .context("admin server failed")
}

/// Options of `hapool status`.
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// The admin address of the daemon (its `--admin`).
    #[arg(long, default_value = "127.0.0.1:3880")]
    admin: SocketAddr,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

/// GETs `uri` over plain HTTP; the status and the body.
pub(crate) async fn http_get(uri: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = uri
        .parse()
        .with_context(|| format!("{uri:?} is not a URL"))?;
    let response = client
        .get(uri.clone())
        .await
        .with_context(|| format!("GET {uri} failed"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// POSTs an empty body to `uri` over plain HTTP; the status and the body.
pub(crate) async fn http_post(uri: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = hyper::Request::post(uri)
        .body(Empty::new())
        .with_context(|| format!("{uri:?} is not a URL"))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("POST {uri} failed"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let (code, body) = http_get(&format!("http://{}/status", args.admin))
        .await
        .with_context(|| format!("cannot reach the admin port at {}", args.admin))?;
    if !code.is_success() {
        bail!("{} answered {code}", args.admin);
    }
    let doc: Value = serde_json::from_slice(&body).context("/status is not JSON")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "registrar {}  ASAP {}",
        doc["registrar_id"].as_str().unwrap_or("?"),
        doc["asap"].as_str().unwrap_or("?")
    );
    println!(
        "{:<20} {:<10} {:<28} {:<28} HOME",
        "POOL", "PE", "TRANSPORT", "POLICY"
    );
    for pool in doc["pools"].as_array().into_iter().flatten() {
        for pe in pool["elements"].as_array().into_iter().flatten() {
            println!(
                "{:<20} {:<10} {:<28} {:<28} {}",
                pool["pool"].as_str().unwrap_or("?"),
                pe["id"].as_str().unwrap_or("?"),
                pe["transport"].as_str().unwrap_or("?"),
                pe["policy"].as_str().unwrap_or("?"),
                pe["home"].as_str().unwrap_or("?"),
            );
        }
    }
    Ok(())
}
