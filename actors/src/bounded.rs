//! Bounded mailboxes on top of ractor's unbounded ones: every send goes
//! through a depth counter that the receiving actor decrements as it takes
//! the message, and a send past the named limit fails instead of queueing.

use ractor::{ActorRef, Message};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Depth limits, in messages, of each actor kind's mailbox.
pub const SEQUENCER_MAILBOX_MAX: usize = 8_192;
pub const WAL_MAILBOX_MAX: usize = 16_384;
pub const REGION_MAILBOX_MAX: usize = 65_536;
pub const SNAPSHOT_MAILBOX_MAX: usize = 4;
pub const ATTENTION_MAILBOX_MAX: usize = 65_536;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the {actor} mailbox is full ({max} messages)")]
    Full { actor: &'static str, max: usize },
    #[error("the {actor} actor is not running (restarting or stopped)")]
    Down { actor: &'static str },
}

/// Shared depth of one mailbox.
#[derive(Clone, Debug)]
pub struct Depth {
    n: Arc<AtomicUsize>,
    max: usize,
    actor: &'static str,
}

impl Depth {
    pub fn new(actor: &'static str, max: usize) -> Depth {
        Depth {
            n: Arc::new(AtomicUsize::new(0)),
            max,
            actor,
        }
    }
    /// Called by the receiving actor for every message it takes.
    pub fn took(&self) {
        let _ = self
            .n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(1))
            });
    }
    pub fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }
    pub fn max(&self) -> usize {
        self.max
    }
    pub fn reset(&self) {
        self.n.store(0, Ordering::Release);
    }
    /// Make the mailbox look full, as a stalled receiver would leave it.
    #[cfg(test)]
    pub(crate) fn fill(&self) {
        self.n.store(self.max, Ordering::Release);
    }
}

/// An actor reference whose sends respect a depth limit.
#[derive(Debug)]
pub struct Bounded<M: Message> {
    pub actor: ActorRef<M>,
    pub depth: Depth,
}

impl<M: Message> Clone for Bounded<M> {
    fn clone(&self) -> Self {
        Bounded {
            actor: self.actor.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<M: Message> Bounded<M> {
    pub fn try_send(&self, msg: M) -> Result<(), SendError> {
        let d = &self.depth;
        let prev = d.n.fetch_add(1, Ordering::AcqRel);
        if prev >= d.max {
            d.took();
            return Err(SendError::Full {
                actor: d.actor,
                max: d.max,
            });
        }
        // Saturating (`took`): a restarted receiver resets the count to 0
        // between the add above and this undo, and a wrap to usize::MAX
        // would refuse every later send as Full for good.
        self.actor.send_message(msg).map_err(|_| {
            d.took();
            SendError::Down { actor: d.actor }
        })
    }
}
