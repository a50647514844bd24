//! Transition proposals (brief §5 plus `project`, `inputs`, `signature`).
//!
//! The signature is ed25519 over `domain::PROPOSAL || canonical_cbor(body)`,
//! where the body is the proposal without `signature`. `inputs_hash` is the
//! hash of the canonical encoding of `inputs`.

use crate::cbor::{self, CanonicalError};
use crate::hash::Hash;
use crate::hlc::Hlc;
use crate::sig::{self, domain, SigError, Signature, SignerId};
use ciborium::Value;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

pub const IDEM_KEY_BYTES_MAX: usize = 256;
pub const WINDOW_ID_BYTES_MAX: usize = 128;
pub const EVIDENCE_ITEMS_MAX: usize = 32;
pub const EVIDENCE_ITEM_BYTES_MAX: usize = 512;
pub const INPUTS_BYTES_MAX: usize = 64 * 1024;
pub const TRANSITION_NAME_BYTES_MAX: usize = 64;

fn default_project() -> String {
    crate::state::DEFAULT_PROJECT.to_string()
}

fn empty_map() -> Value {
    Value::Map(vec![])
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    #[serde(default = "default_project")]
    pub project: String,
    pub transition: String,
    pub current_state_hash: Hash,
    #[serde(default = "empty_map")]
    pub inputs: Value,
    pub inputs_hash: Hash,
    pub signer: SignerId,
    pub idem_key: String,
    pub hlc: Hlc,
    #[serde(default)]
    pub window_id: String,
    #[serde(default)]
    pub evidence: Vec<String>,
    pub signature: Signature,
}

/// The signed part of a proposal (every field but `signature`).
#[derive(Serialize)]
pub struct ProposalBody<'a> {
    pub project: &'a str,
    pub transition: &'a str,
    pub current_state_hash: &'a Hash,
    pub inputs: &'a Value,
    pub inputs_hash: &'a Hash,
    pub signer: &'a SignerId,
    pub idem_key: &'a str,
    pub hlc: &'a Hlc,
    pub window_id: &'a str,
    pub evidence: &'a [String],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposalError {
    #[error(
        "field `project`: must be 1..=64 characters of [a-z0-9._-] starting with a letter or digit"
    )]
    Project,
    #[error("field `transition`: must be 1..={TRANSITION_NAME_BYTES_MAX} bytes")]
    TransitionName,
    #[error("field `idem_key`: must be 1..={IDEM_KEY_BYTES_MAX} bytes, e.g. goalId:beatIndex:opClass:uuid")]
    IdemKey,
    #[error("field `window_id`: at most {WINDOW_ID_BYTES_MAX} bytes")]
    WindowId,
    #[error("field `evidence`: at most {EVIDENCE_ITEMS_MAX} items of at most {EVIDENCE_ITEM_BYTES_MAX} bytes, each a ucxl:// or bubble:// address")]
    Evidence,
    #[error("field `inputs`: {0}")]
    Inputs(CanonicalError),
    #[error("field `inputs`: must be a map with text keys")]
    InputsNotMap,
    #[error("field `inputs`: {0}; inputs must be representable in JSON (maps with text keys, integers, text, booleans, null, arrays), since proposals travel as JSON")]
    InputsNotJson(String),
    #[error(
        "field `inputs`: canonical encoding is {0} bytes; at most {INPUTS_BYTES_MAX} are allowed"
    )]
    InputsTooLarge(usize),
    #[error("field `inputs_hash`: {given} does not match the hash of the canonical encoding of `inputs`, {computed}")]
    InputsHash { given: Hash, computed: Hash },
}

impl Proposal {
    pub fn body(&self) -> ProposalBody<'_> {
        ProposalBody {
            project: &self.project,
            transition: &self.transition,
            current_state_hash: &self.current_state_hash,
            inputs: &self.inputs,
            inputs_hash: &self.inputs_hash,
            signer: &self.signer,
            idem_key: &self.idem_key,
            hlc: &self.hlc,
            window_id: &self.window_id,
            evidence: &self.evidence,
        }
    }

    /// The exact bytes the signature covers.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, CanonicalError> {
        sig::signing_bytes(domain::PROPOSAL, &self.body())
    }

    /// Hash of the signed body: the proposal's content identity, used to tell
    /// a harmless repeat from a conflicting reuse of an idempotency key.
    pub fn content_hash(&self) -> Result<Hash, CanonicalError> {
        crate::hash::hash_of(&self.body())
    }

    pub fn verify_signature(&self) -> Result<(), SigError> {
        let bytes = self.signing_bytes()?;
        sig::verify_bytes(&bytes, &self.signer, &self.signature)
    }

    /// Field-level checks that need no state: sizes, forms, inputs hash.
    pub fn check_shape(&self) -> Result<(), ProposalError> {
        if !crate::state::valid_id(&self.project) {
            return Err(ProposalError::Project);
        }
        if self.transition.is_empty() || self.transition.len() > TRANSITION_NAME_BYTES_MAX {
            return Err(ProposalError::TransitionName);
        }
        if self.idem_key.is_empty() || self.idem_key.len() > IDEM_KEY_BYTES_MAX {
            return Err(ProposalError::IdemKey);
        }
        if self.window_id.len() > WINDOW_ID_BYTES_MAX {
            return Err(ProposalError::WindowId);
        }
        if self.evidence.len() > EVIDENCE_ITEMS_MAX
            || self.evidence.iter().any(|e| {
                e.len() > EVIDENCE_ITEM_BYTES_MAX
                    || !(e.starts_with("ucxl://") || e.starts_with("bubble://"))
            })
        {
            return Err(ProposalError::Evidence);
        }
        if !matches!(&self.inputs, Value::Map(m) if m.iter().all(|(k, _)| matches!(k, Value::Text(_))))
        {
            return Err(ProposalError::InputsNotMap);
        }
        json_representable(&self.inputs, &mut String::from("inputs"), 0)
            .map_err(ProposalError::InputsNotJson)?;
        let enc = cbor::value_to_canonical(self.inputs.clone()).map_err(ProposalError::Inputs)?;
        if enc.len() > INPUTS_BYTES_MAX {
            return Err(ProposalError::InputsTooLarge(enc.len()));
        }
        let computed = Hash::of_bytes(&enc);
        if computed != self.inputs_hash {
            return Err(ProposalError::InputsHash {
                given: self.inputs_hash,
                computed,
            });
        }
        Ok(())
    }
}

/// Inputs must survive a JSON round trip unchanged, or a proposal signed
/// over CBOR could not be carried over the HTTP API.
fn json_representable(v: &Value, path: &mut String, depth: usize) -> Result<(), String> {
    if depth > cbor::CBOR_DEPTH_MAX {
        return Err(format!(
            "{path} nests deeper than {} levels",
            cbor::CBOR_DEPTH_MAX
        ));
    }
    match v {
        Value::Null | Value::Bool(_) | Value::Text(_) => Ok(()),
        Value::Integer(i) => {
            let n: i128 = (*i).into();
            if n < i64::MIN as i128 || n > u64::MAX as i128 {
                Err(format!("{path} is an integer outside the 64-bit range"))
            } else {
                Ok(())
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                json_representable(x, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Map(m) => {
            for (k, x) in m {
                let Value::Text(k) = k else {
                    return Err(format!("{path} has a non-text map key"));
                };
                let len = path.len();
                path.push('.');
                path.push_str(k);
                json_representable(x, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Bytes(_) => Err(format!("{path} is a byte string")),
        // Floats are refused by the canonical encoder with a clearer message.
        Value::Float(_) => Ok(()),
        Value::Tag(..) => Err(format!("{path} is a tagged value")),
        _ => Err(format!("{path} has an unsupported CBOR type")),
    }
}

/// Build and sign a proposal (used by the SDK, the demo, tests and chaos).
pub struct ProposalBuilder {
    pub project: String,
    pub transition: String,
    pub current_state_hash: Hash,
    pub inputs: Value,
    pub idem_key: String,
    pub hlc: Hlc,
    pub window_id: String,
    pub evidence: Vec<String>,
}

impl ProposalBuilder {
    pub fn new(
        project: &str,
        transition: &str,
        current_state_hash: Hash,
        hlc: Hlc,
        idem_key: &str,
    ) -> Self {
        ProposalBuilder {
            project: project.into(),
            transition: transition.into(),
            current_state_hash,
            inputs: Value::Map(vec![]),
            idem_key: idem_key.into(),
            hlc,
            window_id: String::new(),
            evidence: vec![],
        }
    }

    /// Inputs from any serializable value (a struct or a map of fields).
    pub fn inputs<T: Serialize>(mut self, inputs: &T) -> Result<Self, CanonicalError> {
        let v = Value::serialized(inputs).map_err(|e| CanonicalError::Serialize(e.to_string()))?;
        self.inputs = cbor::canonicalize(v)?;
        Ok(self)
    }

    pub fn window(mut self, w: impl Into<String>) -> Self {
        self.window_id = w.into();
        self
    }

    pub fn evidence(mut self, e: Vec<String>) -> Self {
        self.evidence = e;
        self
    }

    pub fn sign(self, key: &SigningKey) -> Result<Proposal, CanonicalError> {
        let inputs = cbor::canonicalize(self.inputs)?;
        let inputs_hash = Hash::of_bytes(&cbor::value_to_canonical(inputs.clone())?);
        let mut p = Proposal {
            project: self.project,
            transition: self.transition,
            current_state_hash: self.current_state_hash,
            inputs,
            inputs_hash,
            signer: SignerId::from_signing_key(key),
            idem_key: self.idem_key,
            hlc: self.hlc,
            window_id: self.window_id,
            evidence: self.evidence,
            signature: Signature([0; 64]),
        };
        p.signature = sig::sign(domain::PROPOSAL, &p.body(), key)?;
        Ok(p)
    }
}
