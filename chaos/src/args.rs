//! The `swoosh chaos` command line of mode `sim`, parsed without the CLI:
//! the example binary uses it, and the tests parse every line that
//! [`SimConfig::reproduce`] prints back through it. `swoosh chaos` itself
//! parses the same flags with clap (`cli/src/chaos_cmd.rs`, whose tests
//! check the two agree on every reproduce line).

use crate::{FaultRates, Sabotage, SimConfig};

/// The flags, as `swoosh chaos --help` lists them for `--mode sim`.
pub const SIM_USAGE: &str = "usage: swoosh chaos [--mode sim] [--seed N] [--transitions N] [--replicas N] [--projects N] [--council N] [--no-voters N] [--calm] [--rate NAME=P]... [--twice] [--json]";

/// `swoosh chaos --seed` defaults to 1 (not `SimConfig::default()`'s 0).
pub const CLI_SEED_DEFAULT: u64 = 1;

/// A parsed command line.
#[derive(Clone, Debug, PartialEq)]
pub struct SimArgs {
    pub config: SimConfig,
    pub twice: bool,
    pub json: bool,
}

/// Parse the arguments after `swoosh chaos` (a leading `swoosh chaos` is
/// skipped too, so a whole reproduce line can be passed split on spaces).
/// `--calm` zeroes every rate first; each `--rate NAME=P` then sets one,
/// wherever it stands on the line. Flags take `--flag VALUE` or
/// `--flag=VALUE`.
pub fn parse_sim_args<I, S>(args: I) -> Result<SimArgs, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut words: Vec<String> = vec![];
    for a in args {
        let a = a.as_ref();
        match a.split_once('=') {
            Some((flag, v)) if flag.starts_with("--") => {
                words.push(flag.to_string());
                words.push(v.to_string());
            }
            _ => words.push(a.to_string()),
        }
    }
    let mut rest = words.as_slice();
    if rest.first().map(String::as_str) == Some("swoosh") {
        rest = &rest[1..];
    }
    if rest.first().map(String::as_str) == Some("chaos") {
        rest = &rest[1..];
    }
    let mut config = SimConfig {
        seed: CLI_SEED_DEFAULT,
        ..SimConfig::default()
    };
    let (mut twice, mut json, mut calm) = (false, false, false);
    let mut rates: Vec<String> = vec![];
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || -> Result<&String, String> {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{SIM_USAGE}"))
        };
        let number = |v: &String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not a number\n{SIM_USAGE}"))
        };
        match flag.as_str() {
            "--seed" => config.seed = number(value()?)?,
            "--transitions" => config.transitions = number(value()?)?,
            "--replicas" => config.replicas = number(value()?)? as usize,
            "--projects" => config.projects = number(value()?)? as usize,
            "--council" => config.council = number(value()?)? as usize,
            "--no-voters" => config.no_voters = number(value()?)? as usize,
            "--rate" => rates.push(value()?.clone()),
            "--sabotage" => config.sabotage = Sabotage::from_name(value()?)?,
            "--mode" => {
                let m = value()?;
                if m != "sim" {
                    return Err(format!(
                        "--mode {m}: only the simulation (sim) parses here\n{SIM_USAGE}"
                    ));
                }
            }
            "--calm" => calm = true,
            "--twice" => twice = true,
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}\n{SIM_USAGE}")),
        }
    }
    if calm {
        config.rates = FaultRates::none();
    }
    for r in &rates {
        config.rates.set_assignment(r)?;
    }
    Ok(SimArgs {
        config,
        twice,
        json,
    })
}
