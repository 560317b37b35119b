//! `hapool`: the one binary of hapool.
//!
//! Subcommands:
//! - `hapool demo`: a whole installation on loopback, with failures.
//! - `hapool registrar`: serves ASAP (registration, resolution, keep-alive
//!   supervision) on TCP.
//! - `hapool pe`: keeps an existing server registered in a pool while a TCP
//!   probe of it passes; deregisters on SIGTERM.
//! - `hapool resolve POOL`: prints the PEs a registrar chooses.
//! - `hapool bench`: loads a running registrar and reports requests per
//!   second and latency.
//! - `hapool status`: the pools and PEs of a registrar, from its admin
//!   port (`/status`, JSON; `/metrics`, Prometheus).
//! - `hapool gateway`: proxies clients to pools (TCP, HTTP/1.1, HTTP/2,
//!   TLS) with availability-aware choice, session affinity and failover;
//!   `hapool gateway ctl` lists members and sessions and marks members.
//! - `hapool clone --from ADMIN`: a new registrar or gateway configured
//!   like a running one, in its cluster.
//! - `hapool vip`: virtual IP addresses that move with VRRPv3.
//! - `hapool check-config FILE`: validates a configuration file.
//! - `hapool wire decode`: decodes ASAP or ENRP messages given in hex and
//!   prints them readably, or says exactly what is malformed and which RFC
//!   5354 error cause a peer would be sent.

#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: the proxy allocates per request from several threads, where
/// glibc's allocator showed up in profiles. Its version 2 (the `v2`
/// feature): Rust asks every allocation with its alignment, and
/// version 3 serves an aligned request whose size is not a power of two
/// above 1 KiB by over-allocating, three times per proxied request
/// (docs/performance.md, "The allocator's aligned path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod bench;
mod clone;
mod config;
mod demo;
mod gateway;
mod gateway_metrics;
mod probe;
mod serve;
mod vip;
mod wire;

#[derive(Parser)]
#[command(
    name = "hapool",
    version,
    about = "Keeps network services available when single servers fail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole installation on loopback for a while: three registrars,
    /// two pools, a gateway and client load, with a server and a
    /// registrar dying on the way.
    Demo(demo::DemoArgs),
    /// Serve ASAP as a registrar.
    Registrar(serve::RegistrarArgs),
    /// Keep an existing server registered in a pool while it is healthy.
    Pe(serve::PeArgs),
    /// Print the pool elements a registrar chooses for a pool.
    Resolve(serve::ResolveArgs),
    /// Load a running registrar: registrations, re-registrations and
    /// resolutions per second.
    Bench(bench::BenchArgs),
    /// Print the pools and PEs of a running registrar (from its admin port).
    Status(admin::StatusArgs),
    /// Check a configuration file and say what it configures.
    CheckConfig(serve::CheckConfigArgs),
    /// List the registrars that announce themselves (ASAP_SERVER_ANNOUNCE).
    Discover(serve::DiscoverArgs),
    /// Proxy clients to pools: availability-aware choice, session
    /// affinity, failover; `gateway ctl` operates a running one.
    Gateway(gateway::GatewayArgs),
    /// Start a new registrar or gateway with the configuration of a
    /// running one (from its admin port), in the same cluster.
    Clone(clone::CloneArgs),
    /// Hold virtual IP addresses with VRRPv3: they move to a surviving
    /// machine when the one holding them dies.
    Vip(vip::VipArgs),
    /// Work with the ASAP/ENRP wire format.
    Wire {
        #[command(subcommand)]
        command: WireCommand,
    },
}

#[derive(Subcommand)]
enum WireCommand {
    /// Decode messages given in hex (arguments, or standard input when none
    /// are given). Spaces, colons and newlines between hex digits are
    /// ignored; several messages in a row are decoded one after another.
    Decode {
        /// Which protocol the bytes are.
        #[arg(long, value_enum, default_value_t = Protocol::Asap)]
        protocol: Protocol,
        /// The message bytes in hex.
        hex: Vec<String>,
    },
}

/// The two RSerPool protocols.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Protocol {
    /// ASAP (RFC 5352), port 3863.
    Asap,
    /// ENRP (RFC 5353), port 9901.
    Enrp,
}

/// Exit status for a bad command line or configuration (EX_USAGE).
const EXIT_BAD_CONFIG: u8 = 64;

/// An error in what the operator asked for, as opposed to one met while
/// running: the process exits with [`EXIT_BAD_CONFIG`].
#[derive(Debug)]
pub(crate) struct BadConfig(pub(crate) String);

impl std::fmt::Display for BadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadConfig {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The demo narrates on standard output; its daemons' logs would drown
    // that, so it logs only errors unless RUST_LOG says otherwise.
    // The HTTP/2 library warns once for every connection whose client
    // goes past its limits on misuse (a flood of such connections would be
    // a flood of lines); the gateway counts those and logs them at most
    // once a second itself (`limit="http2_enhance_your_calm"`).
    let default_level = if matches!(cli.command, Command::Demo(_)) {
        "error"
    } else {
        "info,h2=error"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Registrar(args) => runtime().and_then(|rt| rt.block_on(serve::registrar(args))),
        Command::Pe(args) => runtime().and_then(|rt| rt.block_on(serve::pe(args))),
        Command::Resolve(args) => runtime().and_then(|rt| rt.block_on(serve::resolve(args))),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench::bench(args))),
        Command::Status(args) => runtime().and_then(|rt| rt.block_on(admin::status(args))),
        Command::CheckConfig(args) => serve::check_config(&args),
        Command::Discover(args) => runtime().and_then(|rt| rt.block_on(serve::discover(args))),
        Command::Gateway(args) => gateway::main(args),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::demo(args))),
        Command::Clone(args) => runtime().and_then(|rt| rt.block_on(clone::clone(args))),
        Command::Vip(args) => runtime().and_then(|rt| rt.block_on(vip::vip(args))),
        Command::Wire {
            command: WireCommand::Decode { protocol, hex },
        } => read_hex(hex).and_then(|bytes| wire::decode(protocol, &bytes)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<BadConfig>().is_some() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The bytes of the hex arguments, or of standard input when there are none.
fn read_hex(args: Vec<String>) -> anyhow::Result<Vec<u8>> {
    let text = if args.is_empty() {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        args.join(" ")
    };
    let digits: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    hex::decode(digits).map_err(|e| anyhow::anyhow!("input is not hex: {e}"))
}
