//! The simulated network: every message between leader, followers and agents
//! goes through one time-ordered queue. Faults are decided at send time from
//! the simulator's seeded generator: drop, duplicate, reorder (a short hold
//! that lets later messages overtake), delay (a long hold, past request
//! timeouts) and partitions (a node cut off until a time; messages to or from
//! it are lost at send and at delivery).

use crate::forge::Forgery;
use crate::rng::Rng;
use std::collections::BTreeMap;
use std::rc::Rc;
use swoosh_core::facts::Vote;
use swoosh_net::proto::{CouncilMsg, Gossip, Request, Response, VoteRejection};

/// Most messages in flight at once; more are dropped (and counted).
pub const NET_IN_FLIGHT_MAX: usize = 200_000;
/// Base one-way latency, ms.
pub const LATENCY_MS: (u64, u64) = (1, 4);
/// Extra hold of a reordered message, ms.
pub const REORDER_HOLD_MS: (u64, u64) = (5, 40);
/// Extra hold of a delayed message, ms (beyond the follower's request timeout).
pub const DELAY_HOLD_MS: (u64, u64) = (100, 600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addr {
    Leader,
    Follower(usize),
    Agent(usize),
}

#[derive(Clone, Debug)]
pub enum Msg {
    Gossip(Rc<Gossip>),
    /// A forged leader message, tagged so its delivery can be checked (the
    /// follower only sees the gossip).
    Forged(Rc<Gossip>, Forgery),
    Request(Request),
    Response(Rc<Response>),
    Council(Rc<CouncilMsg>),
    /// A vote the collector must refuse, with the reason it must give
    /// (the collector only sees the vote).
    BadVote(Rc<Vote>, VoteRejection),
}

#[derive(Debug)]
pub struct Envelope {
    pub from: Addr,
    pub to: Addr,
    pub msg: Msg,
}

/// Per-message fault probabilities.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkFaults {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub delay: f64,
}

#[derive(Default)]
pub struct Net {
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    cut_until: BTreeMap<Addr, u64>,
    /// Faults applied, by kind (`drop`, `duplicate`, `reorder`, `delay`,
    /// `partition_drop`, `overflow`).
    pub counts: BTreeMap<&'static str, u64>,
    pub sent: u64,
    pub delivered: u64,
}

impl Net {
    fn count(&mut self, k: &'static str) {
        *self.counts.entry(k).or_default() += 1;
    }

    pub fn is_cut(&self, a: Addr, now: u64) -> bool {
        self.cut_until.get(&a).is_some_and(|u| *u > now)
    }

    /// Cut `a` off until `until` (ms).
    pub fn partition(&mut self, a: Addr, until: u64) {
        self.cut_until.insert(a, until);
    }

    /// Every cut, ended: the nodes that were cut off, in address order.
    pub fn heal_all(&mut self) -> Vec<Addr> {
        std::mem::take(&mut self.cut_until).into_keys().collect()
    }

    /// Forget the cuts that ended by `now`: the nodes reachable again, in
    /// address order (no RNG draw, so the schedule is unchanged).
    pub fn heal_ended(&mut self, now: u64) -> Vec<Addr> {
        let ended: Vec<Addr> = self
            .cut_until
            .iter()
            .filter(|(_, u)| **u <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in &ended {
            self.cut_until.remove(a);
        }
        ended
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    fn enqueue(&mut self, at: u64, e: Envelope) {
        if self.queue.len() >= NET_IN_FLIGHT_MAX {
            self.count("overflow");
            return;
        }
        self.seq += 1;
        self.queue.insert((at, self.seq), e);
    }

    /// Send one message; `faults = None` is a calm network (final catch-up).
    pub fn send(
        &mut self,
        rng: &mut Rng,
        now: u64,
        from: Addr,
        to: Addr,
        msg: Msg,
        faults: Option<LinkFaults>,
    ) {
        self.sent += 1;
        if self.is_cut(from, now) || self.is_cut(to, now) {
            self.count("partition_drop");
            return;
        }
        let mut at = now + rng.range(LATENCY_MS.0, LATENCY_MS.1);
        if let Some(f) = faults {
            if rng.chance(f.drop) {
                self.count("drop");
                return;
            }
            if rng.chance(f.delay) {
                self.count("delay");
                at += rng.range(DELAY_HOLD_MS.0, DELAY_HOLD_MS.1);
            } else if rng.chance(f.reorder) {
                self.count("reorder");
                at += rng.range(REORDER_HOLD_MS.0, REORDER_HOLD_MS.1);
            }
            if rng.chance(f.duplicate) {
                self.count("duplicate");
                let again = now + rng.range(LATENCY_MS.0, REORDER_HOLD_MS.1);
                self.enqueue(
                    again,
                    Envelope {
                        from,
                        to,
                        msg: msg.clone(),
                    },
                );
            }
        }
        self.enqueue(at, Envelope { from, to, msg });
    }

    /// The next message due at or before `now` whose endpoints are connected
    /// (messages to or from a cut node are lost on the way).
    pub fn pop_due(&mut self, now: u64) -> Option<Envelope> {
        loop {
            let (&(at, _), _) = self.queue.first_key_value()?;
            if at > now {
                return None;
            }
            let (_, e) = self.queue.pop_first().expect("non-empty");
            if self.is_cut(e.from, now) || self.is_cut(e.to, now) {
                self.count("partition_drop");
                continue;
            }
            self.delivered += 1;
            return Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cut that ended is reported once, in address order, and a cut still
    /// running is kept (the simulator tells the attention scorer a
    /// partition healed from these).
    #[test]
    fn ended_cuts_are_reported_once() {
        let mut n = Net::default();
        n.partition(Addr::Agent(0), 100);
        n.partition(Addr::Follower(1), 50);
        n.partition(Addr::Follower(0), 200);
        assert_eq!(n.heal_ended(49), vec![]);
        assert_eq!(n.heal_ended(100), vec![Addr::Follower(1), Addr::Agent(0)]);
        assert_eq!(n.heal_ended(150), vec![]);
        assert!(n.is_cut(Addr::Follower(0), 150));
        assert_eq!(n.heal_all(), vec![Addr::Follower(0)]);
        assert!(!n.is_cut(Addr::Follower(0), 150));
    }
}
