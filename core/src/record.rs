//! WAL records and BUBBLE decision records.
//!
//! A WAL record carries everything needed to re-run its proposal through the
//! reducer (so replay needs nothing but genesis and the log) plus the hash of
//! the previous record, making the log a hash chain rooted at the genesis hash.

use crate::hash::{hash_of, Hash};
use crate::hlc::Hlc;
use crate::proposal::Proposal;
use crate::sig::{self, domain, SigError, Signature, SignerId};
use ciborium::Value;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// One guard's verdict: the reasons are sentences an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardOutcome {
    pub guard: String,
    pub ok: bool,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalRecord {
    pub index: u64,
    /// Hash of record `index - 1`, or the genesis hash for index 1.
    pub prev_hash: Hash,
    pub project: String,
    pub transition: String,
    pub state_pre_hash: Hash,
    pub state_post_hash: Hash,
    pub inputs: Value,
    pub inputs_hash: Hash,
    pub signer: SignerId,
    pub idem_key: String,
    pub hlc: Hlc,
    pub window_id: String,
    pub guard_outcomes: Vec<GuardOutcome>,
    pub evidence: Vec<String>,
    /// The leader's wall time when it accepted the proposal (ms since epoch).
    pub timestamp_ms: u64,
    /// The proposal's signature, so any reader can re-verify the proposal.
    pub signature: Signature,
    /// Address of the decision record this transition produced.
    pub decision: Hash,
}

impl WalRecord {
    pub fn hash(&self) -> Hash {
        hash_of(self).expect("WAL records were built from canonical inputs and encode")
    }

    /// The proposal this record was accepted from.
    pub fn proposal(&self) -> Proposal {
        Proposal {
            project: self.project.clone(),
            transition: self.transition.clone(),
            current_state_hash: self.state_pre_hash,
            inputs: self.inputs.clone(),
            inputs_hash: self.inputs_hash,
            signer: self.signer.clone(),
            idem_key: self.idem_key.clone(),
            hlc: self.hlc,
            window_id: self.window_id.clone(),
            evidence: self.evidence.clone(),
            signature: self.signature,
        }
    }
}

/// A BUBBLE decision record, content-addressed as `bubble://dr/<blake3 hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionRecord {
    pub kind: String,
    pub cluster_id: String,
    pub project: String,
    pub index: u64,
    pub transition: String,
    pub region: String,
    pub from: String,
    pub to: String,
    pub signer: SignerId,
    pub signer_roles: Vec<String>,
    pub idem_key: String,
    pub hlc: Hlc,
    pub window_id: String,
    pub state_pre_hash: Hash,
    pub state_post_hash: Hash,
    pub inputs_hash: Hash,
    pub guard_outcomes: Vec<GuardOutcome>,
    /// Evidence from the proposal: stored, never dereferenced by the reducer.
    pub evidence: Vec<String>,
    /// UCXL backlinks to this transition and the project's state.
    pub links: Vec<String>,
    pub justification: String,
}

pub const DECISION_KIND: &str = "bubble.dr.v1";

/// A [`DecisionRecord`] made of borrowed parts: the same field names and
/// types field for field, so its canonical encoding, and so its hash, is the
/// record's. Replay re-derives every decision only to compare its hash; it
/// hashes this view instead of copying a dozen strings into a record it
/// then drops. A test holds the two encodings together.
#[derive(Serialize)]
pub struct DecisionView<'a> {
    pub kind: &'a str,
    pub cluster_id: &'a str,
    pub project: &'a str,
    pub index: u64,
    pub transition: &'a str,
    pub region: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub signer: &'a SignerId,
    pub signer_roles: &'a [String],
    pub idem_key: &'a str,
    pub hlc: Hlc,
    pub window_id: &'a str,
    pub state_pre_hash: Hash,
    pub state_post_hash: Hash,
    pub inputs_hash: Hash,
    pub guard_outcomes: &'a [GuardOutcome],
    pub evidence: &'a [String],
    pub links: &'a [String],
    pub justification: &'a str,
}

impl DecisionView<'_> {
    pub fn hash(&self) -> Hash {
        hash_of(self).expect("decision records encode")
    }
}

impl DecisionRecord {
    pub fn hash(&self) -> Hash {
        hash_of(self).expect("decision records encode")
    }

    pub fn view(&self) -> DecisionView<'_> {
        DecisionView {
            kind: &self.kind,
            cluster_id: &self.cluster_id,
            project: &self.project,
            index: self.index,
            transition: &self.transition,
            region: &self.region,
            from: &self.from,
            to: &self.to,
            signer: &self.signer,
            signer_roles: &self.signer_roles,
            idem_key: &self.idem_key,
            hlc: self.hlc,
            window_id: &self.window_id,
            state_pre_hash: self.state_pre_hash,
            state_post_hash: self.state_post_hash,
            inputs_hash: self.inputs_hash,
            guard_outcomes: &self.guard_outcomes,
            evidence: &self.evidence,
            links: &self.links,
            justification: &self.justification,
        }
    }
    pub fn address(&self) -> String {
        decision_address(&self.hash())
    }
}

pub fn decision_address(h: &Hash) -> String {
    format!("bubble://dr/{}", h.to_hex())
}

/// A decision record with the leader's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDecision {
    pub record: DecisionRecord,
    pub leader: SignerId,
    pub signature: Signature,
}

impl SignedDecision {
    pub fn sign(record: DecisionRecord, key: &SigningKey) -> SignedDecision {
        Self::sign_canonical(record, key).0
    }
    /// [`Self::sign`], also returning the canonical encoding of `record` it
    /// signed: the WAL writer stores and hashes those bytes, and encoding a
    /// ~2.4 KB decision record again for each was a measurable share of the
    /// leader's commit CPU.
    pub fn sign_canonical(record: DecisionRecord, key: &SigningKey) -> (SignedDecision, Vec<u8>) {
        let bytes = crate::cbor::to_canonical(&record).expect("decision records encode");
        Self::sign_encoded(record, bytes, key)
    }

    /// [`Self::sign_canonical`] for a caller that holds the record's canonical
    /// encoding already (the reducer made it to hash the record). Contract:
    /// `bytes` is `to_canonical(&record)`; a broken one signs bytes that are
    /// not the record's, and every verification of the stored decision
    /// (which re-encodes the record) refuses it.
    pub fn sign_encoded(
        record: DecisionRecord,
        bytes: Vec<u8>,
        key: &SigningKey,
    ) -> (SignedDecision, Vec<u8>) {
        let mut msg = Vec::with_capacity(domain::DECISION.len() + bytes.len());
        msg.extend_from_slice(domain::DECISION);
        msg.extend_from_slice(&bytes);
        let signature = sig::sign_bytes(&msg, key);
        let signed = SignedDecision {
            record,
            leader: SignerId::from_signing_key(key),
            signature,
        };
        (signed, bytes)
    }
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(
            domain::DECISION,
            &self.record,
            &self.leader,
            &self.signature,
        )
    }
}
