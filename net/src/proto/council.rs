//! The council protocol (HMMM): the leader announces a candidate member set
//! for (project, council epoch); each agent signs a `Vote` with its own key
//! according to its policy; the leader collects the votes, rejects and counts
//! bad ones, and assembles a quorum certificate once distinct approving
//! roster votes reach the project's threshold. The certificate becomes a
//! `Council_QuorumCert` / `Council_ReElect` proposal signed by the leader.
//!
//! The reducer's quorum guard re-checks everything when the proposal is
//! applied; the collector's checks only keep junk out of certificates and
//! make rejections visible early.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use swoosh_core::cbor::CanonicalError;
use swoosh_core::facts::{member_set_hash, Vote, VoteBody};
use swoosh_core::hash::Hash;
use swoosh_core::hlc::Hlc;
use swoosh_core::proposal::{Proposal, ProposalBuilder, INPUTS_BYTES_MAX};
use swoosh_core::sig::{self, SigError, Signature, SignerId};
use swoosh_core::state::{Genesis, NodeState, ProjectState, ROSTER_ENTRIES_MAX};
use swoosh_core::statechart;
use swoosh_core::statechart::Role;

/// Signature domain of a candidate announcement.
pub const COUNCIL_ANNOUNCE_DOMAIN: &[u8] = b"SWOOSH-COUNCIL-ANNOUNCE-v1\0";
/// Elections the collector keeps open at once (one per project).
pub const ELECTIONS_OPEN_MAX: usize = 1024;
/// Votes one election accepts (approving + disapproving): one per roster entry.
pub const VOTES_PER_ELECTION_MAX: usize = ROSTER_ENTRIES_MAX;
/// Projects an agent remembers its latest vote for (one each: the vote of
/// the highest council epoch it voted in), to resend the same vote for a
/// repeated announcement and refuse older epochs.
pub const AGENT_VOTES_REMEMBERED_MAX: usize = 1024;

/// What the leader asks the council to vote on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceBody {
    pub cluster_id: String,
    pub genesis_hash: Hash,
    pub leader: SignerId,
    pub project: String,
    /// The project's Council region epoch the votes must name.
    pub epoch: u64,
    /// Sorted, de-duplicated candidate member set.
    pub members: Vec<SignerId>,
    pub member_set_hash: Hash,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    pub body: AnnounceBody,
    pub signature: Signature,
}

impl Announcement {
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(
            COUNCIL_ANNOUNCE_DOMAIN,
            &self.body,
            &self.body.leader,
            &self.signature,
        )
    }
}

/// Messages on the council topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouncilMsg {
    Announce(Announcement),
    Vote(Vote),
}

/// How an agent votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VotePolicy {
    ApproveAll,
    /// Always vote no, so a failed election is visible.
    VoteNo,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    #[error("announcement is for cluster {0:?}, not this agent's cluster")]
    WrongCluster(String),
    #[error("announcement is signed by {0}, not the genesis leader")]
    NotLeader(String),
    #[error("announcement signature does not verify")]
    BadSignature,
    #[error("announcement's member_set_hash does not match its member list")]
    MemberSet,
    #[error("this agent already voted in project {project:?} council epoch {epoch} on another member set; it signs one vote per (project, epoch)")]
    AlreadyVoted { project: String, epoch: u64 },
    #[error("announcement for project {project:?} council epoch {epoch}, older than epoch {latest} this agent already voted in (an old announcement replayed); no vote")]
    StaleEpoch {
        project: String,
        epoch: u64,
        latest: u64,
    },
}

impl AgentRefusal {
    /// The refusal's name (a log field; what rate-limits its warnings).
    pub fn kind(&self) -> &'static str {
        match self {
            AgentRefusal::WrongCluster(_) => "wrong_cluster",
            AgentRefusal::NotLeader(_) => "not_leader",
            AgentRefusal::BadSignature => "bad_signature",
            AgentRefusal::MemberSet => "member_set",
            AgentRefusal::AlreadyVoted { .. } => "already_voted",
            AgentRefusal::StaleEpoch { .. } => "stale_epoch",
        }
    }
}

/// A council agent: signs one vote per (project, epoch) with its own key.
pub struct CouncilAgent {
    key: SigningKey,
    id: SignerId,
    leader: SignerId,
    cluster_id: String,
    genesis_hash: Hash,
    policy: VotePolicy,
    /// Per project, the vote of the highest epoch this agent voted in.
    /// Epochs only rise in a log, so older ones are refused: a replayed old
    /// announcement (anyone can send one; it is the leader's, signed) gets
    /// no vote the leader would refuse and blame this agent for, and cannot
    /// push the current vote out of the memory.
    cast: BTreeMap<String, Vote>,
    /// Projects of `cast`, least recently voted first, so the one idle
    /// longest is forgotten first when the memory is full.
    cast_order: std::collections::VecDeque<String>,
}

impl CouncilAgent {
    pub fn new(key: SigningKey, genesis: &Genesis, policy: VotePolicy) -> CouncilAgent {
        CouncilAgent {
            id: SignerId::from_signing_key(&key),
            key,
            leader: genesis.leader.clone(),
            cluster_id: genesis.cluster_id.clone(),
            genesis_hash: genesis.hash().expect("a validated genesis encodes"),
            policy,
            cast: BTreeMap::new(),
            cast_order: std::collections::VecDeque::new(),
        }
    }

    pub fn id(&self) -> &SignerId {
        &self.id
    }

    pub fn policy(&self) -> VotePolicy {
        self.policy
    }

    /// Verify an announcement and return this agent's vote for it. A
    /// repeated announcement gets the same vote again (never a second,
    /// different vote for the same project and epoch).
    pub fn on_announce(&mut self, a: &Announcement) -> Result<Vote, AgentRefusal> {
        let b = &a.body;
        if b.cluster_id != self.cluster_id || b.genesis_hash != self.genesis_hash {
            return Err(AgentRefusal::WrongCluster(b.cluster_id.clone()));
        }
        if b.leader != self.leader {
            return Err(AgentRefusal::NotLeader(b.leader.to_string()));
        }
        a.verify().map_err(|_| AgentRefusal::BadSignature)?;
        if member_set_hash(&b.members) != b.member_set_hash {
            return Err(AgentRefusal::MemberSet);
        }
        if let Some(v) = self.cast.get(&b.project) {
            if b.epoch < v.body.epoch {
                return Err(AgentRefusal::StaleEpoch {
                    project: b.project.clone(),
                    epoch: b.epoch,
                    latest: v.body.epoch,
                });
            }
            if b.epoch == v.body.epoch {
                // A second, different member set in the same epoch would be
                // a second vote: refused, so no two certificates can be
                // assembled from this agent's votes for one epoch. (Each
                // region advance bumps the epoch, so a real re-election has
                // a new one.)
                if v.body.member_set_hash == b.member_set_hash {
                    let v = v.clone();
                    // A live election, re-announced: kept from eviction.
                    self.cast_order.retain(|p| *p != b.project);
                    self.cast_order.push_back(b.project.clone());
                    return Ok(v);
                }
                return Err(AgentRefusal::AlreadyVoted {
                    project: b.project.clone(),
                    epoch: b.epoch,
                });
            }
        }
        let vote = Vote::cast(
            VoteBody {
                project: b.project.clone(),
                epoch: b.epoch,
                member_set_hash: b.member_set_hash,
                approve: self.policy == VotePolicy::ApproveAll,
                voter: self.id.clone(),
                // Always bound, whatever the genesis requires: a bound vote
                // counts only in this cluster, so a key this agent shares
                // with another cluster cannot carry it there.
                genesis: Some(self.genesis_hash),
            },
            &self.key,
        );
        if self.cast.contains_key(&b.project) {
            self.cast_order.retain(|p| *p != b.project);
        }
        while self.cast.len() >= AGENT_VOTES_REMEMBERED_MAX && !self.cast.contains_key(&b.project) {
            let Some(oldest) = self.cast_order.pop_front() else {
                break;
            };
            self.cast.remove(&oldest);
        }
        self.cast_order.push_back(b.project.clone());
        self.cast.insert(b.project.clone(), vote.clone());
        Ok(vote)
    }
}

/// Why the collector refused a vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteRejection {
    /// The vote's signature does not verify for its voter.
    BadSignature,
    /// The voter is not a council member of the project's roster.
    Outsider,
    /// The voter was ejected from this council and may not vote in its re-election.
    Ejected,
    /// The vote names an older (or other) council epoch than the open election.
    StaleEpoch,
    /// No election is open for the vote's project.
    NoElection,
    /// The vote is for another member set than the one announced.
    WrongMemberSet,
    /// The election already holds as many votes as it accepts.
    Full,
    /// The vote was signed for another cluster's genesis, or (where the
    /// genesis requires binding) names none: it would not count in a
    /// certificate here.
    WrongGenesis,
}

impl VoteRejection {
    pub fn name(self) -> &'static str {
        match self {
            VoteRejection::BadSignature => "bad_signature",
            VoteRejection::Outsider => "outsider",
            VoteRejection::Ejected => "ejected",
            VoteRejection::StaleEpoch => "stale_epoch",
            VoteRejection::NoElection => "no_election",
            VoteRejection::WrongMemberSet => "wrong_member_set",
            VoteRejection::Full => "full",
            VoteRejection::WrongGenesis => "wrong_genesis",
        }
    }
}

/// A quorum certificate: `threshold` approving roster votes for one member set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub project: String,
    pub epoch: u64,
    pub members: Vec<SignerId>,
    /// Exactly the election's quorum threshold of approvals: the first by
    /// voter (key bytes), sorted by voter.
    pub votes: Vec<Vote>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// Counted; the quorum is not reached yet (or was reached before).
    Counted {
        approvals: usize,
        noes: usize,
    },
    /// A repeat of a vote already counted.
    Duplicate,
    Rejected(VoteRejection),
    /// This vote completed the quorum.
    Certificate(Certificate),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("project {project:?} is in Council {phase}, not ELECT: elections open only in ELECT")]
    NotElect { project: String, phase: String },
    #[error("the candidate member set is empty")]
    NoMembers,
    #[error("{0} elections are open; at most {ELECTIONS_OPEN_MAX} are kept")]
    TooMany(usize),
}

struct Election {
    announcement: Announcement,
    roster: BTreeSet<SignerId>,
    ejected: BTreeSet<SignerId>,
    threshold: usize,
    approvals: BTreeMap<SignerId, Vote>,
    noes: BTreeSet<SignerId>,
    /// The certificate, fixed when the quorum was first reached: approvals
    /// arriving after it never change it, so every resend of its proposal
    /// (one idempotency key) carries the same inputs and a resend after an
    /// unacknowledged attempt is answered as a duplicate, not refused as an
    /// idempotency conflict.
    certified: Option<Certificate>,
}

impl Election {
    /// The certificate: the announced members and exactly `threshold`
    /// approving votes, the first by voter (key bytes). That is all the
    /// reducer's quorum guard asks for (at least the threshold of distinct
    /// approving roster votes), and it keeps the proposal's inputs the same
    /// size however many approvals arrive after the quorum: with all of
    /// them, a large council's certificate outgrew `INPUTS_BYTES_MAX` and
    /// was refused at every resend. Taken once, when the approvals reach
    /// the threshold (`Election::certified`), so it holds exactly the
    /// approvals that reached it, sorted by voter.
    fn certificate(&self) -> Certificate {
        let votes: Vec<Vote> = self
            .approvals
            .values()
            .take(self.threshold)
            .cloned()
            .collect();
        debug_assert!(
            votes.len() == self.threshold,
            "certified below the threshold"
        );
        debug_assert!(
            votes.windows(2).all(|w| w[0].body.voter < w[1].body.voter),
            "votes sorted by voter"
        );
        Certificate {
            project: self.announcement.body.project.clone(),
            epoch: self.announcement.body.epoch,
            members: self.announcement.body.members.clone(),
            votes,
        }
    }
}

/// The leader's vote collector.
pub struct CouncilCollector {
    key: SigningKey,
    id: SignerId,
    cluster_id: String,
    genesis_hash: Hash,
    /// The genesis's `facts_bound_to_genesis`: unbound votes are refused.
    facts_bound: bool,
    elections: BTreeMap<String, Election>,
    rejected: BTreeMap<VoteRejection, u64>,
    counted: u64,
    duplicates: u64,
    certificates: u64,
}

impl CouncilCollector {
    pub fn new(key: SigningKey, genesis: &Genesis) -> CouncilCollector {
        CouncilCollector {
            id: SignerId::from_signing_key(&key),
            key,
            cluster_id: genesis.cluster_id.clone(),
            genesis_hash: genesis.hash().expect("a validated genesis encodes"),
            facts_bound: genesis.facts_bound_to_genesis,
            elections: BTreeMap::new(),
            rejected: BTreeMap::new(),
            counted: 0,
            duplicates: 0,
            certificates: 0,
        }
    }

    /// Open (or re-open at a new epoch) the election of `state`'s project
    /// for `members`, capturing its roster (council members not ejected),
    /// threshold and council epoch.
    /// Returns the signed announcement to publish.
    pub fn open(
        &mut self,
        state: &ProjectState,
        members: &[SignerId],
    ) -> Result<Announcement, OpenError> {
        let project = state.meta.project.clone();
        if state.council.phase != "ELECT" {
            return Err(OpenError::NotElect {
                project,
                phase: state.council.phase.clone(),
            });
        }
        if members.is_empty() {
            return Err(OpenError::NoMembers);
        }
        if !self.elections.contains_key(&project) && self.elections.len() >= ELECTIONS_OPEN_MAX {
            return Err(OpenError::TooMany(self.elections.len()));
        }
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        let body = AnnounceBody {
            cluster_id: self.cluster_id.clone(),
            genesis_hash: self.genesis_hash,
            leader: self.id.clone(),
            project: project.clone(),
            epoch: state.epoch.council,
            member_set_hash: member_set_hash(&members),
            members,
        };
        let signature =
            sig::sign(COUNCIL_ANNOUNCE_DOMAIN, &body, &self.key).expect("announcements encode");
        let announcement = Announcement { body, signature };
        let roster = council_roster(state);
        self.elections.insert(
            project,
            Election {
                announcement: announcement.clone(),
                roster,
                ejected: state.council.ejected.iter().cloned().collect(),
                threshold: state.council.quorum_threshold as usize,
                approvals: BTreeMap::new(),
                noes: BTreeSet::new(),
                certified: None,
            },
        );
        Ok(announcement)
    }

    /// Whether the open election of `state`'s project was opened for what
    /// `state` says now: its epoch, member set, council roster, ejected
    /// members and threshold. `Boot_SetRoster` or a threshold change during
    /// ELECT leaves the council epoch as it is, so without this check the
    /// election went on counting votes (and resending a certificate) the
    /// quorum guard now refuses, until the leader restarted.
    pub fn matches(&self, state: &ProjectState, members: &[SignerId]) -> bool {
        let Some(e) = self.elections.get(&state.meta.project) else {
            return false;
        };
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        e.announcement.body.epoch == state.epoch.council
            && e.announcement.body.member_set_hash == member_set_hash(&members)
            && e.threshold == state.council.quorum_threshold as usize
            && e.roster == council_roster(state)
            && e.ejected
                == state
                    .council
                    .ejected
                    .iter()
                    .cloned()
                    .collect::<BTreeSet<_>>()
    }

    /// The open election's announcement (to publish again after a timeout).
    pub fn announcement(&self, project: &str) -> Option<&Announcement> {
        self.elections.get(project).map(|e| &e.announcement)
    }

    /// The open election's (epoch, member-set hash).
    pub fn open_for(&self, project: &str) -> Option<(u64, Hash)> {
        self.elections.get(project).map(|e| {
            (
                e.announcement.body.epoch,
                e.announcement.body.member_set_hash,
            )
        })
    }

    pub fn close(&mut self, project: &str) {
        self.elections.remove(project);
    }

    fn reject(&mut self, r: VoteRejection) -> VoteOutcome {
        *self.rejected.entry(r).or_default() += 1;
        VoteOutcome::Rejected(r)
    }

    pub fn on_vote(&mut self, v: &Vote) -> VoteOutcome {
        let b = &v.body;
        let Some(e) = self.elections.get(&b.project) else {
            return self.reject(VoteRejection::NoElection);
        };
        // The signature (~50 µs, on the swarm's task) only after the
        // checks that cost nothing: any peer can send votes, and one that
        // names no council member, epoch or member set of an open election
        // is refused without it.
        if !e.roster.contains(&b.voter) {
            return self.reject(VoteRejection::Outsider);
        }
        if e.ejected.contains(&b.voter) {
            return self.reject(VoteRejection::Ejected);
        }
        // As the quorum guard judges it, so a certificate never carries a
        // vote the node would refuse.
        let bound_here = match b.genesis {
            Some(h) => h == self.genesis_hash,
            None => !self.facts_bound,
        };
        if !bound_here {
            return self.reject(VoteRejection::WrongGenesis);
        }
        if b.epoch != e.announcement.body.epoch {
            return self.reject(VoteRejection::StaleEpoch);
        }
        if b.member_set_hash != e.announcement.body.member_set_hash {
            return self.reject(VoteRejection::WrongMemberSet);
        }
        if v.verify().is_err() {
            return self.reject(VoteRejection::BadSignature);
        }
        // A voter's approval after its "no" replaces it (an agent started
        // again without `--vote-no`, or one that changed its mind): a no is
        // in no certificate, and keeping it would hold the election short
        // until the leader restarts. Any other second vote is a duplicate:
        // an approval may already be in the certificate.
        let changes_no = b.approve && e.noes.contains(&b.voter);
        if !changes_no && (e.approvals.contains_key(&b.voter) || e.noes.contains(&b.voter)) {
            self.duplicates += 1;
            return VoteOutcome::Duplicate;
        }
        if !changes_no && e.approvals.len() + e.noes.len() >= VOTES_PER_ELECTION_MAX {
            return self.reject(VoteRejection::Full);
        }
        self.counted += 1;
        let e = self.elections.get_mut(&b.project).expect("checked above");
        if b.approve {
            e.noes.remove(&b.voter);
            e.approvals.insert(b.voter.clone(), v.clone());
        } else {
            e.noes.insert(b.voter.clone());
        }
        if e.certified.is_none() && e.approvals.len() >= e.threshold {
            let cert = e.certificate();
            e.certified = Some(cert.clone());
            self.certificates += 1;
            return VoteOutcome::Certificate(cert);
        }
        VoteOutcome::Counted {
            approvals: e.approvals.len(),
            noes: e.noes.len(),
        }
    }

    /// The certificate of `project`'s election, once the quorum is reached.
    pub fn certificate(&self, project: &str) -> Option<Certificate> {
        let e = self.elections.get(project)?;
        e.certified.clone()
    }

    /// Rejected votes by reason.
    pub fn rejected(&self) -> &BTreeMap<VoteRejection, u64> {
        &self.rejected
    }

    /// Valid votes counted (approving or not, duplicates excluded).
    pub fn counted(&self) -> u64 {
        self.counted
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn certificates(&self) -> u64 {
        self.certificates
    }
}

#[derive(Serialize)]
struct ElectInputs<'a> {
    members: &'a [SignerId],
    votes: &'a [Vote],
}

/// The keys holding the Council role in `state`'s roster.
fn council_roster(state: &ProjectState) -> BTreeSet<SignerId> {
    state
        .boot
        .identities
        .iter()
        .filter(|e| e.roles.contains(&Role::Council))
        .map(|e| e.key.clone())
        .collect()
}

/// Why the reducer would refuse any certificate for `state`'s project now,
/// whatever its votes: the project status checks it runs before the quorum
/// guard (TERMINATED for good; QUARANTINED, PAUSED or in RECOVERY for as
/// long as that lasts, unless the certificate's transition is allowed
/// there). `None`: a certificate may be proposed.
pub fn uncertifiable(state: &ProjectState) -> Option<String> {
    let t = certificate_transition(state);
    let phase = state.meta.phase.as_str();
    if !matches!(phase, "PROJECT_LIFECYCLE" | "EXECUTION") {
        return Some(format!("the project is in {phase}"));
    }
    if state.policy.phase == "QUARANTINED" && !statechart::allowed_in_quarantine(t) {
        return Some("the project is QUARANTINED".into());
    }
    if state.control.phase == "PAUSED" && !statechart::allowed_while_paused(t) {
        return Some("the project is PAUSED".into());
    }
    if state.control.phase == "RECOVERY" && !statechart::allowed_in_recovery(t) {
        return Some("the project is in RECOVERY".into());
    }
    None
}

/// The transition a certificate is proposed as in `state`.
pub fn certificate_transition(state: &ProjectState) -> &'static str {
    if state.council.elections == 0 {
        "Council_QuorumCert"
    } else {
        "Council_ReElect"
    }
}

/// The member set the leader puts to a vote for a project in ELECT: its
/// candidates (from `Council_ProfilesLoaded`) minus every ejected member,
/// sorted. The quorum guard refuses a set holding an ejected member, so a
/// re-election after `Council_Eject` must leave it out.
pub fn electable_members(state: &ProjectState) -> Vec<SignerId> {
    let mut m: Vec<SignerId> = state
        .council
        .candidates
        .iter()
        .filter(|c| !state.council.ejected.contains(c))
        .cloned()
        .collect();
    m.sort();
    m.dedup();
    m
}

/// Why a certificate could not be made a proposal.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("the certificate does not encode: {0}")]
    Encode(#[from] CanonicalError),
    #[error("no HLC after the project's last one: {0}")]
    Clock(String),
    #[error("the certificate's inputs encode to {bytes} bytes ({votes} votes, {members} members); a proposal's inputs hold at most {INPUTS_BYTES_MAX} bytes, so the node would refuse it: a quorum threshold this large cannot be certified in one proposal; lower genesis `quorum_threshold` or the candidate set")]
    TooLarge {
        bytes: usize,
        votes: usize,
        members: usize,
    },
}

/// Build the leader-signed proposal that installs `cert` (inputs
/// `{members, votes}`), naming the project's current HEAD and an HLC after
/// its last one at `now_ms`. It stays valid while the Council epoch is
/// `cert.epoch`, so a proposal refused for a stale hash is simply rebuilt.
/// Inputs over `INPUTS_BYTES_MAX` are refused here, with the reason, rather
/// than by the node at every resend.
pub fn certificate_proposal(
    cert: &Certificate,
    node: &NodeState,
    leader_key: &SigningKey,
    now_ms: u64,
) -> Result<Proposal, CertificateError> {
    let st = node.project(&cert.project);
    let transition = certificate_transition(&st);
    let hlc = Hlc::send(st.hlc_last.unwrap_or_default(), now_ms)
        .map_err(|e| CertificateError::Clock(e.to_string()))?;
    let window = st.execution.schedule.window_id(&hlc);
    let idem = format!(
        "{}:{}:{transition}:council-epoch-{}",
        cert.project, st.applied, cert.epoch
    );
    let p = ProposalBuilder::new(
        &cert.project,
        transition,
        node.project_hash(&cert.project),
        hlc,
        &idem,
    )
    .inputs(&ElectInputs {
        members: &cert.members,
        votes: &cert.votes,
    })?
    .window(window)
    .evidence(vec![format!(
        "ucxl://swoosh:{}@{}/council/epoch-{}",
        node.genesis.cluster_id, cert.project, cert.epoch
    )])
    .sign(leader_key)?;
    // The very measure the node's proposal validation takes.
    let bytes = swoosh_core::cbor::value_to_canonical(p.inputs.clone())?.len();
    if bytes > INPUTS_BYTES_MAX {
        return Err(CertificateError::TooLarge {
            bytes,
            votes: cert.votes.len(),
            members: cert.members.len(),
        });
    }
    Ok(p)
}
