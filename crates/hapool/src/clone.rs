//! Cloning a running daemon. The source side is the admin port's
//! `GET /config`: the daemon's running configuration as TOML, with the
//! files it names (keys, certificates, token files) and its inline secrets
//! (registration tokens) only for an HTTPS request that carries the
//! operator token; otherwise they are left out and listed as withheld.
//! The other side is `hapool clone --from ADMIN_URL --bind IP`: it fetches
//! that configuration, moves every address to IP, makes a registrar a new
//! member of the source's cluster (a fresh id, the source among its ENRP
//! peers), writes the configuration and the files under `--dir`, and
//! starts the daemon with it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{Context, bail};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::admin::{Access, AdminClient};

/// Keys whose string value names a file that is a key, a certificate or a
/// token.
const FILE_KEYS: [&str; 8] = [
    "certificate",
    "cert",
    "key",
    "client_ca",
    "ca",
    "member_ca",
    "token_file",
    "ticket_keys",
];

/// Keys whose value is itself secret.
const INLINE_KEYS: [&str; 1] = ["tokens"];

/// What `/config` answers.
#[derive(Debug, Default, Deserialize, Serialize)]
struct Bundle {
    /// "registrar" or "gateway".
    daemon: String,
    /// The running configuration: a TOML file with the daemon's table.
    config: String,
    /// The files the configuration names, by the dotted key naming them.
    files: std::collections::BTreeMap<String, CarriedFile>,
    /// Keys left out of `config` because the request was not entitled to
    /// them.
    withheld: Vec<String>,
}

/// One file of a [`Bundle`].
#[derive(Debug, Deserialize, Serialize)]
struct CarriedFile {
    /// Where the source reads it.
    path: String,
    /// Its text (PEM or a token).
    text: String,
}

/// A secret found in a configuration.
enum Secret<'a> {
    /// The value names a file.
    File(&'a str),
    /// The value is secret itself.
    Inline,
}

/// Calls `f` on every secret under `value`, with its dotted key
/// (`gateway.listener[0].certificate[1].key`); removes those for which
/// `f` returns false.
fn visit_secrets(
    value: &mut toml::Value,
    at: &str,
    f: &mut dyn FnMut(&str, Secret<'_>, &mut toml::Value) -> bool,
) {
    match value {
        toml::Value::Table(table) => {
            let mut removed = Vec::new();
            for (key, value) in table.iter_mut() {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                let keep = if INLINE_KEYS.contains(&key.as_str()) {
                    f(&path, Secret::Inline, value)
                } else if let (true, Some(file)) = (
                    FILE_KEYS.contains(&key.as_str()),
                    value.as_str().map(str::to_owned),
                ) {
                    f(&path, Secret::File(&file), value)
                } else {
                    visit_secrets(value, &path, f);
                    true
                };
                if !keep {
                    removed.push(key.clone());
                }
            }
            for key in removed {
                table.remove(&key);
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                visit_secrets(item, &format!("{at}[{i}]"), f);
            }
        }
        _ => {}
    }
}

/// `GET /config` for a daemon running with `config` (a table holding the
/// daemon's own table, as a configuration file does).
pub(crate) fn config_route(daemon: &'static str, config: toml::Table, access: Access) -> Router {
    live_config_route(daemon, Arc::new(RwLock::new(config)), access)
}

/// `GET /config` for a daemon whose configuration a reload can replace:
/// the route answers with what `config` holds at the time.
pub(crate) fn live_config_route(
    daemon: &'static str,
    config: Arc<RwLock<toml::Table>>,
    access: Access,
) -> Router {
    Router::new().route(
        "/config",
        get(move |headers: HeaderMap| {
            let config = config.read().unwrap_or_else(PoisonError::into_inner);
            let answer = bundle(daemon, &config, &access, &headers);
            async move { answer }
        }),
    )
}

fn bundle(daemon: &str, config: &toml::Table, access: &Access, headers: &HeaderMap) -> Response {
    let entitled = access.is_tls() && access.authorized(headers);
    if !entitled && headers.contains_key(header::AUTHORIZATION) {
        return (
            StatusCode::UNAUTHORIZED,
            "the operator token was not accepted\n",
        )
            .into_response();
    }
    let mut value = toml::Value::Table(config.clone());
    let mut bundle = Bundle {
        daemon: daemon.to_owned(),
        ..Bundle::default()
    };
    let mut unreadable = None;
    visit_secrets(&mut value, "", &mut |key, secret, _| {
        if !entitled {
            bundle.withheld.push(key.to_owned());
            return false;
        }
        if let Secret::File(path) = secret {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    bundle.files.insert(
                        key.to_owned(),
                        CarriedFile {
                            path: path.to_owned(),
                            text,
                        },
                    );
                }
                Err(e) => unreadable = Some(format!("{key} = {path}: {e}\n")),
            }
        }
        true
    });
    if let Some(problem) = unreadable {
        return (StatusCode::INTERNAL_SERVER_ERROR, problem).into_response();
    }
    bundle.config = match toml::to_string(&value) {
        Ok(text) => text,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
        }
    };
    axum::Json(bundle).into_response()
}

/// Options of `hapool clone`.
#[derive(clap::Args)]
pub(crate) struct CloneArgs {
    /// The admin port of the daemon to clone: HOST:PORT, http://HOST:PORT
    /// or https://HOST:PORT.
    #[arg(long)]
    from: String,
    /// The authority (PEM) that issued the source's admin certificate
    /// (for https://).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A file holding the operator token; with https://, the source hands
    /// over keys, certificates and secrets too.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// This machine's address: every address the clone listens on or
    /// announces takes it, with the source's ports.
    #[arg(long)]
    bind: IpAddr,
    /// Where to write the configuration and the files.
    #[arg(long, default_value = "hapool-clone")]
    dir: PathBuf,
    /// Write the configuration and stop, without starting the daemon.
    #[arg(long)]
    write_only: bool,
}

pub(crate) async fn clone(args: CloneArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(&args.from, args.ca.as_deref(), args.token_file.as_deref())?;
    let (code, body) = client.get("/config").await?;
    match code {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => bail!(
            "{} serves no /config: it is not a hapool registrar or gateway",
            client.base()
        ),
        _ => bail!(
            "{} answered {code}: {}",
            client.base(),
            String::from_utf8_lossy(&body).trim()
        ),
    }
    let bundle: Bundle = serde_json::from_slice(&body)
        .with_context(|| format!("{}/config is not a configuration bundle", client.base()))?;
    if !bundle.withheld.is_empty() {
        bail!(
            "the source keeps back {}: keys, certificates and secrets are handed over only over HTTPS with the operator's token (--from https://HOST:PORT --ca CA.pem --token-file FILE)",
            bundle.withheld.join(", ")
        );
    }
    let mut config: toml::Table = toml::from_str(&bundle.config)
        .with_context(|| format!("{}/config: the configuration is not TOML", client.base()))?;
    let from_host: Option<IpAddr> = client.host().parse().ok();
    let Some(toml::Value::Table(daemon)) = config.get_mut(&bundle.daemon) else {
        bail!("{}/config has no [{}] table", client.base(), bundle.daemon);
    };
    let joined = match bundle.daemon.as_str() {
        "registrar" => registrar(daemon, args.bind, from_host)?,
        "gateway" => {
            rebind_all(daemon, &["admin"], args.bind)?;
            if let Some(toml::Value::Array(listeners)) = daemon.get_mut("listener") {
                for listener in listeners {
                    if let toml::Value::Table(listener) = listener {
                        rebind_all(listener, &["listen"], args.bind)?;
                    }
                }
            }
            let registrars = daemon
                .get("registrars")
                .and_then(|r| r.as_array())
                .map_or(0, Vec::len);
            format!("the same {registrars} registrar(s) as the source")
        }
        other => {
            bail!("cloning a {other} is not supported: only registrars and gateways can be cloned")
        }
    };
    let files = args.dir.join("files");
    std::fs::create_dir_all(&files)
        .with_context(|| format!("cannot create {}", files.display()))?;
    // The configuration names its files wherever it is started from.
    let files = std::path::absolute(&files)
        .with_context(|| format!("cannot make {} absolute", files.display()))?;
    let mut value = toml::Value::Table(config);
    let mut failed = None;
    visit_secrets(&mut value, "", &mut |key, secret, value| {
        if let Secret::File(_) = secret {
            let Some(carried) = bundle.files.get(key) else {
                failed = Some(format!("the source sent no file for {key}"));
                return true;
            };
            let name = key.replace(['[', ']'], "").replace('.', "-");
            let path = files.join(name);
            match write_private(&path, &carried.text) {
                Ok(()) => *value = toml::Value::String(path.display().to_string()),
                Err(e) => failed = Some(format!("{key}: {e:#}")),
            }
        }
        true
    });
    if let Some(problem) = failed {
        bail!(problem);
    }
    let path = args.dir.join(format!("{}.toml", bundle.daemon));
    let text = format!(
        "# Cloned from {} by hapool clone.\n{}",
        client.base(),
        toml::to_string(&value)?
    );
    write_private(&path, &text)?;
    // The same checks as at start-up, before anything starts.
    crate::serve::check_file(&path)?;
    println!(
        "cloned the {} at {} into {} ({} file(s)); it joins {joined}",
        bundle.daemon,
        client.base(),
        path.display(),
        bundle.files.len()
    );
    if args.write_only {
        println!(
            "start it with: hapool {} --config {}",
            bundle.daemon,
            path.display()
        );
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find this program to start the clone")?;
    let error = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(exe)
            .arg(&bundle.daemon)
            .arg("--config")
            .arg(&path),
    );
    Err(error).context("cannot start the clone")
}

/// A registrar's table made into a new member of the source's cluster;
/// says what it joins.
fn registrar(
    table: &mut toml::Table,
    bind: IpAddr,
    from_host: Option<IpAddr>,
) -> anyhow::Result<String> {
    // A clone is a registrar of its own, with an id that stays when it
    // restarts.
    let id = rand::Rng::random_range(&mut rand::rng(), 1..=u32::MAX);
    table.insert("id".into(), format!("{id:08x}").into());
    let Some(toml::Value::Table(enrp)) = table.get_mut("enrp") else {
        bail!(
            "the source registrar is not in a cluster (it has no [registrar.enrp]); its clone could not share its registrations"
        );
    };
    let default_port = if enrp.contains_key("tls") { 9902 } else { 9901 };
    let mut source: SocketAddr = match enrp.get("address").or_else(|| enrp.get("listen")) {
        Some(v) => address(v, "registrar.enrp.address")?,
        None => SocketAddr::from(([127, 0, 0, 1], default_port)),
    };
    if source.ip().is_unspecified() {
        let Some(host) = from_host else {
            bail!(
                "the source listens for ENRP on {source} without saying its address: give --from as an IP address"
            );
        };
        source.set_ip(host);
    }
    if !enrp.contains_key("listen") {
        enrp.insert(
            "listen".into(),
            format!("{}", SocketAddr::new(bind, default_port)).into(),
        );
    }
    rebind_all(enrp, &["listen", "address"], bind)?;
    let own = match enrp.get("address").or_else(|| enrp.get("listen")) {
        Some(v) => address(v, "registrar.enrp.address")?,
        None => SocketAddr::new(bind, default_port),
    };
    if own == source {
        bail!("--bind {bind}: the clone's ENRP address would be the source's own ({source})");
    }
    let mut peers: Vec<SocketAddr> = match enrp.get("peers") {
        Some(toml::Value::Array(list)) => list
            .iter()
            .map(|p| address(p, "registrar.enrp.peers"))
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    peers.push(source);
    peers.retain(|p| *p != own);
    peers.sort();
    peers.dedup();
    enrp.insert(
        "peers".into(),
        toml::Value::Array(peers.iter().map(|p| p.to_string().into()).collect()),
    );
    rebind_all(table, &["listen", "admin"], bind)?;
    if let Some(toml::Value::Table(tls)) = table.get_mut("tls") {
        rebind_all(tls, &["listen"], bind)?;
    }
    // Without an explicit ASAP address the default would clash with a
    // source on the same host.
    if !table.contains_key("listen") {
        table.insert(
            "listen".into(),
            SocketAddr::new(bind, 3863).to_string().into(),
        );
    }
    Ok(format!("the cluster of the registrar at ENRP {source}"))
}

/// The socket address in `value`.
fn address(value: &toml::Value, key: &str) -> anyhow::Result<SocketAddr> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{key} = {value} is not an address"))
}

/// Gives the addresses under `keys` of `table` the IP `bind`.
fn rebind_all(table: &mut toml::Table, keys: &[&str], bind: IpAddr) -> anyhow::Result<()> {
    for key in keys {
        if let Some(value) = table.get_mut(*key) {
            let mut addr = address(value, key)?;
            addr.set_ip(bind);
            *value = toml::Value::String(addr.to_string());
        }
    }
    Ok(())
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[registrar]
listen = "127.0.0.1:3863"
[registrar.tls]
certificate = "/etc/hapool/r.pem"
key = "/etc/hapool/r.key"
[[registrar.rules]]
pools = ["web"]
tokens = ["0123456789abcdef"]
[gateway]
ticket_keys = "/etc/hapool/ticket-keys"
"#;

    #[test]
    fn every_secret_is_found_and_can_be_left_out() {
        let mut value: toml::Value = toml::from_str(CONFIG).unwrap();
        let mut seen = Vec::new();
        visit_secrets(&mut value, "", &mut |key, secret, _| {
            seen.push(match secret {
                Secret::File(path) => format!("{key}={path}"),
                Secret::Inline => key.to_owned(),
            });
            false
        });
        assert_eq!(
            seen,
            [
                "gateway.ticket_keys=/etc/hapool/ticket-keys",
                "registrar.rules[0].tokens",
                "registrar.tls.certificate=/etc/hapool/r.pem",
                "registrar.tls.key=/etc/hapool/r.key",
            ]
        );
        let text = toml::to_string(&value).unwrap();
        assert!(
            !text.contains("0123456789abcdef")
                && !text.contains("r.key")
                && !text.contains("ticket-keys"),
            "{text}"
        );
        assert!(text.contains("pools = [\"web\"]"), "{text}");
    }

    #[test]
    fn a_registrar_clone_joins_the_source_cluster_with_its_own_addresses() {
        let mut table: toml::Table = toml::from_str(
            r#"
id = "00000001"
listen = "127.0.0.1:3863"
admin = "127.0.0.1:3880"
[enrp]
listen = "0.0.0.0:9901"
peers = ["127.0.0.3:9901", "127.0.0.2:9901"]
"#,
        )
        .unwrap();
        let bind: IpAddr = "127.0.0.2".parse().unwrap();
        let joined = registrar(&mut table, bind, "127.0.0.1".parse().ok()).unwrap();
        assert!(joined.contains("127.0.0.1:9901"), "{joined}");
        assert_ne!(table["id"].as_str(), Some("00000001"));
        assert_eq!(table["listen"].as_str(), Some("127.0.0.2:3863"));
        assert_eq!(table["admin"].as_str(), Some("127.0.0.2:3880"));
        let enrp = table["enrp"].as_table().unwrap();
        assert_eq!(enrp["listen"].as_str(), Some("127.0.0.2:9901"));
        let peers: Vec<&str> = enrp["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        assert_eq!(peers, ["127.0.0.1:9901", "127.0.0.3:9901"]);
    }

    #[test]
    fn a_registrar_outside_any_cluster_is_not_cloned() {
        let mut table: toml::Table = toml::from_str("listen = \"127.0.0.1:3863\"").unwrap();
        let error = registrar(&mut table, "127.0.0.2".parse().unwrap(), None).unwrap_err();
        assert!(error.to_string().contains("not in a cluster"), "{error}");
    }

    #[test]
    fn the_clone_must_not_take_the_source_address() {
        let mut table: toml::Table = toml::from_str("[enrp]\nlisten = \"127.0.0.1:9901\"").unwrap();
        let error = registrar(&mut table, "127.0.0.1".parse().unwrap(), None).unwrap_err();
        assert!(error.to_string().contains("source's own"), "{error}");
    }
}
