//! The admin port of every daemon: `GET /` (the live dashboard),
//! `GET /status` (JSON), `GET /events` (the status once a second, as
//! server-sent events), `GET /metrics` (Prometheus text format) and
//! `GET /config` (the running configuration, for `hapool clone`); over
//! HTTPS with an operator token when `admin_tls` is configured. Also the
//! client side: [`AdminClient`], and `hapool status`, which reads
//! `/status` and prints it as a table.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::BadConfig;
use crate::config::AdminTlsFile;
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
        tokio::time::sleep(Duration::from_secs(1)).await;
        let doc = status().await;
        Some((Ok(Event::default().data(doc.to_string())), status))
    })
}

/// Installs the process-wide Prometheus recorder.
pub(crate) fn install_metrics() -> anyhow::Result<PrometheusHandle> {
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

/// The admin port on a socket made elsewhere (a gateway binds its admin
/// port with its listeners, and hands it to a successor with them; docs/
/// operations.md, "Restarting a gateway without losing a connection"),
/// with the metrics recorder installed before.
pub(crate) fn serve_on(
    socket: std::net::TcpListener,
    metrics: PrometheusHandle,
) -> anyhow::Result<(TcpListener, PrometheusHandle)> {
    socket
        .set_nonblocking(true)
        .context("the admin port's socket")?;
    let listener = TcpListener::from_std(socket).context("the admin port's socket")?;
    Ok((listener, metrics))
}

/// Who may do what on the admin port: plain HTTP and no token (reading
/// only what is not secret), or HTTPS, optionally with an operator token.
/// Clones share one state, which [`Access::replace`] changes while the
/// port serves (new certificates, a new token).
#[derive(Clone, Default)]
pub(crate) struct Access(Arc<RwLock<AccessNow>>);

/// What an [`Access`] holds now.
#[derive(Clone, Default)]
struct AccessNow {
    tls: Option<Arc<rustls::ServerConfig>>,
    token: Option<Arc<str>>,
}

/// The shortest operator token accepted.
const MIN_TOKEN: usize = 16;

impl Access {
    /// From `[<daemon>.admin_tls]` (`key` names the table in errors).
    pub(crate) fn load(file: Option<&AdminTlsFile>, key: &str) -> Result<Self, BadConfig> {
        let Some(file) = file else {
            return Ok(Self::default());
        };
        let tls = hapool_net::tls::server_config(&file.certificate, &file.key, None)
            .map_err(|e| BadConfig(format!("{key}: {e}")))?;
        let token = match &file.token_file {
            Some(path) => {
                Some(read_token(path).map_err(|e| BadConfig(format!("{key}.token_file: {e}")))?)
            }
            None => None,
        };
        Ok(Self(Arc::new(RwLock::new(AccessNow {
            tls: Some(tls),
            token: token.map(Arc::from),
        }))))
    }

    fn now(&self) -> AccessNow {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the port is HTTPS.
    pub(crate) fn is_tls(&self) -> bool {
        self.now().tls.is_some()
    }

    /// Whether a request with `headers` may change something: always
    /// without an operator token, else only with it (one look at the
    /// state, which a reload may change between two).
    fn may_change(&self, headers: &axum::http::HeaderMap) -> bool {
        self.now()
            .token
            .is_none_or(|token| carries(headers, &token))
    }

    /// Takes the certificate and token of `new` for the connections and
    /// requests from now on. HTTPS cannot be turned on or off while the
    /// port serves: that is refused, and nothing changes.
    pub(crate) fn replace(&self, new: &Self) -> Result<(), &'static str> {
        let new = new.now();
        let mut now = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if now.tls.is_some() != new.tls.is_some() {
            return Err("HTTPS turned on or off takes a restart");
        }
        *now = new;
        Ok(())
    }

    /// Whether `request` carries the operator token. Always false when
    /// no token is configured.
    pub(crate) fn authorized(&self, headers: &axum::http::HeaderMap) -> bool {
        self.now()
            .token
            .is_some_and(|token| carries(headers, &token))
    }
}

/// Whether `headers` carry `token` (`Authorization: Bearer TOKEN`).
fn carries(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compares every byte, so the time taken does not say how much
    // of a guess was right.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The token in `path`: its first line, at least [`MIN_TOKEN`] characters.
pub(crate) fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < MIN_TOKEN {
        return Err(format!(
            "{}: the token must be at least {MIN_TOKEN} characters",
            path.display()
        ));
    }
    Ok(token)
}

/// Refuses requests that change something (any method but GET and HEAD)
/// without the operator token, when one is configured.
async fn guard(access: Access, request: Request, next: Next) -> Response {
    let reads = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if reads || access.may_change(request.headers()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        "this request needs the operator token (Authorization: Bearer ...)\n",
    )
        .into_response()
}

/// Serves the admin port on `listener` until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    access: Access,
    status: StatusFn,
    metrics: PrometheusHandle,
) -> anyhow::Result<()> {
    serve_with(listener, access, status, metrics, None, Router::new()).await
}

/// Series a daemon renders itself at each scrape, appended to its
/// counters on `/metrics`.
pub(crate) type MoreMetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves the admin port with the daemon's own routes `extra` besides
/// the dashboard, `/status`, `/events` and `/metrics` (with `more`
/// series, when given).
pub(crate) async fn serve_with(
    listener: TcpListener,
    access: Access,
    status: StatusFn,
    metrics: PrometheusHandle,
    more: Option<MoreMetricsFn>,
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
                let mut text = metrics.render();
                if let Some(more) = &more {
                    text.push_str(&more());
                }
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        )
        .layer(axum::middleware::from_fn({
            let access = access.clone();
            move |request, next| guard(access.clone(), request, next)
        }));
    let tls_port = access.is_tls();
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut last_refusal: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(error = %e, "admin port cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Closed at once: an admin port flooded with connections must
            // not take the daemon's descriptors.
            if last_refusal.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                last_refusal = Some(tokio::time::Instant::now());
                warn!(%peer, limit = MAX_ADMIN_CONNECTIONS, "admin port: too many connections; closing new ones (logged at most once a second)");
            }
            continue;
        };
        // The certificate of the moment: a reload may have brought another.
        let tls = if tls_port {
            let Some(tls) = access.now().tls else {
                continue;
            };
            Some(tokio_rustls::TlsAcceptor::from(tls))
        } else {
            None
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT);
            let Some(acceptor) = tls else {
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                return;
            };
            let stream =
                match tokio::time::timeout(ADMIN_HEADER_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        warn!(%peer, error = %e, "admin port: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Admin connections open at once; more are closed as they come.
/// Dashboards keep one open each (`/events`).
const MAX_ADMIN_CONNECTIONS: usize = 256;

/// How long an admin client has for its TLS handshake, and for each
/// request's head (slow clients).
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a command reaches a daemon's admin port: `--admin` as
/// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`; for HTTPS the
/// authority that issued the port's certificate, and the operator token.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct AdminTarget {
    /// The daemon's admin address: HOST:PORT, http://HOST:PORT or
    /// https://HOST:PORT (default: the daemon's usual local port).
    #[arg(long)]
    pub(crate) admin: Option<String>,
    /// The authority (PEM) that issued an HTTPS admin port's certificate.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// A file holding the operator token.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
}

/// A client of one admin port.
pub(crate) struct AdminClient {
    /// `http://HOST:PORT` or `https://HOST:PORT`, as given.
    base: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
    /// What it reaches, for errors ("the admin port").
    peer: &'static str,
}

impl AdminClient {
    /// From the `--admin` text, a CA for HTTPS and a token.
    pub(crate) fn new(
        target: &str,
        ca: Option<&Path>,
        token_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let (https, rest) = if let Some(rest) = target.strip_prefix("https://") {
            (true, rest)
        } else {
            (false, target.strip_prefix("http://").unwrap_or(target))
        };
        let authority = rest.trim_end_matches('/');
        let uri: hyper::Uri = format!("http://{authority}/")
            .parse()
            .with_context(|| format!("{target:?} is not HOST:PORT or a URL"))?;
        let host = uri
            .host()
            .with_context(|| format!("{target:?} names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = match (https, ca) {
            (true, Some(ca)) => Some(
                hapool_net::tls::client_config(ca, None)
                    .with_context(|| format!("--ca {}", ca.display()))?,
            ),
            (true, None) => {
                bail!("{target} is HTTPS: --ca names the authority that issued its certificate")
            }
            (false, _) => None,
        };
        let token = match token_file {
            Some(path) => Some(read_token(path).map_err(|e| anyhow::anyhow!("--token-file: {e}"))?),
            None => None,
        };
        if token.is_some() && !https {
            bail!("the operator token is sent only over HTTPS: use https://{authority} with --ca");
        }
        Ok(Self {
            base: format!("{}://{authority}", if https { "https" } else { "http" }),
            host,
            port,
            tls,
            token,
            peer: "the admin port",
        })
    }

    /// From `hapool status` / `gateway ctl` options; `default` when
    /// `--admin` is not given.
    pub(crate) fn from_target(target: &AdminTarget, default: &str) -> anyhow::Result<Self> {
        Self::new(
            target.admin.as_deref().unwrap_or(default),
            target.ca.as_deref(),
            target.token_file.as_deref(),
        )
    }

    /// The host it reaches.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// GET `path`: the status and the body.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.request(hyper::Method::GET, path).await
    }

    /// POST an empty body to `path`: the status and the body.
    pub(crate) async fn post(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.request(hyper::Method::POST, path).await
    }

    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let what = format!("{method} {}{path}", self.base);
        let exchange = async {
            let stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("cannot reach {} at {}", self.peer, self.base))?;
            let mut request = hyper::Request::builder()
                .method(method.clone())
                .uri(path)
                .header(header::HOST, format!("{}:{}", self.host, self.port));
            if let Some(token) = &self.token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request
                .body(Empty::<Bytes>::new())
                .with_context(|| format!("{path:?} is not a path"))?;
            match &self.tls {
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                        .with_context(|| format!("{} is not a TLS server name", self.host))?;
                    let stream = tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, stream)
                        .await
                        .with_context(|| format!("TLS with {} failed", self.base))?;
                    exchange(stream, request).await
                }
                None => exchange(stream, request).await,
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .with_context(|| format!("{what}: no answer within 10 s"))?;
        match answer {
            Err(e)
                if self.tls.is_none()
                    && e.downcast_ref::<hyper::Error>()
                        .is_some_and(hyper::Error::is_parse) =>
            {
                Err(e).context(format!(
                    "{what}: the answer is not HTTP (an HTTPS port? give https://... and --ca)"
                ))
            }
            other => other.with_context(|| what.clone()),
        }
    }
}

/// GETs `uri` over plain HTTP (health and load probes); the status and
/// the body.
pub(crate) async fn http_get(uri: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let parsed: hyper::Uri = uri
        .parse()
        .with_context(|| format!("{uri:?} is not a URL"))?;
    if parsed.scheme_str() != Some("http") {
        bail!("{uri}: only http:// URLs are probed");
    }
    let authority = parsed
        .authority()
        .with_context(|| format!("{uri}: no host"))?;
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let mut client = AdminClient::new(authority.as_str(), None, None)?;
    client.peer = "the server";
    client.get(path).await
}

/// One HTTP/1.1 request on `stream`.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Options of `hapool status`.
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print the JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = AdminClient::from_target(&args.target, "127.0.0.1:3880")?;
    let (code, body) = client.get("/status").await?;
    if !code.is_success() {
        bail!("{} answered {code}", client.base());
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
