//! Guards: pure functions of (state, proposal, typed inputs) returning
//! `{ok, reasons}`. No guard does I/O; external knowledge arrives as signed
//! facts inside the inputs. Every reason is a sentence an operator can act on.

use crate::facts::{
    member_set_hash, Check, Finding, LicenseToken, Pins, PolicyRule, Probe, Resources, Vote,
};
use crate::hash::{hash_of, Hash};
use crate::hlc::{format_wall_ms, Hlc};
use crate::proposal::Proposal;
use crate::record::GuardOutcome;
use crate::sig::SignerId;
use crate::state::ProjectState;
use crate::statechart::{Guard, Role};
use std::collections::BTreeSet;

/// Whether embedded signatures (votes, license tokens, probes) are verified.
/// Replay of a hash-chained log whose post hashes are re-checked may skip
/// them; every path that accepts new input verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    Full,
    /// Everything `Full` verifies except the proposal's own signature, which
    /// the caller verified against this exact proposal before ordering it.
    /// The node checks it at admission, on whichever thread received the
    /// proposal, so the single-writer sequencer does not spend its time on
    /// it. Embedded signatures are still verified here.
    ProposalChecked,
    Trusted,
}

impl Verify {
    /// Whether embedded signatures (votes, license tokens) are checked.
    /// Probes are checked in every mode: which of them are valid is written
    /// into an accepted outcome (see `valid_probes`).
    pub fn embedded(self) -> bool {
        self != Verify::Trusted
    }
}

pub struct GuardCtx<'a> {
    pub state: &'a ProjectState,
    pub proposal: &'a Proposal,
    pub verify: Verify,
    /// Judged for admission (false: replayed from a log). Refusal-only
    /// rules newer than some logs apply at admission only (`Judged`).
    pub admission: bool,
    /// The leader's clock (ms since the epoch) the proposal is judged at:
    /// `Ctx::now_ms` (in replay, the record's `timestamp_ms`). Read only by
    /// admission-only rules.
    pub now_ms: u64,
}

pub fn outcome(guard: &str, ok: bool, reasons: Vec<String>) -> GuardOutcome {
    GuardOutcome {
        guard: guard.to_string(),
        ok,
        reasons,
    }
}

fn has_role(state: &ProjectState, who: &SignerId, role: Role) -> bool {
    state.roles_of(who).is_some_and(|r| r.contains(&role))
}

/// Where a license stands at an HLC.
#[derive(Debug, PartialEq, Eq)]
pub enum LicenseAt {
    Missing,
    Valid {
        expires_at: Hlc,
    },
    Grace {
        expires_at: Hlc,
        grace_until_ms: u64,
    },
    Expired {
        expires_at: Hlc,
        grace_until_ms: u64,
    },
}

pub fn license_at(state: &ProjectState, hlc: &Hlc) -> LicenseAt {
    match &state.boot.license {
        None => LicenseAt::Missing,
        Some(l) => {
            let grace_until_ms = l.expires_at.wall_ms.saturating_add(l.grace_ms);
            if *hlc < l.expires_at {
                LicenseAt::Valid {
                    expires_at: l.expires_at,
                }
            } else if hlc.wall_ms < grace_until_ms {
                LicenseAt::Grace {
                    expires_at: l.expires_at,
                    grace_until_ms,
                }
            } else {
                LicenseAt::Expired {
                    expires_at: l.expires_at,
                    grace_until_ms,
                }
            }
        }
    }
}

pub fn license(g: &GuardCtx) -> GuardOutcome {
    let hlc = &g.proposal.hlc;
    match license_at(g.state, hlc) {
        LicenseAt::Missing => outcome(
            "license",
            false,
            vec!["the project holds no license: drive it through Boot_ConfigOk and Boot_Licensed with a token from the license authority first".into()],
        ),
        LicenseAt::Valid { expires_at } => outcome("license", true, vec![format!("license valid until {expires_at} (judged at the proposal's HLC {hlc})")]),
        LicenseAt::Grace { expires_at, grace_until_ms } => outcome(
            "license",
            true,
            vec![format!(
                "license expired at {expires_at}; in grace until {} (judged at {hlc}): the project runs DEGRADED, propose Boot_LicenseRefresh before the grace ends",
                format_wall_ms(grace_until_ms)
            )],
        ),
        LicenseAt::Expired { expires_at, grace_until_ms } => outcome(
            "license",
            false,
            vec![format!(
                "license expired at {expires_at} and its grace ended at {} (judged at the proposal's HLC {hlc}): only Boot_LicenseRefresh with a fresh token signed by a license authority is accepted",
                format_wall_ms(grace_until_ms)
            )],
        ),
    }
}

pub fn license_token(g: &GuardCtx, token: &LicenseToken) -> GuardOutcome {
    let mut bad = vec![];
    let b = &token.body;
    if g.verify.embedded() {
        if let Err(e) = token.verify() {
            bad.push(format!("license token signature is invalid ({e}): request a new token from the license authority"));
        }
    }
    if !has_role(g.state, &b.authority, Role::LicenseAuthority) {
        bad.push(format!(
            "license token authority {} is not a license_authority in the roster: request the token from a rostered license authority, or ask an admin to give that key the license_authority role (Boot_SetRoster)",
            b.authority
        ));
    }
    if b.cluster_id != g.state.meta.cluster_id {
        bad.push(format!(
            "license token is for cluster {:?}, this is cluster {:?}: request a token issued for cluster {:?}",
            b.cluster_id, g.state.meta.cluster_id, g.state.meta.cluster_id
        ));
    }
    if b.project != "*" && b.project != g.state.meta.project {
        bad.push(format!(
            "license token covers project {:?}, not {:?}: request a token for project {:?} or for every project (\"*\")",
            b.project, g.state.meta.project, g.state.meta.project
        ));
    }
    if b.issued_at > g.proposal.hlc {
        bad.push(format!(
            "license token is issued at {}, after the proposal's HLC {}: take an HLC at or after {} (a current one) and re-sign the proposal, or check the license authority's clock",
            b.issued_at, g.proposal.hlc, b.issued_at
        ));
    }
    if g.proposal.hlc >= b.expires_at {
        bad.push(format!(
            "license token already expired at {} (proposal HLC {}): request a fresh one",
            b.expires_at, g.proposal.hlc
        ));
    }
    if bad.is_empty() {
        outcome(
            "license_token",
            true,
            vec![format!(
                "license token from {} valid until {} with {} ms grace",
                b.authority, b.expires_at, b.grace_ms
            )],
        )
    } else {
        outcome("license_token", false, bad)
    }
}

fn breaches<'a>(
    rules: &'a [PolicyRule],
    findings: &'a [Finding],
) -> Vec<(&'a Finding, &'a PolicyRule)> {
    findings
        .iter()
        .flat_map(|f| {
            rules
                .iter()
                .filter(|r| r.deny_codes.contains(&f.code))
                .map(move |r| (f, r))
        })
        .collect()
}

/// Most bytes of breach reasons one proposal may give (admission only). A
/// breach writes one reason per (finding, matching rule) pair, with the
/// rule's whole rationale, into the decision record, the event and
/// `policy.rationale`; up to `LIST_ITEMS_MAX` findings against
/// `POLICY_RULES_MAX` rules would otherwise make a record far above the
/// WAL's record size limit. 16 KiB holds about 200 reasons of a typical
/// rule (an 80-byte reason) and leaves the record well inside that limit.
pub const BREACH_REASONS_BYTES_MAX: usize = 16 * 1024;

/// A `fmt::Write` that only counts the bytes written.
struct ByteCount(usize);

impl std::fmt::Write for ByteCount {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// The bytes `reasons` take joined by "; " (as `policy.rationale` holds them).
fn joined_bytes(reasons: &[String]) -> usize {
    let text: usize = reasons.iter().map(String::len).sum();
    text + 2 * reasons.len().saturating_sub(1)
}

/// Why `matches` breach reasons of `bytes` bytes are too many (at admission).
fn breach_budget(matches: usize, findings: usize, rules: usize, bytes: usize) -> String {
    format!(
        "{findings} findings against {rules} policy rules give {matches} (finding, rule) matches and {bytes} bytes of breach reasons; at most {BREACH_REASONS_BYTES_MAX} are allowed in one record: send fewer findings, each once (one breaching finding is enough to quarantine the project), or ask an admin to shorten the matching rules' rationale (Policy_Update)"
    )
}

pub fn policy_findings(g: &GuardCtx, findings: &[Finding]) -> GuardOutcome {
    let b = breaches(&g.state.policy.rules, findings);
    if b.is_empty() {
        outcome(
            "policy",
            true,
            vec![format!(
                "{} findings checked against {} policy rules: no breach",
                findings.len(),
                g.state.policy.rules.len()
            )],
        )
    } else {
        // Each reason is measured before it is built: `LIST_ITEMS_MAX`
        // findings against `POLICY_RULES_MAX` rules sharing deny codes make
        // ~65,000 matches, and building every reason to drop most of them
        // held ~20 MB on the single writer per refused proposal.
        let write_reason = |w: &mut dyn std::fmt::Write, f: &Finding, r: &PolicyRule| {
            write!(
                w,
                "finding '{}' ({}) breaches policy rule '{}': {}; propose Ingestion_PolicyViolation to quarantine the project",
                f.code, f.detail, r.id, r.rationale
            )
        };
        let build = |f: &Finding, r: &PolicyRule| {
            let mut s = String::new();
            let _ = write_reason(&mut s, f, r);
            s
        };
        let lens: Vec<usize> = b
            .iter()
            .map(|(f, r)| {
                let mut n = ByteCount(0);
                let _ = write_reason(&mut n, f, r);
                n.0
            })
            .collect();
        // As `joined_bytes` counts them.
        let bytes = lens.iter().sum::<usize>() + 2 * lens.len().saturating_sub(1);
        // At admission only: a refusal's reasons within the same budget as
        // an accepted breach's (the first of them, then a summary).
        let reasons = if g.admission && bytes > BREACH_REASONS_BYTES_MAX {
            let mut kept = 0;
            let mut used = 0;
            for len in &lens {
                if used + len + 2 > BREACH_REASONS_BYTES_MAX / 2 {
                    break;
                }
                used += len + 2;
                kept += 1;
            }
            let mut reasons: Vec<String> = b[..kept].iter().map(|(f, r)| build(f, r)).collect();
            let rules = g.state.policy.rules.len();
            reasons.push(format!(
                "{} more breaches left out; {}",
                b.len() - kept,
                breach_budget(b.len(), findings.len(), rules, bytes)
            ));
            reasons
        } else {
            b.iter().map(|(f, r)| build(f, r)).collect()
        };
        outcome("policy", false, reasons)
    }
}

/// The scheme of a source, as RFC 3986 §3.1 defines it (`ALPHA *( ALPHA /
/// DIGIT / "+" / "-" / "." )` before the first `:`), lowercased (schemes are
/// case-insensitive). `Err`: why the source is not an absolute URI, as a
/// sentence that says what form is expected.
pub fn source_scheme(source: &str) -> Result<String, String> {
    const FORM: &str = "write each source as an absolute URI without spaces: a scheme (a letter, then letters, digits, '+', '-' or '.'), ':' and the rest, e.g. git://host/repo.git or https://host/path";
    if let Some((at, c)) = source
        .char_indices()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "source {source:?} holds whitespace or a control character ({c:?} at byte {at}): {FORM}"
        ));
    }
    let Some((scheme, _)) = source.split_once(':') else {
        return Err(format!("source {source:?} names no URI scheme: {FORM}"));
    };
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !valid {
        return Err(format!(
            "source {source:?} does not start with a valid URI scheme ({scheme:?} before the first ':'): {FORM}"
        ));
    }
    Ok(scheme.to_ascii_lowercase())
}

pub fn policy_sources(g: &GuardCtx, sources: &[String]) -> GuardOutcome {
    // Sources are checked as findings with code `source:<scheme>`, so one rule
    // format covers both (e.g. deny_codes: ["source:file"]).
    let findings: Vec<Finding> = sources
        .iter()
        .map(|s| Finding {
            code: format!("source:{}", s.split(':').next().unwrap_or("")),
            detail: s.clone(),
        })
        .collect();
    let rules = &g.state.policy.rules;
    let b = breaches(rules, &findings);
    let denied = |f: &Finding, r: &PolicyRule| {
        format!(
            "source {:?} is denied by policy rule '{}': {}; remove it from the source set",
            f.detail, r.id, r.rationale
        )
    };
    let mut bad: Vec<String> = b.iter().map(|(f, r)| denied(f, r)).collect();
    // At admission only: the scheme as RFC 3986 defines it, compared
    // without regard to case (`FILE:///etc/passwd` is a `file` source), and
    // no source that is not an absolute URI (a bare path, a leading space).
    // The text before the first ':' taken as it is let those past a
    // `source:file` rule; logs an earlier build accepted them in replay.
    if g.admission {
        let mut seen: BTreeSet<(&str, &str)> = b
            .iter()
            .map(|(f, r)| (f.detail.as_str(), r.id.as_str()))
            .collect();
        for s in sources {
            match source_scheme(s) {
                Err(why) => bad.push(why),
                Ok(scheme) => {
                    for r in rules {
                        let denies = r.deny_codes.iter().any(|c| {
                            c.get(..7)
                                .is_some_and(|p| p.eq_ignore_ascii_case("source:"))
                                && c[7..].eq_ignore_ascii_case(&scheme)
                        });
                        if denies && seen.insert((s.as_str(), r.id.as_str())) {
                            let f = Finding {
                                code: format!("source:{scheme}"),
                                detail: s.clone(),
                            };
                            bad.push(denied(&f, r));
                        }
                    }
                }
            }
        }
    }
    if bad.is_empty() {
        outcome(
            "policy",
            true,
            vec![format!(
                "{} sources allowed by {} policy rules",
                sources.len(),
                g.state.policy.rules.len()
            )],
        )
    } else {
        outcome("policy", false, bad)
    }
}

/// The reason a breach gives, one per (finding, matching rule).
fn breach_reason(f: &Finding, r: &PolicyRule) -> String {
    format!(
        "finding '{}' breaches rule '{}': {}",
        f.code, r.id, r.rationale
    )
}

/// The findings a quarantine of `findings` carries under `rules`: each
/// breaching finding once, in order, its detail cut to
/// [`crate::reducer::TEXT_BYTES_MAX`] bytes, as many as keep the breach
/// reasons within [`BREACH_REASONS_BYTES_MAX`] (at least one). One
/// breaching finding is enough to quarantine a project; the leader's
/// automatic quarantine of a refused `Ingestion_SchemaOk` must pass the
/// admission checks of `Ingestion_PolicyViolation` (each item's text
/// bounded, each finding once, [`policy_breach`]'s budget), which the
/// refused list itself may not.
pub fn quarantine_findings(rules: &[PolicyRule], findings: &[Finding]) -> Vec<Finding> {
    let mut seen = BTreeSet::new();
    let mut kept = vec![];
    let mut bytes = 0usize;
    for f in findings {
        // The code stays whole: it is what matches a rule's deny code.
        let f = &Finding {
            code: f.code.clone(),
            detail: cut_text(&f.detail, crate::reducer::TEXT_BYTES_MAX),
        };
        if seen.contains(f) {
            continue;
        }
        seen.insert(f.clone());
        let reasons: Vec<String> = rules
            .iter()
            .filter(|r| r.deny_codes.contains(&f.code))
            .map(|r| breach_reason(f, r))
            .collect();
        if reasons.is_empty() {
            continue;
        }
        let add = joined_bytes(&reasons) + if kept.is_empty() { 0 } else { 2 };
        if !kept.is_empty() && bytes + add > BREACH_REASONS_BYTES_MAX {
            break;
        }
        bytes += add;
        kept.push(f.clone());
    }
    kept
}

/// `s` if it has at most `max` bytes, else its longest prefix that ends on
/// a character boundary and leaves room for a closing `…`, with the `…`.
fn cut_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub fn policy_breach(g: &GuardCtx, findings: &[Finding]) -> GuardOutcome {
    let b = breaches(&g.state.policy.rules, findings);
    if b.is_empty() {
        outcome(
            "policy_breach",
            false,
            vec!["none of the findings breaches a policy rule, so there is nothing to quarantine; propose Ingestion_SchemaOk, or ask an admin for Policy_Quarantine".into()],
        )
    } else {
        let reasons: Vec<String> = b.iter().map(|(f, r)| breach_reason(f, r)).collect();
        // At admission only (`Judged`): logs an earlier build wrote may
        // hold larger breaches, and replay as they were accepted.
        let bytes = joined_bytes(&reasons);
        if g.admission && bytes > BREACH_REASONS_BYTES_MAX {
            let rules = g.state.policy.rules.len();
            return outcome(
                "policy_breach",
                false,
                vec![breach_budget(b.len(), findings.len(), rules, bytes)],
            );
        }
        outcome("policy_breach", true, reasons)
    }
}

pub fn policy_update(g: &GuardCtx, rules: &[PolicyRule]) -> GuardOutcome {
    let mut bad = vec![];
    if rules.len() > crate::state::POLICY_RULES_MAX {
        bad.push(format!(
            "{} rules given; at most {} are allowed",
            rules.len(),
            crate::state::POLICY_RULES_MAX
        ));
    }
    let mut ids = BTreeSet::new();
    for r in rules {
        if !ids.insert(&r.id) {
            bad.push(format!("rule id '{}' appears twice", r.id));
        }
    }
    if g.state.policy.phase == "QUARANTINED" {
        for (f, r) in breaches(rules, &g.state.policy.findings) {
            bad.push(format!(
                "the new rules still deny finding '{}' (rule '{}') that quarantined the project; change the rule or use Policy_Release",
                f.code, r.id
            ));
        }
    }
    if bad.is_empty() {
        let note = if g.state.policy.phase == "QUARANTINED" {
            "; the quarantine is lifted"
        } else {
            ""
        };
        outcome(
            "policy_update",
            true,
            vec![format!("{} policy rules installed{note}", rules.len())],
        )
    } else {
        outcome("policy_update", false, bad)
    }
}

/// Hash of a quorum certificate: the votes sorted by voter.
pub fn quorum_cert_hash(votes: &[Vote]) -> Hash {
    let mut v: Vec<&Vote> = votes.iter().collect();
    v.sort_by(|a, b| a.body.voter.cmp(&b.body.voter));
    hash_of(&v).expect("votes encode")
}

pub fn quorum(g: &GuardCtx, members: &[SignerId], votes: &[Vote], reelect: bool) -> GuardOutcome {
    let st = g.state;
    let mut bad = vec![];
    if reelect && st.council.elections == 0 {
        bad.push(
            "no council has been elected yet: propose Council_QuorumCert for the first election"
                .into(),
        );
    }
    if !reelect && st.council.elections > 0 {
        bad.push(format!("this council was elected before ({} elections): after an ejection propose Council_ReElect", st.council.elections));
    }
    let set: BTreeSet<&SignerId> = members.iter().collect();
    if members.is_empty() || set.len() != members.len() {
        bad.push(format!("the proposed member set has {} entries of which {} distinct: list each elected member exactly once", members.len(), set.len()));
    }
    let threshold = st.council.quorum_threshold as usize;
    if set.len() < threshold {
        bad.push(format!(
            "a council of {} members could never reach the quorum threshold {threshold} for approvals or recovery: elect at least {threshold} members",
            set.len()
        ));
    }
    for m in members {
        if !st.council.candidates.contains(m) {
            bad.push(format!(
                "member {m} is not among the council candidates of Council_ProfilesLoaded"
            ));
        }
        if st.council.ejected.contains(m) {
            bad.push(format!("member {m} was ejected and cannot be re-elected"));
        }
    }
    let expected = member_set_hash(members);
    let epoch = st.epoch.council;
    let mut approving = BTreeSet::new();
    let mut voters = BTreeSet::new();
    for v in votes {
        let b = &v.body;
        if !voters.insert(&b.voter) {
            bad.push(format!(
                "voter {} voted twice: keep one vote per voter in the certificate",
                b.voter
            ));
            continue;
        }
        if st.council.ejected.contains(&b.voter) {
            bad.push(format!(
                "voter {} was ejected from this council and may not vote in its re-election",
                b.voter
            ));
            continue;
        }
        if g.verify.embedded() {
            if let Err(e) = v.verify() {
                bad.push(format!(
                    "vote of {} has an invalid signature ({e}): collect a vote freshly signed by that member's own key, or leave it out",
                    b.voter
                ));
                continue;
            }
        }
        if !has_role(st, &b.voter, Role::Council) {
            bad.push(format!(
                "voter {} is not a council member of the roster: leave its vote out, or ask an admin to give it the council role (Boot_SetRoster) first",
                b.voter
            ));
        } else if let Some(why) = binding_fault(st, b.genesis.as_ref()) {
            bad.push(format!(
                "vote of {} {why}: collect a vote the member cast for this cluster",
                b.voter
            ));
        } else if b.project != st.meta.project {
            bad.push(format!(
                "vote of {} is for project {:?}, not {:?}: collect a vote for project {:?}",
                b.voter, b.project, st.meta.project, st.meta.project
            ));
        } else if b.epoch != epoch {
            bad.push(format!("vote of {} is for council epoch {}, the current epoch is {epoch}: stale vote, collect a new one", b.voter, b.epoch));
        } else if b.member_set_hash != expected {
            bad.push(format!(
                "vote of {} is for member set {}, the proposed set hashes to {expected}",
                b.voter, b.member_set_hash
            ));
        } else if b.approve {
            approving.insert(&b.voter);
        }
    }
    if approving.len() < threshold {
        bad.push(format!(
            "{} approving council votes for member set {expected} at epoch {epoch}; the quorum threshold is {threshold}",
            approving.len()
        ));
    }
    if bad.is_empty() {
        outcome(
            "quorum",
            true,
            vec![format!(
                "{} distinct roster council votes approve member set {expected} at council epoch {epoch} (threshold {threshold})",
                approving.len()
            )],
        )
    } else {
        outcome("quorum", false, bad)
    }
}

/// Why a vote's or probe's `genesis` does not admit it in this cluster, as
/// the end of a sentence naming the fact; `None` when it does. A fact bound
/// to another genesis was signed for another cluster (a key shared across
/// clusters must not carry a vote or probe from one into the other); an
/// unbound one is refused only where the genesis requires binding, so the
/// facts of logs written before binding existed replay as they did.
fn binding_fault(st: &ProjectState, bound: Option<&Hash>) -> Option<String> {
    match bound {
        Some(h) if *h != st.meta.genesis => Some(format!(
            "was signed for the cluster of genesis {h}, not this one (genesis {})",
            st.meta.genesis
        )),
        None if st.meta.facts_bound_to_genesis => Some(format!(
            "names no genesis, and this cluster requires facts bound to its genesis {}",
            st.meta.genesis
        )),
        _ => None,
    }
}

/// Probe facts that are signed by a roster tool prober, for this project,
/// and fresh at the proposal's HLC; the rest are reported as reasons.
fn valid_probes<'a>(g: &GuardCtx, probes: &'a [Probe], bad: &mut Vec<String>) -> Vec<&'a Probe> {
    let st = g.state;
    let hlc = g.proposal.hlc;
    let mut ok = vec![];
    for p in probes {
        let b = &p.body;
        // Checked whatever the `Verify` mode: which probes are valid is
        // written into `Council_ToolingLost`'s accepted reasons, so a
        // replay that skipped this check (recovery and followers replay
        // `Trusted`) would count a forged probe the leader had set aside
        // (logs written before admission refused every invalid probe) and
        // derive other reasons. Probe lists are short and the transitions rare.
        if let Err(e) = p.verify() {
            bad.push(format!(
                "probe of tool '{}' has an invalid signature ({e}): re-sign the probe with the prober's own key",
                b.tool
            ));
            continue;
        }
        if !has_role(st, &b.prober, Role::ToolProber) {
            bad.push(format!(
                "probe of tool '{}' is signed by {}, who is not a tool_prober in the roster: have a rostered tool prober sign it, or ask an admin to give {} the tool_prober role (Boot_SetRoster)",
                b.tool, b.prober, b.prober
            ));
        } else if let Some(why) = binding_fault(st, b.genesis.as_ref()) {
            bad.push(format!(
                "probe of tool '{}' {why}: have the prober sign it for this cluster (`swoosh probe sign --genesis`)",
                b.tool
            ));
        } else if b.project != st.meta.project {
            bad.push(format!(
                "probe of tool '{}' is for project {:?}: probe the tool for project {:?} and sign that",
                b.tool, b.project, st.meta.project
            ));
        } else if b.probed_at > hlc {
            bad.push(format!(
                "probe of tool '{}' is dated {}, after the proposal's HLC {hlc}: take an HLC at or after {} and re-sign the proposal, or re-sign the probe at or before {hlc}",
                b.tool, b.probed_at, b.probed_at
            ));
        } else if hlc.wall_ms - b.probed_at.wall_ms > st.meta.probe_max_age_ms {
            bad.push(format!(
                "probe of tool '{}' from {} is older than {} ms at {hlc}: probe again",
                b.tool, b.probed_at, st.meta.probe_max_age_ms
            ));
        } else {
            ok.push(p);
        }
    }
    ok
}

/// At admission only: a probe list names each tool once, and no probe is
/// older than the one the state already records for its tool. The reducer
/// records every probe of a pinned tool in list order, so two probes of one
/// tool let the last listed win over the newest, and an older probe rolls a
/// tool's recorded status back. Logs an earlier build accepted them in
/// replay.
fn probe_order(g: &GuardCtx, probes: &[Probe], bad: &mut Vec<String>) {
    if !g.admission {
        return;
    }
    let mut count: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in probes {
        *count.entry(p.body.tool.as_str()).or_default() += 1;
    }
    for (tool, n) in count.iter().filter(|(_, n)| **n > 1) {
        bad.push(format!(
            "inputs.probes holds {n} probes of tool '{tool}': send exactly one probe per tool, the newest"
        ));
    }
    for p in probes {
        let b = &p.body;
        if let Some(t) = g.state.council.tooling.get(&b.tool) {
            if b.probed_at < t.probed_at {
                bad.push(format!(
                    "probe of tool '{}' is dated {}, before the probe from {} the state already records for it: a probe may not roll a tool's status back; probe the tool again and send a probe dated at or after {}",
                    b.tool, b.probed_at, t.probed_at, t.probed_at
                ));
            }
        }
    }
}

pub fn mcp_green(g: &GuardCtx, probes: &[Probe]) -> GuardOutcome {
    let mut bad = vec![];
    let valid = valid_probes(g, probes, &mut bad);
    probe_order(g, probes, &mut bad);
    for (tool, pin) in &g.state.council.tools {
        match valid.iter().rev().find(|p| &p.body.tool == tool) {
            None => bad.push(format!("no valid fresh probe for pinned tool '{tool}'")),
            Some(p) if !p.body.reachable => bad.push(format!(
                "tool '{tool}' is unreachable (probed at {})",
                p.body.probed_at
            )),
            Some(p) if &p.body.version != pin => bad.push(format!(
                "tool '{tool}' runs version {} but the council pinned {pin}",
                p.body.version
            )),
            Some(_) => {}
        }
    }
    if bad.is_empty() {
        outcome(
            "mcp_health",
            true,
            vec![format!(
                "{} pinned tools reachable at their pinned versions",
                g.state.council.tools.len()
            )],
        )
    } else {
        outcome("mcp_health", false, bad)
    }
}

pub fn mcp_lost(g: &GuardCtx, probes: &[Probe]) -> GuardOutcome {
    let mut bad = vec![];
    let valid = valid_probes(g, probes, &mut bad);
    probe_order(g, probes, &mut bad);
    let failing: Vec<String> = valid
        .iter()
        .filter_map(|p| {
            let pin = g.state.council.tools.get(&p.body.tool)?;
            if !p.body.reachable {
                Some(format!(
                    "tool '{}' unreachable at {}",
                    p.body.tool, p.body.probed_at
                ))
            } else if &p.body.version != pin {
                Some(format!(
                    "tool '{}' runs {} instead of pinned {pin}",
                    p.body.tool, p.body.version
                ))
            } else {
                None
            }
        })
        .collect();
    if failing.is_empty() {
        bad.push("no valid probe shows a pinned tool unreachable or off its pinned version, so tooling is not lost".into());
        return outcome("mcp_health", false, bad);
    }
    // Every probe must be valid, as for mcp_green: the reducer records each
    // one in the state, and replay (which trusts embedded signatures) would
    // count a forged one as valid and compute other guard outcomes. At
    // admission only: a record an earlier build accepted with such probes
    // replays as it was accepted.
    if g.admission && !bad.is_empty() {
        return outcome("mcp_health", false, bad);
    }
    outcome("mcp_health", true, failing)
}

pub fn capacity(request: &Resources, available: &Resources) -> GuardOutcome {
    let mut bad = vec![];
    if request.cpu_milli == 0 || request.mem_mb == 0 {
        bad.push("the request must ask for some CPU and memory".into());
    }
    if request.cpu_milli > available.cpu_milli {
        bad.push(format!("requested {} mCPU exceeds the {} mCPU available; wait for capacity or shrink the request", request.cpu_milli, available.cpu_milli));
    }
    if request.mem_mb > available.mem_mb {
        bad.push(format!(
            "requested {} MB memory exceeds the {} MB available; wait for capacity or shrink the request",
            request.mem_mb, available.mem_mb
        ));
    }
    if bad.is_empty() {
        outcome(
            "capacity",
            true,
            vec![format!(
                "{} mCPU / {} MB fits in {} mCPU / {} MB",
                request.cpu_milli, request.mem_mb, available.cpu_milli, available.mem_mb
            )],
        )
    } else {
        outcome("capacity", false, bad)
    }
}

pub fn env_health(checks: &[Check], want_green: bool) -> GuardOutcome {
    let failing: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    match (want_green, checks.is_empty(), failing.is_empty()) {
        (_, true, _) => outcome(
            "env_health",
            false,
            vec!["no health checks were reported: send the results of the environment's checks in inputs.checks".into()],
        ),
        (true, false, true) => outcome("env_health", true, vec![format!("all {} health checks pass", checks.len())]),
        (true, false, false) => outcome(
            "env_health",
            false,
            failing.iter().map(|c| format!("health check '{}' fails: propose Environment_Amber instead", c.name)).collect(),
        ),
        (false, false, false) => outcome("env_health", true, failing.iter().map(|c| format!("health check '{}' fails", c.name)).collect()),
        (false, false, true) => outcome(
            "env_health",
            false,
            vec!["every health check passes, so the environment is not degraded: propose Environment_Green".into()],
        ),
    }
}

pub fn all_ready(g: &GuardCtx, pins: &Pins) -> GuardOutcome {
    let st = g.state;
    let mut bad = vec![];
    for (name, phase) in [
        ("Ingestion", &st.ingestion.phase),
        ("Council", &st.council.phase),
        ("Environment", &st.environment.phase),
    ] {
        if phase != "READY" {
            bad.push(format!("{name} is {phase}, not READY"));
        }
    }
    let cmp = |bad: &mut Vec<String>, what: &str, pinned: &Hash, actual: &Option<Hash>| {
        if actual.as_ref() != Some(pinned) {
            bad.push(format!(
                "pinned {what} {pinned} does not match the state's {}; re-read the state and pin what is READY",
                actual.map_or("none".to_string(), |h| h.to_string())
            ));
        }
    };
    cmp(
        &mut bad,
        "content_hash",
        &pins.content_hash,
        &st.ingestion.content_hash,
    );
    cmp(
        &mut bad,
        "index_hash",
        &pins.index_hash,
        &st.ingestion.index_hash,
    );
    cmp(
        &mut bad,
        "member_set_hash",
        &pins.member_set_hash,
        &st.council.member_set_hash,
    );
    cmp(
        &mut bad,
        "env_hash",
        &pins.env_hash,
        &st.environment.env_hash,
    );
    if pins.version != st.ingestion.version {
        bad.push(format!(
            "pinned index version {} does not match the state's version {}",
            pins.version, st.ingestion.version
        ));
    }
    if bad.is_empty() {
        outcome(
            "all_ready",
            true,
            vec![format!(
                "Ingestion, Council and Environment READY; pins match (content {}, version {})",
                pins.content_hash, pins.version
            )],
        )
    } else {
        outcome("all_ready", false, bad)
    }
}

pub fn backbeat(g: &GuardCtx, class: &str) -> (GuardOutcome, Option<u64>) {
    let sched = &g.state.execution.schedule;
    let hlc = &g.proposal.hlc;
    let window = sched.window_id(hlc);
    if !sched.is_open(class, hlc) {
        return (
            outcome("backbeat", false, vec![sched.closed_reason(class, hlc)]),
            sched.retry_after_ms(class, hlc),
        );
    }
    if g.proposal.window_id != window {
        return (
            outcome(
                "backbeat",
                false,
                vec![format!(
                    "window_id {:?} does not name the window of the proposal's HLC {hlc}, which is {window:?}; set window_id to it",
                    g.proposal.window_id
                )],
            ),
            None,
        );
    }
    // At admission only: the window must also be open, and be the same
    // window, at the leader's own clock. Judged at the proposal's HLC
    // alone, which may lead (or lag) the leader's clock by up to
    // `hlc_max_offset_ms`, a proposer could date its proposal into any
    // phase within reach of that offset, which for a beat shorter than the
    // offset is every phase. Logs an earlier build wrote replay as accepted.
    if g.admission {
        let leader = Hlc::new(g.now_ms, 0);
        let at_leader = sched.window_id(&leader);
        let open = sched.is_open(class, &leader);
        if !open || at_leader != window {
            let now = format_wall_ms(g.now_ms);
            // Where the proposal's own window starts: when it lies ahead of
            // the leader (the HLC leads, e.g. because the project's last HLC
            // does and every new one must follow it), waiting for the leader
            // to reach it is the only remedy a proposer has.
            let starts_at = sched.position(hlc).and_then(|p| {
                p.phase.map(|ph| {
                    sched
                        .origin_ms
                        .saturating_add(p.beat.saturating_mul(sched.period_ms))
                        .saturating_add(ph.start_ms)
                })
            });
            let ahead = starts_at.filter(|s| *s > g.now_ms);
            let (why, retry) = if let Some(s) = ahead {
                let ms = s - g.now_ms;
                (
                    format!(
                        "the proposal's HLC {hlc} dates it into window {window}, which the leader's clock ({now}) reaches in {ms} ms, at {}: a time-gated proposal is admitted only once its window is open at the leader; wait, then resubmit this same proposal (it is idempotent)",
                        format_wall_ms(s)
                    ),
                    Some(ms),
                )
            } else if open {
                (
                    format!(
                        "the proposal's HLC {hlc} dates it into window {window}, but at the leader's clock ({now}) the current window is {at_leader}: a time-gated proposal is admitted only in the window it names while that window is open; take a current HLC, set window_id to {at_leader:?} and resubmit"
                    ),
                    None,
                )
            } else {
                let retry = sched.retry_after_ms(class, &leader);
                let when = match sched.ms_until_open(class, &leader) {
                    Some(ms) => format!(
                        "it next opens in {ms} ms, at {}",
                        format_wall_ms(g.now_ms.saturating_add(ms))
                    ),
                    None => "no phase opens it".to_string(),
                };
                (
                    format!(
                        "the proposal's HLC {hlc} dates it into window {window}, but at the leader's clock ({now}) the BACKBEAT window for class '{class}' is closed (window {at_leader}): {when}; wait for the window to open, then resubmit with a current HLC"
                    ),
                    retry,
                )
            };
            return (outcome("backbeat", false, vec![why]), retry);
        }
    }
    (
        outcome(
            "backbeat",
            true,
            vec![format!(
                "window {window} is open for class '{class}' at {hlc}"
            )],
        ),
        None,
    )
}

pub fn council_member(g: &GuardCtx, work_hash: &Hash) -> GuardOutcome {
    let st = g.state;
    let who = &g.proposal.signer;
    let mut bad = vec![];
    if !st.council.elected.contains(who) {
        bad.push(format!(
            "{who} is not in the elected council set, so it cannot approve"
        ));
    }
    if st.execution.approvals.contains(who) {
        bad.push(format!("{who} already approved this window"));
    }
    if st.execution.work_hash.as_ref() != Some(work_hash) {
        bad.push(format!(
            "the approval is for work {work_hash}, but the work under review is {}",
            st.execution
                .work_hash
                .map_or("none".into(), |h| h.to_string())
        ));
    }
    if bad.is_empty() {
        outcome(
            "council_member",
            true,
            vec![format!(
                "{who} is an elected council member approving work {work_hash}"
            )],
        )
    } else {
        outcome("council_member", false, bad)
    }
}

/// Why the council cannot stand behind approvals now: it holds no quorum
/// certificate or is not READY. `None` when it can.
fn council_unready(st: &ProjectState) -> Option<String> {
    let c = &st.council;
    match (c.quorum_cert.is_some(), c.phase == "READY") {
        (true, true) => None,
        (false, _) => Some(format!(
            "the council is {} and holds no quorum certificate (an ejection clears it)",
            c.phase
        )),
        (true, false) => Some(format!("the council is {}, not READY", c.phase)),
    }
}

pub fn approvals(g: &GuardCtx) -> GuardOutcome {
    let st = g.state;
    let need = st.council.quorum_threshold as usize;
    // Only approvals of the council as it stands count (an ejected member's
    // earlier approval does not).
    let have = st
        .execution
        .approvals
        .iter()
        .filter(|a| st.council.elected.contains(a))
        .count();
    if st.execution.submission.is_some() {
        return outcome(
            "approvals",
            false,
            vec!["this window's work was already submitted; propose Execution_NextWindow".into()],
        );
    }
    let mut bad = vec![];
    if have < need {
        bad.push(format!(
            "{have} council approvals in this REVERB; submission needs {need}"
        ));
    }
    // At admission only: approvals count for a council that holds a quorum
    // certificate and is READY. After Council_Eject (certificate cleared,
    // Council in ELECT) or Council_ToolingLost the approvals of the members
    // left counted as if the council still stood. Logs an earlier build
    // accepted such submissions in replay. Said in the same sentence as a
    // shortfall of approvals, when there is one.
    if g.admission {
        if let Some(why) = council_unready(st) {
            let remedy = if st.council.quorum_cert.is_none() {
                "re-elect the council (Council_ReElect), bring it back to READY (Council_McpGreen), then collect approvals again and submit"
            } else {
                "bring the Council back to READY (Council_McpGreen with fresh probes), then submit"
            };
            let line = format!("{why}, so its approvals cannot carry a submission: {remedy}");
            match bad.first_mut() {
                Some(first) => *first = format!("{first}; besides, {line}"),
                None => bad.push(line),
            }
        }
    }
    if !bad.is_empty() {
        outcome("approvals", false, bad)
    } else {
        outcome(
            "approvals",
            true,
            vec![format!(
                "{have} council approvals reach the threshold {need}"
            )],
        )
    }
}

pub fn submission(g: &GuardCtx) -> GuardOutcome {
    match g.state.execution.submission {
        Some(h) => outcome("submission", true, vec![format!("work submitted as {h} in this window")]),
        None => outcome("submission", false, vec!["nothing was submitted in this REVERB: collect approvals and propose Execution_Submit first".into()]),
    }
}

pub fn recovery(g: &GuardCtx) -> GuardOutcome {
    let c = &g.state.council;
    if c.elections == 0 {
        return outcome(
            "recovery",
            false,
            vec![format!("no council has been elected yet (Council is {}): drive the Council region to READY before recovering", c.phase)],
        );
    }
    if c.phase == "READY" && c.elected.len() >= c.quorum_threshold as usize {
        outcome(
            "recovery",
            true,
            vec![format!(
                "council READY with {} elected members (threshold {})",
                c.elected.len(),
                c.quorum_threshold
            )],
        )
    } else {
        outcome(
            "recovery",
            false,
            vec![format!(
                "council is {} with {} elected members (threshold {}): re-elect a quorum (Council_Eject / Council_ReElect) before recovering",
                c.phase,
                c.elected.len(),
                c.quorum_threshold
            )],
        )
    }
}

pub fn roster(g: &GuardCtx, roster: &[crate::facts::RosterEntry]) -> GuardOutcome {
    if let Err(e) = crate::state::validate_roster(roster) {
        return outcome(
            "roster",
            false,
            vec![format!("the new roster is invalid: {e}")],
        );
    }
    let council = roster
        .iter()
        .filter(|r| r.roles.contains(&Role::Council))
        .count();
    let threshold = g.state.council.quorum_threshold as usize;
    if council < threshold {
        return outcome(
            "roster",
            false,
            vec![format!("the new roster has {council} council members; the quorum threshold is {threshold}: keep at least that many")],
        );
    }
    outcome(
        "roster",
        true,
        vec![format!(
            "{} roster entries, at least one admin and {council} council members",
            roster.len()
        )],
    )
}

pub fn guard_name(g: Guard) -> &'static str {
    g.name()
}
