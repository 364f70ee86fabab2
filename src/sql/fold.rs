//! Folding a batch's events into one source row per (row, first unapplied entry): the per-record
//! work of the MERGEs, done in Rust so the statements need no aggregate at all.
//!
//! # What a run of events does to a row
//! Applied in stream order, each event changes its row the same way whatever came before, except
//! for one thing: whether the row exists. A visit or a save creates a missing row; a delete of a
//! missing row does nothing at all (no row, no `deleted_dts`, no attribute). So a run of events is
//! summed up by two [`Effect`]s ([`Fold`]):
//! - `existing`: what the run does to a row that exists — visits added, each `*_dts` moved to the
//!   latest time of its kind, `saved` set by the last save or delete, each attribute set by the last
//!   event that carries it;
//! - `missing`: what it does to a row that does not exist — nothing until the first visit or save,
//!   then the `existing` effect of the rest (`None` when the run holds deletes only).
//!
//! Effects compose ([`Effect::then`], [`Fold::then`]): the effect of a run is the effect of its
//! first part followed by its second, so an entry's events fold into one [`Fold`] per row, and a
//! row's entries into one per *suffix*.
//!
//! # Why suffixes
//! A row remembers the newest entry applied to it (`last_entry_id`). When a batch is replayed in part
//! (after a crash, a retry, a failover), the entries of a row that still have to be applied are
//! exactly those after `last_entry_id`: a suffix of the batch's entries of that row, since the
//! pipeline applies one row's entries in stream order. For a row touched by entries `e1 < … < ek`
//! of a batch, [`chain`] therefore produces one [`Link`] per suffix `ei..ek`, carrying `prev` =
//! `e(i-1)` (none for `e1`). The MERGE keeps, for each row, the one link with
//! `prev <= last_entry_id < entry`: exactly the suffix not yet applied, and never more than one
//! source row per target row. A missing row has no `last_entry_id` and takes the whole chain, in its
//! `missing` form: the first link is sent twice when the two forms differ (a leading delete), marked
//! for existing rows only ([`Kind::Existing`]) and for missing rows only ([`Kind::Missing`]).

use chrono::NaiveDateTime;

use crate::entry::{Action, CreateUser, EntryId, Event};

/// The maps a batch is folded with, keyed by row or user: FxHash, not the standard library's
/// SipHash, which showed in the worker's profile. A key set chosen to collide can only slow one
/// batch (bounded by `BATCH_MAX_ENTRIES` and `BATCH_MAX_BYTES`), never change its result.
pub type FastMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// What a run of events does to a row that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effect<'a> {
    pub visits: u64,
    /// Latest time of each kind of event in the run.
    pub visited: Option<NaiveDateTime>,
    pub saved_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
    /// The last save (`true`) or delete (`false`) of the run.
    pub saved: Option<bool>,
    /// Each attribute as the last event carrying it set it (`None`: the run leaves it as it was).
    pub username: Option<&'a str>,
    pub page_name: Option<&'a str>,
    pub query_row_count: Option<i64>,
    pub title: Option<&'a str>,
    pub track_type: Option<&'a str>,
    pub url: Option<&'a str>,
}

fn later_time(a: Option<NaiveDateTime>, b: Option<NaiveDateTime>) -> Option<NaiveDateTime> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl<'a> Effect<'a> {
    /// One event on a row that exists.
    pub fn of(e: &'a Event) -> Effect<'a> {
        let at = Some(e.lastplus);
        let (visits, visited, saved_at, deleted_at, saved) = match e.action {
            Action::Visit => (1, at, None, None, None),
            Action::Save => (0, None, at, None, Some(true)),
            Action::Delete => (0, None, None, at, Some(false)),
        };
        Effect {
            visits,
            visited,
            saved_at,
            deleted_at,
            saved,
            username: Some(e.username()),
            page_name: e.page_name(),
            query_row_count: e.query_row_count,
            title: e.title(),
            track_type: e.track_type(),
            url: e.url(),
        }
    }

    /// This run followed by `later`.
    pub fn then(self, later: Effect<'a>) -> Effect<'a> {
        Effect {
            visits: self.visits + later.visits,
            visited: later_time(self.visited, later.visited),
            saved_at: later_time(self.saved_at, later.saved_at),
            deleted_at: later_time(self.deleted_at, later.deleted_at),
            saved: later.saved.or(self.saved),
            username: later.username.or(self.username),
            page_name: later.page_name.or(self.page_name),
            query_row_count: later.query_row_count.or(self.query_row_count),
            title: later.title.or(self.title),
            track_type: later.track_type.or(self.track_type),
            url: later.url.or(self.url),
        }
    }

    /// The same effect as seen by a new row, where "leave `saved` as it was" means 0.
    fn as_insert(self) -> Effect<'a> {
        Effect {
            saved: Some(self.saved.unwrap_or(false)),
            ..self
        }
    }
}

/// What a run of events does to a row that exists, and to one that does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fold<'a> {
    pub existing: Effect<'a>,
    /// `None`: the run creates nothing (deletes only).
    pub missing: Option<Effect<'a>>,
}

impl<'a> Fold<'a> {
    pub fn of(e: &'a Event) -> Fold<'a> {
        let existing = Effect::of(e);
        let missing = (e.action != Action::Delete).then_some(existing);
        Fold { existing, missing }
    }

    /// This run followed by `later`: once a run has created the row, all of `later` applies.
    pub fn then(self, later: Fold<'a>) -> Fold<'a> {
        Fold {
            existing: self.existing.then(later.existing),
            missing: match self.missing {
                Some(m) => Some(m.then(later.existing)),
                None => later.missing,
            },
        }
    }
}

/// Which target rows a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any row (the forms agree).
    Both,
    /// A row that exists.
    Existing,
    /// A row that does not exist yet (the whole chain, its leading deletes dropped).
    Missing,
}

impl Kind {
    /// The code the MERGE compares (`k`).
    pub fn code(self) -> &'static str {
        match self {
            Kind::Both => "b",
            Kind::Existing => "m",
            Kind::Missing => "n",
        }
    }
}

/// One source row: the effect of the row's entries from `entry` to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link<'a> {
    pub entry: EntryId,
    /// The row's previous entry in the batch; `None` for the first.
    pub prev: Option<EntryId>,
    /// The row's newest entry in the batch: its new `last_entry_id` and `updated_dts`.
    pub last: EntryId,
    pub kind: Kind,
    pub effect: Effect<'a>,
}

/// The links of one row from its entries' folds, in stream order (distinct, ascending entries).
pub fn chain<'a>(per_entry: &[(EntryId, Fold<'a>)]) -> Vec<Link<'a>> {
    let mut links = Vec::with_capacity(per_entry.len() + 1);
    chain_into(per_entry, &mut Vec::new(), &mut links);
    links
}

/// [`chain`] into `links` (cleared first), with `suffix` as room for the suffix folds: a batch's
/// rows reuse both.
pub fn chain_into<'a>(
    per_entry: &[(EntryId, Fold<'a>)],
    suffix: &mut Vec<Fold<'a>>,
    links: &mut Vec<Link<'a>>,
) {
    links.clear();
    suffix.clear();
    let Some(&(last, _)) = per_entry.last() else {
        return;
    };
    // Suffix folds, built from the end.
    for (_, f) in per_entry.iter().rev() {
        let s = match suffix.last() {
            Some(after) => f.then(*after),
            None => *f,
        };
        suffix.push(s);
    }
    suffix.reverse();
    for (i, ((entry, _), s)) in per_entry.iter().zip(suffix.iter()).enumerate() {
        let prev = i.checked_sub(1).map(|p| per_entry[p].0);
        let link = |kind, effect| Link {
            entry: *entry,
            prev,
            last,
            kind,
            effect,
        };
        // Only the first link can meet a missing row (no `last_entry_id` selects it).
        if i > 0 {
            links.push(link(Kind::Existing, s.existing));
            continue;
        }
        match s.missing {
            Some(m) if m.as_insert() == s.existing.as_insert() => {
                links.push(link(Kind::Both, s.existing))
            }
            Some(m) => {
                links.push(link(Kind::Existing, s.existing));
                links.push(link(Kind::Missing, m));
            }
            None => links.push(link(Kind::Existing, s.existing)),
        }
    }
}

/// The TRACKED row key: (`tracked_id`, `track_id`).
pub type RowKey<'a> = (&'a str, &'a str);

/// Per row key, in order of first appearance, the folds of the entries that touch it.
#[derive(Debug, Default)]
pub struct Rows<'a> {
    index: FastMap<RowKey<'a>, usize>,
    rows: Vec<(RowKey<'a>, Vec<(EntryId, Fold<'a>)>)>,
}

impl<'a> Rows<'a> {
    pub fn new() -> Rows<'a> {
        Rows::default()
    }

    /// Folds one entry's events (in record order) into its rows. Entries may come in any order.
    pub fn add(&mut self, entry: EntryId, events: &'a [Event]) {
        for e in events {
            let key = (e.tracked_id(), e.track_id());
            let next = self.rows.len();
            let i = *self.index.entry(key).or_insert(next);
            if i == next {
                self.rows.push((key, Vec::new()));
            }
            let folds = &mut self.rows[i].1;
            let f = Fold::of(e);
            match folds.last_mut() {
                Some((id, acc)) if *id == entry => *acc = acc.then(f),
                _ => folds.push((entry, f)),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Every row's links, rows in order of first appearance.
    pub fn links(&mut self) -> impl Iterator<Item = (RowKey<'a>, Vec<Link<'a>>)> + '_ {
        self.rows.iter_mut().map(|(key, folds)| {
            in_stream_order(folds);
            (*key, chain(folds))
        })
    }

    /// Hands every row's links to `each`, rows in order of first appearance: [`Rows::links`]
    /// with one list of links reused for every row (the worker's path).
    pub fn each_links(&mut self, mut each: impl FnMut(RowKey<'a>, &[Link<'a>])) {
        let (mut suffix, mut links) = (Vec::new(), Vec::new());
        for (key, folds) in &mut self.rows {
            in_stream_order(folds);
            chain_into(folds, &mut suffix, &mut links);
            each(*key, &links);
        }
    }
}

/// Puts a row's folds in stream order. Entries may arrive out of order (the migration tool reads
/// dumps in any order); an entry seen twice is the same entry, kept once.
fn in_stream_order(folds: &mut Vec<(EntryId, Fold<'_>)>) {
    if !folds.windows(2).all(|w| w[0].0 < w[1].0) {
        folds.sort_by_key(|(id, _)| *id);
        folds.dedup_by_key(|(id, _)| *id);
    }
}

/// One USER source row: the user's entries from `entry` to `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLink<'a> {
    pub email: &'a str,
    pub entry: EntryId,
    pub prev: Option<EntryId>,
    pub last: EntryId,
    /// The username of the newest entry.
    pub username: &'a str,
}

/// The USER links of a set of create-user entries (any order), users in order of first appearance.
pub fn user_links<'a>(users: &[&'a CreateUser]) -> Vec<UserLink<'a>> {
    let mut index: FastMap<&str, usize> = FastMap::default();
    let mut per_user: Vec<Vec<&'a CreateUser>> = Vec::new();
    for u in users {
        let next = per_user.len();
        let i = *index.entry(u.email.as_str()).or_insert(next);
        if i == next {
            per_user.push(Vec::new());
        }
        per_user[i].push(u);
    }
    let mut out = Vec::new();
    for mut entries in per_user {
        entries.sort_by_key(|u| u.id);
        entries.dedup_by_key(|u| u.id);
        let Some(newest) = entries.last().copied() else {
            continue;
        };
        for (i, u) in entries.iter().enumerate() {
            out.push(UserLink {
                email: &u.email,
                entry: u.id,
                prev: i.checked_sub(1).map(|p| entries[p].id),
                last: newest.id,
                username: &newest.username,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::rules::parse_lastplus;
    use crate::entry::{Strings, Texts};

    fn ev(action: Action, time: &str, title: Option<&str>) -> Event {
        Event {
            index: 0,
            action,
            track_id_generated: false,
            lastplus: parse_lastplus(time).unwrap_or_default(),
            query_row_count: None,
            stale_override: None,
            texts: Texts::new(&Strings {
                tracked_id: "a-1",
                track_id: "t",
                username: "a",
                title,
                ..Strings::default()
            }),
        }
    }

    fn t(s: &str) -> Option<NaiveDateTime> {
        parse_lastplus(s)
    }

    #[test]
    fn a_leading_delete_is_dropped_for_a_missing_row_only() {
        let d = ev(Action::Delete, "2025-11-03 12:00:01", Some("from delete"));
        let v = ev(Action::Visit, "2025-11-03 12:00:02", None);
        let f = Fold::of(&d).then(Fold::of(&v));
        assert_eq!(f.existing.deleted_at, t("2025-11-03 12:00:01"));
        assert_eq!(f.existing.title, Some("from delete"));
        let m = f.missing.expect("the visit creates the row");
        assert_eq!((m.deleted_at, m.title, m.visits), (None, None, 1));
        let links = chain(&[(EntryId::new(1, 0), f)]);
        let kinds: Vec<Kind> = links.iter().map(|l| l.kind).collect();
        assert_eq!(kinds, [Kind::Existing, Kind::Missing]);
    }

    #[test]
    fn deletes_alone_create_nothing_and_a_save_after_a_delete_keeps_the_deletion_time() {
        let d = ev(Action::Delete, "2025-11-03 12:00:05", None);
        assert_eq!(Fold::of(&d).missing, None);
        let s = ev(Action::Save, "2025-11-03 12:00:01", None);
        let f = Fold::of(&s).then(Fold::of(&d)).then(Fold::of(&s));
        assert_eq!(f.existing.saved, Some(true));
        assert_eq!(f.existing.deleted_at, t("2025-11-03 12:00:05"));
        assert_eq!(f.missing, Some(f.existing));
    }

    #[test]
    fn each_link_starts_after_the_previous_entry_and_ends_at_the_newest() {
        let v1 = ev(Action::Visit, "2025-11-03 12:00:01", Some("one"));
        let v2 = ev(Action::Visit, "2025-11-03 12:00:03", None);
        let v3 = ev(Action::Visit, "2025-11-03 12:00:02", None);
        let ids = [EntryId::new(5, 0), EntryId::new(7, 0), EntryId::new(9, 1)];
        let folds = [
            (ids[0], Fold::of(&v1)),
            (ids[1], Fold::of(&v2)),
            (ids[2], Fold::of(&v3)),
        ];
        let links = chain(&folds);
        assert_eq!(links.len(), 3);
        let shape: Vec<(Option<EntryId>, EntryId, u64)> = links
            .iter()
            .map(|l| (l.prev, l.entry, l.effect.visits))
            .collect();
        assert_eq!(
            shape,
            [
                (None, ids[0], 3),
                (Some(ids[0]), ids[1], 2),
                (Some(ids[1]), ids[2], 1)
            ]
        );
        assert!(links.iter().all(|l| l.last == ids[2]));
        assert_eq!(links[0].effect.visited, t("2025-11-03 12:00:03"));
        assert_eq!(links[0].effect.title, Some("one"));
        assert_eq!(links[1].effect.title, None);
    }

    #[test]
    fn an_entrys_events_fold_into_one_link_per_row_and_out_of_order_entries_are_sorted() {
        let mut a = ev(Action::Visit, "2025-11-03 12:00:01", None);
        let mut b = a.clone();
        b.texts = Texts::new(&Strings {
            track_id: "other",
            ..a.strings()
        });
        a.index = 0;
        b.index = 1;
        let late = [a.clone(), b, a.clone()];
        let early = [a];
        let mut rows = Rows::new();
        rows.add(EntryId::new(9, 0), &late);
        rows.add(EntryId::new(3, 0), &early);
        let links: Vec<(RowKey, Vec<Link>)> = rows.links().collect();
        assert_eq!(links.len(), 2);
        assert_eq!(links[0].0, ("a-1", "t"));
        let first = &links[0].1;
        assert_eq!(first.len(), 2);
        assert_eq!(
            (first[0].entry, first[0].effect.visits),
            (EntryId::new(3, 0), 3)
        );
        assert_eq!(
            (first[1].entry, first[1].effect.visits),
            (EntryId::new(9, 0), 2)
        );
        assert_eq!(links[1].1[0].effect.visits, 1);
    }
}
