//! `swoosh`: the SWOOSH command line.

mod demo;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "swoosh",
    version,
    about = "SWOOSH: a deterministic orchestrator (statechart reducer, WAL, HLC, signed proposals)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Copy, Clone, ValueEnum)]
enum ChartFormat {
    Yaml,
    Mermaid,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the statechart (the YAML source of truth, or a mermaid diagram).
    Statechart {
        #[arg(long, value_enum, default_value = "yaml")]
        format: ChartFormat,
    },
    /// Run the demo: several projects through BOOT, the lifecycle and
    /// execution loops, with some deliberately refused proposals.
    Demo(demo::DemoArgs),
    /// Generate an ed25519 signing key; prints the signer id and writes the
    /// secret key (hex) to --out with 0600 permissions.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Statechart { format } => {
            match format {
                ChartFormat::Yaml => print!("{}", swoosh_core::statechart::STATECHART_YAML),
                ChartFormat::Mermaid => print!("{}", swoosh_core::statechart::to_mermaid()),
            }
            Ok(())
        }
        Cmd::Demo(args) => demo::run(args),
        Cmd::Keygen { out, force } => keygen(&out, force),
    }
}

fn keygen(out: &std::path::Path, force: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if out.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it (the old key is lost)",
            out.display()
        );
    }
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot write the key file {}: check the directory exists and is writable",
                out.display()
            )
        })?;
    writeln!(f, "{}", hex::encode(key.to_bytes()))?;
    println!("{}", swoosh_core::SignerId::from_signing_key(&key));
    Ok(())
}
