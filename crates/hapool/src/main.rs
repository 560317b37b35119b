//! `hapool`: the one binary of hapool.
//!
//! Subcommands so far:
//! - `hapool wire decode`: decodes ASAP or ENRP messages given in hex and
//!   prints them readably, or says exactly what is malformed and which RFC
//!   5354 error cause a peer would be sent.

#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Wire {
            command: WireCommand::Decode { protocol, hex },
        } => read_hex(hex).and_then(|bytes| wire::decode(protocol, &bytes)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
