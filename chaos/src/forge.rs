//! Forged leader messages. A forgery changes what the message says (a
//! record's content, the head's hash) and keeps everything but the
//! signature self-consistent: the header lists the altered record's real
//! hash and the chain still links, so only the follower's origin and
//! signature checks can tell it from the leader's. A follower that accepted
//! one would apply a record the leader never wrote, or halt on a head hash
//! that is not its own: a divergence the end-of-run comparison sees too.

use swoosh_core::hash::Hash;
use swoosh_core::scenario::Keys;
use swoosh_core::sig::{self, SignerId};
use swoosh_net::proto::wire::{SignedHead, WalBatch, WAL_BATCH_DOMAIN, WAL_HEAD_DOMAIN};

/// How a forged message is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// Content altered, the leader's signature (over the original) kept.
    Altered,
    /// Content altered and signed by another key, still naming the genesis
    /// leader as its signer.
    Impostor,
    /// Content altered and signed by another rostered key under its own name.
    OtherSigner,
}

impl Forgery {
    pub const ALL: [Forgery; 3] = [Forgery::Altered, Forgery::Impostor, Forgery::OtherSigner];

    /// The refusal a follower must answer it with (`RefusedMessage::kind`).
    pub fn expected_refusal(self) -> &'static str {
        match self {
            Forgery::Altered | Forgery::Impostor => "bad_signature",
            Forgery::OtherSigner => "not_leader",
        }
    }
}

/// A copy of `b` whose last record is altered (`timestamp_ms` moved by
/// `1 + shift`, so the record still replays but hashes differently), its
/// header listing the altered record's hash, signed as `how` says with
/// the admin's key (rostered, not the leader's).
pub fn forge_batch(b: &WalBatch, how: Forgery, keys: &Keys, shift: u64) -> WalBatch {
    let key = &keys.admin;
    let mut b = b.clone();
    let last = b
        .records
        .len()
        .checked_sub(1)
        .expect("batches carry records");
    let rec = &mut b.records[last];
    rec.timestamp_ms = rec.timestamp_ms.wrapping_add(1 + shift);
    b.header.record_hashes[last] = rec.hash();
    match how {
        Forgery::Altered => {}
        Forgery::Impostor => {
            b.signature = sig::sign(WAL_BATCH_DOMAIN, &b.header, key).expect("headers encode")
        }
        Forgery::OtherSigner => {
            b.header.leader = SignerId::from_signing_key(key);
            b.signature = sig::sign(WAL_BATCH_DOMAIN, &b.header, key).expect("headers encode");
        }
    }
    b
}

/// A copy of `h` naming another record hash (derived from `salt`) at its
/// index, or at an index `ahead` further, signed as `how` says with the
/// worker's key (rostered, not the leader's).
pub fn forge_head(h: &SignedHead, how: Forgery, keys: &Keys, salt: u64, ahead: u64) -> SignedHead {
    let key = &keys.worker;
    let mut h = h.clone();
    h.body.last_index += ahead;
    h.body.last_hash = Hash::of_bytes(&salt.to_le_bytes());
    match how {
        Forgery::Altered => {}
        Forgery::Impostor => {
            h.signature = sig::sign(WAL_HEAD_DOMAIN, &h.body, key).expect("heads encode")
        }
        Forgery::OtherSigner => {
            h.body.leader = SignerId::from_signing_key(key);
            h.signature = sig::sign(WAL_HEAD_DOMAIN, &h.body, key).expect("heads encode");
        }
    }
    h
}
