//! What the claimer delivered, in stream order, and which of it is written: where the written group
//! can move (see [`crate::host::stream::written_group`]).
//!
//! The claimer reads with `NOACK`, so Redis keeps no pending list: this is the module's own, in
//! memory, one slot per entry in flight. Workers commit batches in any order across workers; the
//! written group only ever moves to the end of the run of settled entries that starts at the oldest
//! entry delivered, so every entry at or before it is in Snowflake or in the dead-letter stream.
//! Everything after it is read again after a restart or a failover; each row's `last_entry_id` makes
//! an entry applied twice change nothing.
//!
//! Every call runs under the Redis lock (the claimer's read, the acknowledgement holds), so a
//! delivery is always recorded before its entry can be settled, and a rewind never interleaves with
//! a move of the written group.

use std::collections::{HashSet, VecDeque};

use parking_lot::Mutex;

use crate::entry::EntryId;

#[derive(Debug, Default)]
pub struct Progress(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    slots: VecDeque<Slot>,
    /// Entries delivered again after a rewind whose dead-letter copy exists already (see
    /// [`Progress::rewound`]).
    dead: HashSet<EntryId>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: EntryId,
    /// The group's logical read counter at this entry, when Redis knows it.
    read: Option<i64>,
    /// Entries trimmed away just before this one, never read (reported when the written group
    /// moves past this entry, so a crash before then has them reported once, after the restart).
    trimmed_before: u64,
    settled: bool,
}

/// Where the written group can move: an entry ID and its logical read counter, and the entries found
/// trimmed away (never read) before the entries it moves past: `(count, the entry after them)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub id: EntryId,
    pub read: Option<i64>,
    pub trimmed: Vec<(u64, EntryId)>,
}

impl Progress {
    /// Forgets everything delivered: the reading group was set back to the written group, and
    /// `dead` are the entries after it that have a dead-letter copy already.
    pub fn rewound(&self, dead: HashSet<EntryId>) {
        let mut inner = self.0.lock();
        inner.slots.clear();
        inner.dead = dead;
    }

    /// Records entries delivered by one read, in stream order, with the group's read counter after
    /// the read (`None` when Redis does not know it) and the entries trimmed away before the first.
    pub fn delivered(&self, ids: &[EntryId], read_after: Option<i64>, trimmed_before: u64) {
        let mut inner = self.0.lock();
        let n = ids.len() as i64;
        for (k, &id) in ids.iter().enumerate() {
            if inner.slots.back().is_some_and(|last| last.id >= id) {
                // Never: reads only move forward between rewinds.
                continue;
            }
            inner.slots.push_back(Slot {
                id,
                read: read_after.map(|after| after - (n - 1 - k as i64)),
                trimmed_before: if k == 0 { trimmed_before } else { 0 },
                settled: false,
            });
        }
    }

    /// Marks entries written or dead-lettered. An entry not delivered since the last rewind is
    /// ignored (settled by a batch that started before it).
    pub fn settled(&self, ids: impl IntoIterator<Item = EntryId>) {
        let mut inner = self.0.lock();
        for id in ids {
            if let Ok(i) = inner.slots.binary_search_by_key(&id, |s| s.id) {
                inner.slots[i].settled = true;
            }
        }
    }

    /// Takes the run of settled entries at the front; the last of them, if any, is where the
    /// written group moves.
    pub fn advance(&self) -> Option<Mark> {
        let mut inner = self.0.lock();
        let mut last = None;
        let mut trimmed = Vec::new();
        while inner.slots.front().is_some_and(|s| s.settled) {
            let s = inner.slots.pop_front()?;
            inner.dead.remove(&s.id);
            if s.trimmed_before > 0 {
                trimmed.push((s.trimmed_before, s.id));
            }
            last = Some(s);
        }
        last.map(|s| Mark {
            id: s.id,
            read: s.read,
            trimmed,
        })
    }

    /// Whether `id` has a dead-letter copy already: delivered again after a rewind, dead-lettered
    /// before it.
    pub fn dead_lettered_before(&self, id: EntryId) -> bool {
        self.0.lock().dead.contains(&id)
    }

    /// Entries delivered since the last rewind that the written group has not moved past yet.
    pub fn behind(&self) -> usize {
        self.0.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> EntryId {
        EntryId::new(n, 0)
    }

    #[test]
    fn the_written_mark_moves_only_over_a_settled_run_from_the_oldest() {
        let p = Progress::default();
        p.delivered(&[id(1), id(2), id(3), id(4)], Some(14), 0);
        p.settled([id(2), id(3)]);
        assert_eq!(p.advance(), None, "entry 1 is not written yet");
        p.settled([id(1)]);
        assert_eq!(
            p.advance(),
            Some(Mark {
                id: id(3),
                read: Some(13),
                trimmed: Vec::new(),
            })
        );
        assert_eq!(p.behind(), 1);
        assert_eq!(p.advance(), None);
        p.settled([id(4)]);
        assert_eq!(p.advance().map(|m| m.id), Some(id(4)));
        assert_eq!(p.behind(), 0);
    }

    #[test]
    fn settles_of_entries_not_delivered_since_the_rewind_are_ignored() {
        let p = Progress::default();
        p.delivered(&[id(5), id(6)], None, 0);
        p.rewound(HashSet::new());
        p.settled([id(5)]);
        assert_eq!(p.advance(), None);
        p.delivered(&[id(5)], None, 0);
        p.settled([id(9)]);
        assert_eq!(p.advance(), None);
        p.settled([id(5)]);
        assert_eq!(
            p.advance(),
            Some(Mark {
                id: id(5),
                read: None,
                trimmed: Vec::new(),
            })
        );
    }

    #[test]
    fn entries_trimmed_before_a_delivery_are_given_once_the_written_mark_passes_it() {
        let p = Progress::default();
        p.delivered(&[id(1)], None, 0);
        p.delivered(&[id(9), id(10)], None, 7);
        p.settled([id(9), id(10)]);
        assert_eq!(p.advance(), None, "entry 1 is not written yet");
        p.settled([id(1)]);
        let mark = p.advance().expect("a mark");
        assert_eq!(mark.id, id(10));
        assert_eq!(mark.trimmed, vec![(7, id(9))]);
    }

    #[test]
    fn a_delivery_out_of_order_is_not_recorded() {
        let p = Progress::default();
        p.delivered(&[id(5)], None, 0);
        p.delivered(&[id(4), id(7)], None, 0);
        assert_eq!(p.behind(), 2);
    }

    #[test]
    fn dead_letters_from_before_a_rewind_are_remembered_until_written_past() {
        let p = Progress::default();
        p.rewound(HashSet::from([id(2)]));
        assert!(p.dead_lettered_before(id(2)));
        assert!(!p.dead_lettered_before(id(1)));
        p.delivered(&[id(1), id(2)], None, 0);
        p.settled([id(1), id(2)]);
        p.advance();
        assert!(!p.dead_lettered_before(id(2)));
    }
}
