//! `swoosh license issue` and `swoosh probe sign`: produce the signed facts
//! that guards verify, as JSON ready to use as proposal inputs.

use crate::node::{now_ms, read_genesis, read_key};
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
    // Ready to paste as the inputs of Boot_Licensed / Boot_LicenseRefresh;
    // the refresh time goes to stderr so stdout stays exactly that.
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "license": token }))?
    );
    eprintln!("{}", refresh_hint(&token)?);
    Ok(())
}

/// Before expiry, the share of a token's validity left when its holder
/// should refresh it (SPEC §5: refresh with jitter): a tenth, at least an
/// hour, so a 30-day token is refreshed ~3 days early.
const REFRESH_LEAD_DIVISOR: u64 = 10;
const REFRESH_LEAD_MS_MIN: u64 = 3_600_000;

/// When to issue the next token and propose Boot_LicenseRefresh: jittered
/// per token (seeded by its signature) so a fleet licensed together does
/// not refresh in one burst.
fn refresh_hint(token: &swoosh_core::facts::LicenseToken) -> Result<String> {
    let validity = token
        .body
        .expires_at
        .wall_ms
        .saturating_sub(token.body.issued_at.wall_ms);
    let lead = (validity / REFRESH_LEAD_DIVISOR)
        .max(REFRESH_LEAD_MS_MIN)
        .min(validity / 2);
    let seed = u64::from_le_bytes(token.signature.0[..8].try_into()?);
    let at = swoosh_guards::refresh_at_ms(token, lead, seed)?;
    Ok(format!(
        "refresh at {} (expires {}): issue a new token then and propose Boot_LicenseRefresh with it",
        swoosh_core::hlc::format_wall_ms(at),
        swoosh_core::hlc::format_wall_ms(token.body.expires_at.wall_ms)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_hint_falls_before_expiry_and_varies_by_token() {
        let key = swoosh_core::sig::key_from_label("facts-cmd/authority");
        let a = LicenseAuthority::new(key, "c".to_string());
        let issued = 1_767_225_600_000;
        let day = 86_400_000;
        let mut seen = std::collections::BTreeSet::new();
        for project in ["p1", "p2", "p3", "p4"] {
            let t = a.issue(project, Hlc::new(issued, 0), 30 * day, 0).unwrap();
            let hint = refresh_hint(&t).unwrap();
            // 30 days: refresh 3 days before expiry, minus up to 1.5 days.
            let expires = issued + 30 * day;
            let at = hint
                .strip_prefix("refresh at ")
                .and_then(|h| h.split(" (").next())
                .unwrap()
                .to_string();
            assert!(
                at.as_str() <= swoosh_core::hlc::format_wall_ms(expires - 3 * day).as_str(),
                "{hint}"
            );
            assert!(
                at.as_str() > swoosh_core::hlc::format_wall_ms(expires - 5 * day).as_str(),
                "{hint}"
            );
            seen.insert(at);
        }
        assert!(seen.len() > 1, "jittered per token: {seen:?}");
        // A one-day token still gets a time before its expiry.
        let t = a.issue("p", Hlc::new(issued, 0), day, 0).unwrap();
        assert!(refresh_hint(&t).unwrap().starts_with("refresh at "));
    }
}

#[derive(Args)]
pub struct ProbeArgs {
    /// The tool prober's key (a roster key with role tool_prober).
    #[arg(long)]
    key: PathBuf,
    /// The cluster's genesis.json: the probe is bound to its hash and
    /// counts in that cluster only.
    #[arg(long)]
    genesis: PathBuf,
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
    let genesis_doc = read_genesis(&a.genesis)?;
    let genesis = genesis_doc.hash()?;
    let key = read_key(&a.key)?;
    if let Some(w) = prober_warning(&genesis_doc, &swoosh_core::SignerId::from_signing_key(&key)) {
        // A warning, not a refusal: a project's roster may give the key the
        // role (Boot_SetRoster). Printed before the fact, on stderr, so
        // stdout stays exactly the fact.
        eprintln!("warning: {w}");
    }
    let prober = ToolProber::new(key, genesis);
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

/// Why a probe signed by `signer` would be refused under the genesis roster
/// (`mcp_health` counts only a `tool_prober`'s probes), or `None`.
fn prober_warning(
    genesis: &swoosh_core::state::Genesis,
    signer: &swoosh_core::SignerId,
) -> Option<String> {
    use swoosh_core::statechart::Role;
    match genesis.roster.iter().find(|r| &r.key == signer) {
        None => Some(format!(
            "{signer} is not in the genesis roster: the mcp_health guard refuses its probes unless a project's roster gives it the tool_prober role (Boot_SetRoster); sign with the cluster's tool prober key (`swoosh init` writes keys/tool-prober.key)"
        )),
        Some(r) if !r.roles.contains(&Role::ToolProber) => {
            let roles: Vec<&str> = r.roles.iter().map(|x| x.name()).collect();
            Some(format!(
                "{signer} is {:?} ({}) in the genesis roster, not a tool_prober: the mcp_health guard refuses its probes unless a project's roster gives it that role (Boot_SetRoster); sign with the cluster's tool prober key (`swoosh init` writes keys/tool-prober.key)",
                r.name,
                roles.join(", ")
            ))
        }
        Some(_) => None,
    }
}
