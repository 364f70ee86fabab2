//! The one place that touches the stream: reading its state, claiming entries through the consumer
//! group, acknowledging them, dead-lettering them.
//!
//! Every write goes through `RM_Call` with the `!` flag, so it reaches the AOF and the replicas like a
//! client's command would: an `XACK` that only lived in memory would be undone by a restart. Calls never
//! use the deny-OOM flag: acknowledging must work even when Redis is at `maxmemory`.
//!
//! Calls run on a detached context whose database is `REDIS_DB`, created once at load, so a command
//! such as `WB.STATUS` never changes the database its own client has selected. On the main thread the
//! context is used directly (the main thread holds the lock); background threads lock it first.

use std::sync::atomic::{AtomicPtr, Ordering};

use redis_module::{raw, CallOptionsBuilder, CallReply, CallResult, Context, RedisValue};

use crate::settings::{self, Key};

static HOME: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(std::ptr::null_mut());

/// Creates the detached context (at load, on the main thread).
pub fn init(ctx: &Context) -> Result<(), String> {
    let Some(get_detached) = (unsafe { raw::RedisModule_GetDetachedThreadSafeContext }) else {
        return Err("this Redis has no detached thread-safe contexts".into());
    };
    let home = unsafe { get_detached(ctx.ctx) };
    if home.is_null() {
        return Err("could not create a detached context".into());
    }
    let db = settings::current().int(Key::RedisDb) as i32;
    if let Some(select) = unsafe { raw::RedisModule_SelectDb } {
        unsafe { select(home, db) };
    }
    HOME.store(home, Ordering::Release);
    Ok(())
}

/// The module's own context, on the configured database. Only valid on the main thread, or on a
/// background thread while it holds the Redis lock.
pub fn home() -> Option<Context> {
    let p = HOME.load(Ordering::Acquire);
    (!p.is_null()).then(|| Context::new(p))
}

/// What `XINFO GROUPS` says about one consumer group, and about its written group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub consumers: i64,
    /// Entries in the group's own pending list: none for the userdata stream, which is read with
    /// `NOACK` (see [`written_group`]); the hash mappings' streams keep one.
    pub pending: i64,
    pub last_delivered_id: String,
    /// Entries not yet delivered to the group; `None` when Redis cannot tell (after deletions).
    pub lag: Option<i64>,
    /// The logical position (1-based count of entries ever added) of the last entry delivered to the
    /// group; `None` when Redis cannot tell.
    pub entries_read: Option<i64>,
    /// The group's written group, when it has one.
    pub written: Option<Written>,
}

/// Where a written group stands: every entry up to `id` is in Snowflake or dead-lettered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub id: String,
    /// Entries after `id` (not yet written); `None` when Redis cannot tell.
    pub lag: Option<i64>,
    pub entries_read: Option<i64>,
}

/// Sets `group` back to where its written group stands, with its read counter (`0` at `0-0`,
/// nothing read, where Redis may give none); returns the counter.
pub fn set_back_to_written(
    ctx: &Context,
    stream: &str,
    group: &str,
    written: &Written,
) -> Result<Option<i64>, String> {
    let read = written
        .entries_read
        .or_else(|| (written.id == "0-0").then_some(0));
    set_group_id(ctx, stream, group, &written.id, read)?;
    Ok(read)
}

impl GroupInfo {
    /// Entries delivered to the group and not yet written: those between the written group and the
    /// reading group, or the pending list of a group without a written group. `None` when Redis
    /// cannot tell (deletions inside the stream).
    pub fn unwritten(&self) -> Option<i64> {
        match &self.written {
            None => Some(self.pending),
            Some(w) => match (w.lag, self.lag) {
                (Some(behind), Some(ahead)) => Some((behind - ahead).max(0)),
                _ => None,
            },
        }
    }
}

/// The written group of `group`: a second consumer group of the same stream that is never read
/// from. The claimer reads with `NOACK` (no pending list, no `XCLAIM` propagated per entry, no
/// `XACK`) and, once a run of entries is committed or dead-lettered, moves this group past them with
/// `XGROUP SETID`. It is replicated and saved with the stream, so after a restart or a failover the
/// reading group is set back to it and the entries after it are read again ([`set_group_id`]).
pub fn written_group(group: &str) -> String {
    format!("{group}-written")
}

pub fn length(ctx: &Context, stream: &str) -> i64 {
    match ctx.call("XLEN", &[stream]) {
        Ok(RedisValue::Integer(n)) => n,
        _ => 0,
    }
}

/// A string reply as text (lossy for binary data).
pub fn text(v: &RedisValue) -> Option<String> {
    match v {
        RedisValue::SimpleString(s) | RedisValue::BulkString(s) => Some(s.clone()),
        RedisValue::SimpleStringStatic(s) => Some(s.to_string()),
        RedisValue::BulkRedisString(s) => Some(s.to_string_lossy()),
        RedisValue::StringBuffer(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The group's figures, or `None` when the stream or the group does not exist.
pub fn group_info(ctx: &Context, stream: &str, group: &str) -> Option<GroupInfo> {
    let Ok(RedisValue::Array(groups)) = ctx.call("XINFO", &["GROUPS", stream]) else {
        return None;
    };
    let written_name = written_group(group);
    let mut reading = None;
    let mut written = None;
    for g in &groups {
        let RedisValue::Array(fields) = g else {
            continue;
        };
        let mut info = GroupInfo::default();
        let mut name = None;
        for pair in fields.chunks(2) {
            let [k, v] = pair else { continue };
            match text(k).as_deref() {
                Some("name") => name = text(v),
                Some("consumers") => info.consumers = int(v).unwrap_or(0),
                Some("pending") => info.pending = int(v).unwrap_or(0),
                Some("last-delivered-id") => info.last_delivered_id = text(v).unwrap_or_default(),
                Some("lag") => info.lag = int(v),
                Some("entries-read") => info.entries_read = int(v),
                _ => {}
            }
        }
        match name {
            Some(n) if n == group => reading = Some(info),
            Some(n) if n == written_name => {
                written = Some(Written {
                    id: info.last_delivered_id,
                    lag: info.lag,
                    entries_read: info.entries_read,
                })
            }
            _ => {}
        }
    }
    reading.map(|info| GroupInfo { written, ..info })
}

fn int(v: &RedisValue) -> Option<i64> {
    match v {
        RedisValue::Integer(n) => Some(*n),
        _ => None,
    }
}

/// One stream entry as read: its ID and its field/value pairs, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawEntry {
    /// Bytes held for this entry (for memory bounds).
    pub fn size(&self) -> usize {
        self.id.len()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The entries of one claim, copied out of the `XREADGROUP` reply into one buffer: every ID, field
/// name and value back to back, and where each ends. Copying a chunk of hundreds of entries takes a
/// few allocations through the server's allocator, not five per entry (an ID, a field list, a name
/// and a value each, then freed again after decoding); the claimer reads the entries in place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The IDs, back to back (text, so reading one back needs no check).
    ids: String,
    /// The field names and values, back to back.
    bytes: Vec<u8>,
    /// Where each name or value ends in `bytes` (it starts where the one before it ends).
    ends: Vec<usize>,
    /// Each entry: its ID in `ids`, its fields' names and values in `ends` (name, value, ...).
    entries: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

/// One entry of a [`Claimed`] chunk, borrowed from it.
#[derive(Debug, Clone)]
pub struct ClaimedEntry<'a> {
    /// The entry's ID (`<ms>-<seq>`).
    pub id: &'a str,
    claimed: &'a Claimed,
    /// Its fields' strings in `claimed.ends`.
    fields: std::ops::Range<usize>,
}

impl Claimed {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = ClaimedEntry<'_>> + '_ {
        self.entries.iter().map(|e| self.entry(e))
    }

    pub fn first(&self) -> Option<ClaimedEntry<'_>> {
        self.entries.first().map(|e| self.entry(e))
    }

    fn entry(
        &self,
        (id, fields): &(std::ops::Range<usize>, std::ops::Range<usize>),
    ) -> ClaimedEntry<'_> {
        ClaimedEntry {
            // Always a whole ID pushed by `start_entry`.
            id: self.ids.get(id.clone()).unwrap_or_default(),
            claimed: self,
            fields: fields.clone(),
        }
    }

    /// Where the `i`-th name or value ends (0 before the first).
    fn end_of(&self, i: Option<usize>) -> usize {
        i.and_then(|i| self.ends.get(i)).copied().unwrap_or(0)
    }

    fn string(&self, i: usize) -> &[u8] {
        let (start, end) = (self.end_of(i.checked_sub(1)), self.end_of(Some(i)));
        self.bytes.get(start..end).unwrap_or_default()
    }

    fn push_string(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        self.ends.push(self.bytes.len());
    }

    /// Starts an entry with its ID; its fields follow with [`Claimed::push_field`].
    fn start_entry(&mut self, id: &[u8]) {
        let start = self.ids.len();
        self.ids.push_str(&String::from_utf8_lossy(id));
        let fields = self.ends.len();
        self.entries.push((start..self.ids.len(), fields..fields));
    }

    fn push_field(&mut self, name: &[u8], value: &[u8]) {
        self.push_string(name);
        self.push_string(value);
        if let Some((_, fields)) = self.entries.last_mut() {
            fields.end += 2;
        }
    }

    /// Reads an `XREADGROUP` reply of one stream from its RESP2 text:
    /// `*1 *2 $<stream> *<n> (*2 $<id> (*<2k> ($<name> $<value>)… | *-1))…`. `None` for any other
    /// text (the entries read so far are then to be discarded).
    fn read_resp(&mut self, proto: &[u8]) -> Option<()> {
        let mut r = Resp {
            bytes: proto,
            at: 0,
        };
        match r.array()? {
            None | Some(0) => return (r.at == proto.len()).then_some(()),
            Some(1) => {}
            Some(_) => return None,
        }
        if r.array()? != Some(2) {
            return None;
        }
        r.bulk()?;
        let n = r.array()??;
        // A count is never larger than the text that holds its entries.
        self.entries.reserve(n.min(proto.len() / 8));
        for _ in 0..n {
            if r.array()? != Some(2) {
                return None;
            }
            self.start_entry(r.bulk()?);
            // A nil field list: the entry was deleted while pending.
            if let Some(k) = r.array()? {
                if k % 2 != 0 {
                    return None;
                }
                for _ in 0..k / 2 {
                    let (name, value) = (r.bulk()?, r.bulk()?);
                    self.push_field(name, value);
                }
            }
            // The buffers' first size is a guess from the first entry (most entries are alike),
            // none larger than the text.
            if self.entries.len() == 1 {
                let more = n - 1;
                let guess = |first: usize, most: usize| first.saturating_mul(more).min(most);
                self.ids.reserve(guess(self.ids.len(), proto.len()));
                self.bytes.reserve(guess(self.bytes.len(), proto.len()));
                self.ends.reserve(guess(self.ends.len(), proto.len() / 4));
            }
        }
        (r.at == proto.len()).then_some(())
    }

    /// Every entry as an owned [`RawEntry`].
    pub fn to_entries(&self) -> Vec<RawEntry> {
        self.iter().map(|e| e.to_raw(true)).collect()
    }
}

impl From<Vec<RawEntry>> for Claimed {
    fn from(entries: Vec<RawEntry>) -> Claimed {
        let mut out = Claimed::default();
        for e in entries {
            out.start_entry(e.id.as_bytes());
            for (k, v) in &e.fields {
                out.push_field(k, v);
            }
        }
        out
    }
}

impl<'a> ClaimedEntry<'a> {
    /// The field names and values, in the entry's order.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let claimed = self.claimed;
        self.fields
            .clone()
            .step_by(2)
            .map(move |i| (claimed.string(i), claimed.string(i + 1)))
    }

    /// Bytes held for this entry, as [`RawEntry::size`] counts them.
    pub fn size(&self) -> usize {
        let c = self.claimed;
        let end = c.end_of(self.fields.end.checked_sub(1));
        let start = c.end_of(self.fields.start.checked_sub(1));
        self.id.len() + end.saturating_sub(start)
    }

    /// The entry as an owned value: its ID, and its fields when `with_fields`.
    pub fn to_raw(&self, with_fields: bool) -> RawEntry {
        RawEntry {
            id: self.id.to_string(),
            fields: if with_fields {
                self.fields()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// A call's reply as a value, byte for byte: every string stays bytes (never a simple string, which
/// could not carry a NUL or a CR LF back to a client), and no reply shape can panic (the crate's own
/// conversion panics on some RESP3 map keys).
pub fn value(reply: &CallReply) -> RedisValue {
    let item = |r: &CallResult| match r {
        Ok(r) => value(r),
        Err(e) => RedisValue::StringBuffer(e.as_bytes().to_vec()),
    };
    match reply {
        CallReply::String(s) => RedisValue::StringBuffer(s.as_bytes().to_vec()),
        CallReply::VerbatimString(s) => {
            RedisValue::StringBuffer(s.to_parts().map(|(_, data)| data).unwrap_or_default())
        }
        CallReply::I64(n) => RedisValue::Integer(n.to_i64()),
        CallReply::Bool(b) => RedisValue::Integer(i64::from(b.to_bool())),
        CallReply::Double(d) => RedisValue::Float(d.to_double()),
        CallReply::BigNumber(n) => {
            RedisValue::StringBuffer(n.to_string().unwrap_or_default().into_bytes())
        }
        CallReply::Array(a) => RedisValue::Array(a.iter().map(|r| item(&r)).collect()),
        CallReply::Set(a) => RedisValue::Array(a.iter().map(|r| item(&r)).collect()),
        CallReply::Map(m) => {
            RedisValue::Array(m.iter().flat_map(|(k, v)| [item(&k), item(&v)]).collect())
        }
        CallReply::Null(_) | CallReply::Unknown => RedisValue::Null,
    }
}

/// Whether this server is a replica now. Checked inside every lock hold that writes: after a
/// demotion (`REPLICAOF`, a Sentinel failover) the module must not write to the replica's data.
pub fn is_replica(ctx: &Context) -> bool {
    flags(ctx) & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0
}

/// The error of a write refused because this server became a replica.
pub const DEMOTED: &str = "READONLY this server is a replica now; the module's write was dropped";

/// Runs a command that changes data, replicated and written to the AOF. Refused on a replica (see
/// [`is_replica`]): the caller drops its work, the new primary does it.
pub fn call_write(ctx: &Context, command: &str, args: &[&[u8]]) -> Result<RedisValue, String> {
    if is_replica(ctx) {
        return Err(DEMOTED.into());
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .build();
    let res: CallResult = ctx.call_ext(command, &opts, args);
    match res {
        Ok(reply) => Ok(value(&reply)),
        Err(e) => Err(e.to_utf8_string().unwrap_or_else(|| "error".into())),
    }
}

/// Runs a read-only command.
pub fn call_read(ctx: &Context, command: &str, args: &[&[u8]]) -> Result<RedisValue, String> {
    let opts = CallOptionsBuilder::new().errors_as_replies().build();
    let res: CallResult = ctx.call_ext(command, &opts, args);
    match res {
        Ok(reply) => Ok(value(&reply)),
        Err(e) => Err(e.to_utf8_string().unwrap_or_else(|| "error".into())),
    }
}

/// A string reply as bytes, exactly.
pub fn bytes(v: &RedisValue) -> Option<Vec<u8>> {
    match v {
        RedisValue::StringBuffer(b) => Some(b.clone()),
        other => text(other).map(String::into_bytes),
    }
}

/// Creates the consumer group at ID 0 (so entries added before the module was loaded are written too),
/// creating the stream if needed. An existing group is left as it is.
pub fn ensure_group(ctx: &Context, stream: &str, group: &str) -> Result<(), String> {
    match call_write(
        ctx,
        "XGROUP",
        &[
            b"CREATE",
            stream.as_bytes(),
            group.as_bytes(),
            b"0",
            b"MKSTREAM",
        ],
    ) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the written group of `group` (see [`written_group`]) when it has none: where `group`
/// stands, or — for a group that still has a pending list, read before the written group existed —
/// just before its lowest pending entry, so those entries are read again and written.
pub fn ensure_written_group(ctx: &Context, stream: &str, group: &str) -> Result<(), String> {
    let Some(info) = group_info(ctx, stream, group) else {
        return Err(format!("{stream} has no consumer group {group}"));
    };
    if info.written.is_some() {
        return Ok(());
    }
    let (start, entries_read) = match lowest_pending(ctx, stream, group) {
        Some(lowest) => (before(&lowest), None),
        None if info.last_delivered_id.is_empty() => ("0-0".to_string(), Some(0)),
        None => (info.last_delivered_id, info.entries_read),
    };
    let name = written_group(group);
    let read = entries_read.map(|n| n.to_string());
    let mut args: Vec<&[u8]> = vec![
        b"CREATE",
        stream.as_bytes(),
        name.as_bytes(),
        start.as_bytes(),
    ];
    if let Some(read) = &read {
        args.extend([b"ENTRIESREAD".as_slice(), read.as_bytes()]);
    }
    match call_write(ctx, "XGROUP", &args) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The ID just before `id` (`0-0` for the lowest).
fn before(id: &str) -> String {
    let Ok(id) = crate::entry::EntryId::parse(id) else {
        return "0-0".into();
    };
    match (id.ms, id.seq) {
        (ms, 0) if ms > 0 => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq.saturating_sub(1)),
    }
}

/// Sets `group` of `stream` to `id`, with its logical read counter when known (Redis uses it for
/// the group's lag and for the claimer's check of trimmed entries).
pub fn set_group_id(
    ctx: &Context,
    stream: &str,
    group: &str,
    id: &str,
    entries_read: Option<i64>,
) -> Result<(), String> {
    let read = entries_read.map(|n| n.to_string());
    let mut args: Vec<&[u8]> = vec![b"SETID", stream.as_bytes(), group.as_bytes(), id.as_bytes()];
    if let Some(read) = &read {
        args.extend([b"ENTRIESREAD".as_slice(), read.as_bytes()]);
    }
    call_write(ctx, "XGROUP", &args).map(|_| ())
}

/// Acknowledges every entry of `group`'s pending list, `chunk` at a time; returns how many. A group
/// read with `NOACK` has none: this empties the list a group read before its written group existed.
pub fn clear_pending(
    ctx: &Context,
    stream: &str,
    group: &str,
    chunk: usize,
) -> Result<u64, String> {
    let count = chunk.max(1).to_string();
    let mut cleared = 0u64;
    loop {
        let reply = call_read(
            ctx,
            "XPENDING",
            &[
                stream.as_bytes(),
                group.as_bytes(),
                b"-",
                b"+",
                count.as_bytes(),
            ],
        )?;
        let RedisValue::Array(rows) = reply else {
            return Ok(cleared);
        };
        let ids: Vec<String> = rows
            .iter()
            .filter_map(|row| match row {
                RedisValue::Array(parts) => parts.first().and_then(text),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(cleared);
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let acked = ack(ctx, stream, group, &refs)?;
        cleared += ids.len() as u64;
        if acked == 0 {
            // Nothing left that an acknowledgement removes: never loop on it.
            return Ok(cleared);
        }
    }
}

/// Parses an `XREADGROUP`/`XRANGE`-style array of `[id, [field, value, ...]]`; entries deleted from
/// the stream but still pending come back with a nil field list and are returned with no fields.
pub fn parse_entries(list: &RedisValue) -> Vec<RawEntry> {
    let RedisValue::Array(items) = list else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let RedisValue::Array(parts) = item else {
                return None;
            };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                Some(RedisValue::Array(kv)) => kv
                    .chunks(2)
                    .filter_map(|p| match p {
                        [k, v] => Some((bytes(k)?, bytes(v)?)),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some(RawEntry { id, fields })
        })
        .collect()
}

/// Reads up to `count` entries for `consumer`: `from` is `0` (or an ID) for its pending entries, `>`
/// for new ones.
pub fn read_group(
    ctx: &Context,
    stream: &str,
    group: &str,
    consumer: &str,
    from: &str,
    count: usize,
) -> Result<Vec<RawEntry>, String> {
    read_group_chunk(ctx, stream, group, consumer, from, count, false).map(|c| c.to_entries())
}

/// [`read_group`] into one [`Claimed`] buffer (the claimer's hot path); with `noack`, nothing is
/// added to a pending list (progress is then kept by the [`written_group`]).
pub fn read_group_chunk(
    ctx: &Context,
    stream: &str,
    group: &str,
    consumer: &str,
    from: &str,
    count: usize,
    noack: bool,
) -> Result<Claimed, String> {
    let count = count.to_string();
    let mut args: Vec<&[u8]> = vec![
        b"GROUP",
        group.as_bytes(),
        consumer.as_bytes(),
        b"COUNT",
        count.as_bytes(),
    ];
    if noack {
        args.push(b"NOACK");
    }
    args.extend([b"STREAMS".as_slice(), stream.as_bytes(), from.as_bytes()]);
    if is_replica(ctx) {
        return Err(DEMOTED.into());
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .errors_as_replies()
        .build();
    // This runs under the Redis lock for every chunk.
    let res: CallResult = ctx.call_ext("XREADGROUP", &opts, &args[..]);
    let streams = match res {
        Ok(CallReply::Array(streams)) => streams,
        Ok(_) => return Ok(Claimed::default()), // nil: nothing new
        Err(e) => {
            return Err(e
                .to_utf8_string()
                .unwrap_or_else(|| "XREADGROUP failed".into()))
        }
    };
    // The reply's RESP text, read in one pass straight into the claim's buffer. Walking it element
    // by element through the module API would have the server build a reply object for every
    // entry and every field list, all under the lock. A text this reader does not expect (it never
    // should) is read the generic, slower way.
    // SAFETY: `streams` is this call's root reply, alive until the end of the function.
    if let Some(proto) = unsafe { reply_proto(streams.get_raw()) } {
        let mut out = Claimed::default();
        if out.read_resp(proto).is_some() {
            return Ok(out);
        }
        if !UNEXPECTED_REPLY_TEXT.swap(true, Ordering::Relaxed) {
            crate::host::logging::warning(
                "an XREADGROUP reply's text is not as expected; claims read it the slower way",
            );
        }
    }
    // [[stream, [[id, [field, value, ...]], ...]]]
    let RedisValue::Array(pair) = streams.get(0).map_or(RedisValue::Null, |r| match r {
        Ok(r) => value(&r),
        Err(_) => RedisValue::Null,
    }) else {
        return Ok(Claimed::default());
    };
    Ok(pair
        .get(1)
        .map(|list| Claimed::from(parse_entries(list)))
        .unwrap_or_default())
}

/// The RESP text of a call's reply, nested elements included, borrowed from it. `None` when the
/// server gives none.
///
/// # Safety
/// `reply` is null or a live reply of `RedisModule_Call` that outlives `'a`.
unsafe fn reply_proto<'a>(reply: *mut raw::RedisModuleCallReply) -> Option<&'a [u8]> {
    let proto = unsafe { raw::RedisModule_CallReplyProto }?;
    if reply.is_null() {
        return None;
    }
    let mut len = 0usize;
    let p = unsafe { proto(reply, &mut len) };
    if p.is_null() {
        return None;
    }
    Some(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// Set once an `XREADGROUP` reply's text could not be read (said once in the log).
static UNEXPECTED_REPLY_TEXT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A reader of RESP2 text (the replies of `RM_Call` without the `3` flag): arrays and bulk strings.
struct Resp<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Resp<'a> {
    /// A header line `<kind><integer>\r\n`, giving its integer.
    fn header(&mut self, kind: u8) -> Option<i64> {
        let rest = self.bytes.get(self.at..)?;
        if *rest.first()? != kind {
            return None;
        }
        let (negative, digits_at) = match rest.get(1)? {
            b'-' => (true, 2),
            _ => (false, 1),
        };
        let mut n: i64 = 0;
        let mut i = digits_at;
        while let Some(d) = rest.get(i).filter(|b| b.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
            i += 1;
        }
        if i == digits_at || rest.get(i..i + 2)? != b"\r\n" {
            return None;
        }
        self.at += i + 2;
        Some(if negative { -n } else { n })
    }

    /// An array's length; `Some(None)` for a nil array.
    fn array(&mut self) -> Option<Option<usize>> {
        match self.header(b'*')? {
            -1 => Some(None),
            n => usize::try_from(n).ok().map(Some),
        }
    }

    /// A bulk string, borrowed.
    fn bulk(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.header(b'$')?).ok()?;
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        if self.bytes.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        self.at = end + 2;
        Some(s)
    }
}

/// What one `XAUTOCLAIM` step returned.
#[derive(Debug, Default)]
pub struct Autoclaimed {
    pub entries: Vec<RawEntry>,
    /// Where to continue (`0-0` when done).
    pub next: String,
    /// Pending entries that no longer exist in the stream (trimmed or deleted before they were
    /// written); Redis drops them from the pending list.
    pub deleted: Vec<String>,
}

/// Moves every pending entry of the group, whoever holds it, to `consumer`, from `start` on.
pub fn autoclaim(
    ctx: &Context,
    stream: &str,
    group: &str,
    consumer: &str,
    start: &str,
    count: usize,
) -> Result<Autoclaimed, String> {
    let count = count.to_string();
    let reply = call_write(
        ctx,
        "XAUTOCLAIM",
        &[
            stream.as_bytes(),
            group.as_bytes(),
            consumer.as_bytes(),
            b"0",
            start.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ],
    )?;
    let RedisValue::Array(parts) = reply else {
        return Ok(Autoclaimed {
            next: "0-0".into(),
            ..Autoclaimed::default()
        });
    };
    let deleted = match parts.get(2) {
        Some(RedisValue::Array(ids)) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    Ok(Autoclaimed {
        next: parts.first().and_then(text).unwrap_or_else(|| "0-0".into()),
        entries: parts.get(1).map(parse_entries).unwrap_or_default(),
        deleted,
    })
}

/// Acknowledges entries; returns how many were pending.
pub fn ack(ctx: &Context, stream: &str, group: &str, ids: &[&str]) -> Result<i64, String> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut args: Vec<&[u8]> = vec![stream.as_bytes(), group.as_bytes()];
    args.extend(ids.iter().map(|id| id.as_bytes()));
    match call_write(ctx, "XACK", &args)? {
        RedisValue::Integer(n) => Ok(n),
        _ => Ok(0),
    }
}

/// Appends an entry; returns its ID.
pub fn add(ctx: &Context, stream: &str, fields: &[(&[u8], &[u8])]) -> Result<String, String> {
    let mut args: Vec<&[u8]> = vec![stream.as_bytes(), b"*"];
    for (k, v) in fields {
        args.push(k);
        args.push(v);
    }
    let reply = call_write(ctx, "XADD", &args)?;
    text(&reply).ok_or_else(|| "XADD gave no ID".into())
}

/// Copies an entry to the dead-letter stream `dlq`, unchanged, plus `reason`, `source_stream` and
/// `source_id`; then, with a `group` that keeps a pending list, acknowledges it. Both happen under
/// the caller's one lock hold.
pub fn dead_letter(
    ctx: &Context,
    stream: &str,
    dlq: &str,
    group: Option<&str>,
    entry: &RawEntry,
    reason: &str,
) -> Result<String, String> {
    let mut fields: Vec<(&[u8], &[u8])> = entry
        .fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_slice(), b"reason" | b"source_stream" | b"source_id"))
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    fields.push((b"reason", one_line.as_bytes()));
    fields.push((b"source_stream", stream.as_bytes()));
    fields.push((b"source_id", entry.id.as_bytes()));
    let id = add(ctx, dlq, &fields)?;
    let Some(group) = group else {
        return Ok(id);
    };
    // The copy is written: a failed acknowledgement must not make the caller write it again.
    if let Err(e) = ack(ctx, stream, group, &[entry.id.as_str()]) {
        crate::host::logging::warning(&format!("XACK of dead-lettered {} failed: {e}", entry.id));
    }
    Ok(id)
}

/// The stream's last generated ID (`0-0` when it does not exist).
pub fn last_generated_id(ctx: &Context, stream: &str) -> String {
    let Ok(RedisValue::Array(fields)) = call_read(ctx, "XINFO", &[b"STREAM", stream.as_bytes()])
    else {
        return "0-0".into();
    };
    fields
        .chunks(2)
        .find_map(|p| match p {
            [k, v] if text(k).as_deref() == Some("last-generated-id") => text(v),
            _ => None,
        })
        .unwrap_or_else(|| "0-0".into())
}

/// How many entries were ever added to the stream (`None` when it does not exist).
pub fn entries_added(ctx: &Context, stream: &str) -> Option<i64> {
    let Ok(RedisValue::Array(fields)) = call_read(ctx, "XINFO", &[b"STREAM", stream.as_bytes()])
    else {
        return None;
    };
    fields.chunks(2).find_map(|p| match p {
        [k, RedisValue::Integer(n)] if text(k).as_deref() == Some("entries-added") => Some(*n),
        _ => None,
    })
}

/// The lowest pending ID of the group, if any entry is pending.
pub fn lowest_pending(ctx: &Context, stream: &str, group: &str) -> Option<String> {
    let Ok(RedisValue::Array(summary)) =
        call_read(ctx, "XPENDING", &[stream.as_bytes(), group.as_bytes()])
    else {
        return None;
    };
    match summary.first() {
        Some(RedisValue::Integer(n)) if *n > 0 => summary.get(1).and_then(text),
        _ => None,
    }
}

/// Context flags (role, loading, OOM, ...).
pub fn flags(ctx: &Context) -> u32 {
    match unsafe { raw::RedisModule_GetContextFlags } {
        Some(f) => (unsafe { f(ctx.ctx) }) as u32,
        None => 0,
    }
}

/// Adds the entry on the caller's context (so it is part of the caller's MULTI or script), in
/// `REDIS_DB`, refusing when Redis is out of memory.
pub fn add_as_caller(ctx: &Context, stream_name: &str, payload: &[u8]) -> Result<String, String> {
    let db = settings::current().int(Key::RedisDb) as i32;
    let previous = unsafe { raw::RedisModule_GetSelectedDb.map(|f| f(ctx.ctx)) };
    if let Some(select) = unsafe { raw::RedisModule_SelectDb } {
        unsafe { select(ctx.ctx, db) };
    }
    let opts = CallOptionsBuilder::new()
        .replicate()
        .verify_oom()
        .errors_as_replies()
        .build();
    let args: [&[u8]; 4] = [stream_name.as_bytes(), b"*", b"value", payload];
    let res: CallResult = ctx.call_ext("XADD", &opts, &args[..]);
    if let (Some(select), Some(prev)) = (unsafe { raw::RedisModule_SelectDb }, previous) {
        unsafe { select(ctx.ctx, prev) };
    }
    match res {
        Ok(reply) => text(&value(&reply)).ok_or_else(|| "XADD gave no entry ID".to_string()),
        Err(e) => Err(e.to_utf8_string().unwrap_or_else(|| "XADD failed".into())),
    }
}
/// Runs `body` with database `db` selected on `ctx`, then selects `back`; `None` when the server
/// cannot select a database.
pub fn in_db<T>(ctx: &Context, db: i32, back: i32, body: impl FnOnce(&Context) -> T) -> Option<T> {
    let select = unsafe { raw::RedisModule_SelectDb }?;
    unsafe { select(ctx.ctx, db) };
    let out = body(ctx);
    unsafe { select(ctx.ctx, back) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: &str, fields: &[(&str, &[u8])]) -> RawEntry {
        RawEntry {
            id: id.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn a_claim_holds_its_entries_in_one_buffer_as_they_were_read() {
        let entries = vec![
            raw("1-0", &[("value", b"{\"a\":1}"), ("extra", b"")]),
            // A pending entry deleted from the stream comes back without fields.
            raw("2-0", &[]),
            raw("3-7", &[("payload", b"\0\r\n\xff")]),
        ];
        let claimed = Claimed::from(entries.clone());
        assert_eq!(claimed.len(), 3);
        assert_eq!(claimed.first().map(|e| e.id), Some("1-0"));
        assert_eq!(claimed.to_entries(), entries);
        for (c, e) in claimed.iter().zip(&entries) {
            assert_eq!(c.size(), e.size());
            assert_eq!(c.to_raw(false).id, e.id);
            assert!(c.to_raw(false).fields.is_empty());
        }
        assert!(Claimed::default().is_empty());
    }

    /// The RESP2 text a server sends for an `XREADGROUP` of one stream.
    fn resp(stream: &str, entries: &[RawEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        let bulk = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        };
        out.extend_from_slice(b"*1\r\n*2\r\n");
        bulk(&mut out, stream.as_bytes());
        out.extend_from_slice(format!("*{}\r\n", entries.len()).as_bytes());
        for e in entries {
            out.extend_from_slice(b"*2\r\n");
            bulk(&mut out, e.id.as_bytes());
            if e.fields.is_empty() {
                out.extend_from_slice(b"*-1\r\n");
            } else {
                out.extend_from_slice(format!("*{}\r\n", 2 * e.fields.len()).as_bytes());
                for (k, v) in &e.fields {
                    bulk(&mut out, k);
                    bulk(&mut out, v);
                }
            }
        }
        out
    }

    #[test]
    fn a_claim_is_read_from_the_reply_text_exactly_as_from_its_elements() {
        let entries = vec![
            raw(
                "1700000000000-0",
                &[("value", b"{\"a\":1}"), ("extra", b"")],
            ),
            raw("1700000000000-1", &[]),
            raw("1700000000001-12", &[("payload", b"\0\r\n\xff$3\r\n*")]),
        ];
        let text = resp("userdata-stream:{3}", &entries);
        let mut claimed = Claimed::default();
        assert_eq!(claimed.read_resp(&text), Some(()));
        assert_eq!(claimed, Claimed::from(entries.clone()));
        // Nothing new: a nil reply or no entries.
        for empty in [&b"*-1\r\n"[..], b"*0\r\n", &resp("s", &[])] {
            let mut c = Claimed::default();
            assert_eq!(c.read_resp(empty), Some(()), "{empty:?}");
            assert!(c.is_empty());
        }
    }

    #[test]
    fn reply_text_cut_short_or_malformed_is_refused_without_a_panic() {
        let text = resp("s", &[raw("1-0", &[("value", b"xyz")]), raw("2-0", &[])]);
        for cut in 0..text.len() {
            let mut c = Claimed::default();
            assert_eq!(c.read_resp(&text[..cut]), None, "cut at {cut}");
        }
        let mut longer = text.clone();
        longer.extend_from_slice(b"*0\r\n");
        let bad: [&[u8]; 9] = [
            &longer,
            b"+OK\r\n",
            b"*2\r\n",
            b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*1\r\n$1\r\nk\r\n",
            b"*1\r\n*2\r\n$1\r\ns\r\n*99999999999999999999\r\n",
            b"*1\r\n*2\r\n$1\r\ns\r\n*9223372036854775807\r\n",
            b"*1\r\n*2\r\n$18446744073709551615\r\ns\r\n",
            b"*1\r\n*2\r\n$-5\r\ns\r\n",
            b"*1\r\n*2\r\n$1\r\nsXX*0\r\n",
        ];
        for b in bad {
            let mut c = Claimed::default();
            assert_eq!(c.read_resp(b), None, "{b:?}");
        }
    }

    #[test]
    fn an_id_that_is_not_utf8_is_kept_readable() {
        let mut claimed = Claimed::default();
        claimed.start_entry(b"1-\xff");
        claimed.push_field(b"value", b"x");
        assert_eq!(claimed.first().map(|e| e.id), Some("1-\u{fffd}"));
        let fields: Vec<_> = claimed
            .iter()
            .flat_map(|e| e.fields().collect::<Vec<_>>())
            .collect();
        assert_eq!(fields, [(&b"value"[..], &b"x"[..])]);
    }
}
