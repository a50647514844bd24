//! Guard providers: the out-of-band side of SWOOSH's guards.
//!
//! The reducer's guards are pure and never do I/O. Whatever a provider learns
//! (a license grant from KACHING, an MCP tool's health) becomes a fact signed
//! by a rostered key, which travels as proposal inputs and is verified by the
//! core's guards. This crate holds those providers.

use ed25519_dalek::SigningKey;
use swoosh_core::facts::{LicenseBody, LicenseToken, Probe, ProbeBody};
use swoosh_core::{Hash, Hlc, SignerId};

/// Longest license validity a provider will issue.
pub const LICENSE_VALIDITY_MS_MAX: u64 = 366 * 86_400_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("license validity {0} ms is outside 1..={LICENSE_VALIDITY_MS_MAX} ms")]
    Validity(u64),
    #[error("refresh lead {lead_ms} ms must be shorter than the validity {validity_ms} ms")]
    Lead { lead_ms: u64, validity_ms: u64 },
}

/// A KACHING license authority: issues signed tokens and says when a holder
/// should refresh them.
pub struct LicenseAuthority {
    key: SigningKey,
    cluster_id: String,
}

impl LicenseAuthority {
    pub fn new(key: SigningKey, cluster_id: impl Into<String>) -> Self {
        LicenseAuthority {
            key,
            cluster_id: cluster_id.into(),
        }
    }

    pub fn id(&self) -> SignerId {
        SignerId::from_signing_key(&self.key)
    }

    /// Issue a token for `project` (or `*`) valid from `now` for `validity_ms`.
    pub fn issue(
        &self,
        project: &str,
        now: Hlc,
        validity_ms: u64,
        grace_ms: u64,
    ) -> Result<LicenseToken, ProviderError> {
        if validity_ms == 0 || validity_ms > LICENSE_VALIDITY_MS_MAX {
            return Err(ProviderError::Validity(validity_ms));
        }
        Ok(LicenseToken::issue(
            LicenseBody {
                cluster_id: self.cluster_id.clone(),
                project: project.to_string(),
                issued_at: now,
                expires_at: Hlc::new(now.wall_ms.saturating_add(validity_ms), 0),
                grace_ms,
                authority: self.id(),
            },
            &self.key,
        ))
    }
}

/// When a license holder should ask for a fresh token: `lead_ms` before
/// expiry, minus a jitter in `[0, lead_ms / 2)` drawn from `jitter_seed`, so a
/// fleet that licensed together does not refresh in one burst. The seed is an
/// argument so the schedule is reproducible.
pub fn refresh_at_ms(
    token: &LicenseToken,
    lead_ms: u64,
    jitter_seed: u64,
) -> Result<u64, ProviderError> {
    let expires = token.body.expires_at.wall_ms;
    let validity_ms = expires.saturating_sub(token.body.issued_at.wall_ms);
    if lead_ms >= validity_ms {
        return Err(ProviderError::Lead {
            lead_ms,
            validity_ms,
        });
    }
    let span = (lead_ms / 2).max(1);
    let jitter = splitmix64(jitter_seed) % span;
    // Saturating: the lead is shorter than the validity, but the jitter on
    // top of it need not be (a token issued near the epoch, a lead close to
    // its whole validity); refresh at once rather than wrap around.
    Ok(expires.saturating_sub(lead_ms).saturating_sub(jitter))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// An MCP tool prober: signs what it observed about a tool, for one
/// cluster (its genesis hash), so the fact counts in that cluster only.
pub struct ToolProber {
    key: SigningKey,
    genesis: Hash,
}

impl ToolProber {
    pub fn new(key: SigningKey, genesis: Hash) -> Self {
        ToolProber { key, genesis }
    }

    pub fn fact(
        &self,
        project: &str,
        tool: &str,
        reachable: bool,
        version: &str,
        at: Hlc,
    ) -> Probe {
        Probe::sign(
            ProbeBody {
                project: project.to_string(),
                tool: tool.to_string(),
                reachable,
                version: version.to_string(),
                probed_at: at,
                prober: SignerId::from_signing_key(&self.key),
                genesis: Some(self.genesis),
            },
            &self.key,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swoosh_core::sig::key_from_label;

    #[test]
    fn issued_tokens_verify_and_refresh_before_expiry_with_jitter() {
        let a = LicenseAuthority::new(key_from_label("kaching"), "c1");
        let t = a
            .issue("*", Hlc::new(1_000_000, 0), 600_000, 60_000)
            .unwrap();
        t.verify().unwrap();
        assert_eq!(t.body.expires_at.wall_ms, 1_600_000);
        let times: Vec<u64> = (0..50)
            .map(|s| refresh_at_ms(&t, 100_000, s).unwrap())
            .collect();
        assert!(times.iter().all(|&r| (1_450_000..=1_500_000).contains(&r)));
        assert!(
            times.iter().any(|&r| r != times[0]),
            "jitter spreads refreshes"
        );
        assert_eq!(refresh_at_ms(&t, 100_000, 7), refresh_at_ms(&t, 100_000, 7));
        assert!(refresh_at_ms(&t, 600_000, 1).is_err());
        assert!(a.issue("*", Hlc::new(0, 0), 0, 0).is_err());
    }

    #[test]
    fn a_lead_close_to_the_validity_never_underflows() {
        // Issued at the epoch, valid 100 ms, refreshed 99 ms ahead: the
        // jitter (up to 48 ms) reaches past the issue time, and
        // `expires - lead - jitter` underflowed (a panic in debug builds, a
        // refresh time near u64::MAX in release: never refreshed).
        let a = LicenseAuthority::new(key_from_label("kaching"), "c1");
        let t = a.issue("*", Hlc::new(0, 0), 100, 0).unwrap();
        let seed = (0..1_000u64)
            .find(|s| splitmix64(*s) % 49 >= 2)
            .expect("some seed draws a jitter of at least 2 ms");
        assert_eq!(refresh_at_ms(&t, 99, seed), Ok(0));
        for s in 0..200 {
            assert!(refresh_at_ms(&t, 99, s).unwrap() <= 1);
        }
    }

    #[test]
    fn probe_facts_are_signed_by_the_prober() {
        let genesis = Hash::of_bytes(b"a genesis");
        let p = ToolProber::new(key_from_label("prober"), genesis);
        let f = p.fact("default", "mcp-git", true, "1.4.2", Hlc::new(5, 0));
        f.verify().unwrap();
        assert_eq!(f.body.genesis, Some(genesis));
        let mut forged = f.clone();
        forged.body.reachable = false;
        assert!(forged.verify().is_err());
    }
}
