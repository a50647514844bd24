//! `swoosh license issue` and `swoosh probe sign`: produce the signed facts
//! that guards verify, as JSON ready to use as proposal inputs.

use crate::node::{now_ms, read_key};
use anyhow::{ensure, Result};
use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use swoosh_core::Hlc;
use swoosh_guards::{LicenseAuthority, ToolProber};

#[derive(Args)]
pub struct LicenseArgs {
    /// The license authority's key (a roster key with role license_authority).
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    cluster_id: String,
    /// Project the token covers, or `*` for all.
    #[arg(long, default_value = "*")]
    project: String,
    #[arg(long, default_value_t = 30)]
    valid_days: u64,
    /// Grace after expiry (the project runs DEGRADED), in hours.
    #[arg(long, default_value_t = 24)]
    grace_hours: u64,
}

pub fn license(a: LicenseArgs) -> Result<()> {
    ensure!(
        (1..=366).contains(&a.valid_days),
        "--valid-days must be between 1 and 366"
    );
    ensure!(
        a.grace_hours <= 24 * 30,
        "--grace-hours must be at most 720"
    );
    let authority = LicenseAuthority::new(read_key(&a.key)?, a.cluster_id);
    let token = authority.issue(
        &a.project,
        Hlc::new(now_ms(), 0),
        a.valid_days * 86_400_000,
        a.grace_hours * 3_600_000,
    )?;
    // Ready to paste as the inputs of Boot_Licensed / Boot_LicenseRefresh.
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "license": token }))?
    );
    Ok(())
}

#[derive(Args)]
pub struct ProbeArgs {
    /// The tool prober's key (a roster key with role tool_prober).
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value = "default")]
    project: String,
    #[arg(long)]
    tool: String,
    #[arg(long)]
    version: String,
    /// Record the tool as unreachable.
    #[arg(long)]
    unreachable: bool,
}

pub fn probe(a: ProbeArgs) -> Result<()> {
    let prober = ToolProber::new(read_key(&a.key)?);
    let fact = prober.fact(
        &a.project,
        &a.tool,
        !a.unreachable,
        &a.version,
        Hlc::new(now_ms(), 0),
    );
    println!("{}", serde_json::to_string_pretty(&fact)?);
    Ok(())
}
