//! Signed facts that travel as proposal inputs, and the small typed values of
//! the state document. Guards never do I/O: providers outside the core (the
//! license authority, tool probers, council agents) sign these facts and the
//! guards only verify them.

use crate::hash::Hash;
use crate::hlc::Hlc;
use crate::sig::{self, domain, SigError, Signature, SignerId};
use crate::statechart::Role;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// One signer in the roster and its roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterEntry {
    pub key: SignerId,
    pub name: String,
    pub roles: Vec<Role>,
}

/// A license token issued by a `license_authority` (KACHING).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseBody {
    pub cluster_id: String,
    /// Project this token covers, or `*` for every project of the cluster.
    pub project: String,
    pub issued_at: Hlc,
    pub expires_at: Hlc,
    /// After `expires_at` the project runs DEGRADED for this long, then stops.
    pub grace_ms: u64,
    pub authority: SignerId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicenseToken {
    pub body: LicenseBody,
    pub signature: Signature,
}

impl LicenseToken {
    pub fn issue(body: LicenseBody, key: &SigningKey) -> LicenseToken {
        let signature = sig::sign(domain::LICENSE, &body, key).expect("license bodies encode");
        LicenseToken { body, signature }
    }
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(
            domain::LICENSE,
            &self.body,
            &self.body.authority,
            &self.signature,
        )
    }
}

/// A council member's vote over (project, epoch, member-set hash) (HMMM),
/// bound to the genesis of the cluster it is cast in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteBody {
    pub project: String,
    /// The Council region epoch the vote is cast in.
    pub epoch: u64,
    pub member_set_hash: Hash,
    pub approve: bool,
    pub voter: SignerId,
    /// The genesis hash of the cluster the vote is cast in, so the vote
    /// cannot be replayed into another cluster that shares the council key,
    /// the project name and the member set. A node refuses a vote bound to
    /// another genesis, and (under a genesis with
    /// `facts_bound_to_genesis`) one bound to none. Omitted when absent, so
    /// the votes of logs written before it keep their bytes and signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<Hash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    pub body: VoteBody,
    pub signature: Signature,
}

impl Vote {
    pub fn cast(body: VoteBody, key: &SigningKey) -> Vote {
        let signature = sig::sign(domain::VOTE, &body, key).expect("vote bodies encode");
        Vote { body, signature }
    }
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(domain::VOTE, &self.body, &self.body.voter, &self.signature)
    }
}

/// The hash a council's member set is known by: BLAKE3 of the canonical
/// encoding of the sorted, de-duplicated member list.
pub fn member_set_hash(members: &[SignerId]) -> Hash {
    let mut m: Vec<&SignerId> = members.iter().collect();
    m.sort();
    m.dedup();
    crate::hash::hash_of(&m).expect("signer lists encode")
}

/// An MCP/tool health probe result signed by a `tool_prober`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeBody {
    pub project: String,
    pub tool: String,
    pub reachable: bool,
    pub version: String,
    pub probed_at: Hlc,
    pub prober: SignerId,
    /// The genesis hash of the cluster the probe is signed for; as
    /// [`VoteBody::genesis`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<Hash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub body: ProbeBody,
    pub signature: Signature,
}

impl Probe {
    pub fn sign(body: ProbeBody, key: &SigningKey) -> Probe {
        let signature = sig::sign(domain::PROBE, &body, key).expect("probe bodies encode");
        Probe { body, signature }
    }
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(
            domain::PROBE,
            &self.body,
            &self.body.prober,
            &self.signature,
        )
    }
}

/// A validation finding reported by an ingestion worker; policy rules deny
/// findings by code.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub code: String,
    pub detail: String,
}

/// A SHHH policy rule: any finding whose code is listed breaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub id: String,
    pub deny_codes: Vec<String>,
    pub rationale: String,
}

/// Compute resources, in integer units (no floats in hashed data).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_milli: u64,
    pub mem_mb: u64,
}

/// One environment health check result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    pub ok: bool,
}

/// The content/version pins a project is executed against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    pub content_hash: Hash,
    pub index_hash: Hash,
    pub version: u64,
    pub member_set_hash: Hash,
    pub env_hash: Hash,
}
