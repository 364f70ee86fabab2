//! Sharded streams: the names of a stream family and of the keys that go with each stream.
//!
//! With `STREAM_SHARDS=N` (N > 1) the application writes to `<STREAM>:{0}` … `<STREAM>:{N-1}`: the
//! braces are a hash tag, so on a cluster each shard stream lives in the slot of its number and the
//! shards spread over the primaries. The application picks the shard of an entry with
//! [`shard_of`]: CRC-32 (IEEE, the one of zlib, Python's `zlib.crc32`, Java's `CRC32`, Go's
//! `crc32.ChecksumIEEE`) of the user id — the id segment of the entry's key,
//! `userdata-events:<id>/visited` — modulo N. One user's entries then sit in one stream, in order,
//! and every TRACKED row is written from one stream only: a row remembers the newest entry applied to
//! it, and entry IDs of two streams are not comparable.
//!
//! Every key the module writes for a stream carries the stream's hash tag, so it lives in the
//! stream's slot and on the stream's node ([`Names`]). On a standalone server with one stream the
//! names stay as they always were.

/// The stream names of a family: the configured stream itself for one shard, else `<stream>:{i}`.
pub fn family(stream: &str, shards: u32) -> Vec<String> {
    if shards <= 1 {
        return vec![stream.to_string()];
    }
    (0..shards).map(|i| member(stream, i)).collect()
}

/// The name of shard `index` of the family of `stream`.
pub fn member(stream: &str, index: u32) -> String {
    format!("{stream}:{{{index}}}")
}

/// The shard of a user: CRC-32 (IEEE) of the user id, modulo `shards`.
pub fn shard_of(user: &[u8], shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    crc32fast::hash(user) % shards
}

/// The user id of an entry's key (`<prefix>:<id>/<kind>...`): the part between the first `:` and
/// the next `/`; the whole key when it has neither.
pub fn user_of_key(key: &str) -> &str {
    let after = key.split_once(':').map_or(key, |(_, rest)| rest);
    after.split('/').next().unwrap_or(after)
}

/// The part of a key the cluster hashes to pick its slot: the content of the first `{...}` when it
/// is not empty, else the whole key (Redis Cluster's hash tag rule).
pub fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Why a stream name cannot be used with `shards` streams (on a cluster when `cluster`), if it
/// cannot: a family's names get their hash tag from the module, and a stream's own keys must be able
/// to carry its hash tag.
pub fn refusal(stream: &str, shards: u32, cluster: bool) -> Option<String> {
    if shards > 1 && stream.contains(['{', '}']) {
        return Some(format!(
            "REDIS_STREAM '{stream}' has braces: with STREAM_SHARDS={shards} the module adds the hash tag itself (<stream>:{{i}})"
        ));
    }
    (cluster && hashed_part(stream.as_bytes()).contains(&b'}')).then(|| {
        format!(
            "REDIS_STREAM '{stream}' cannot share its hash slot with its dead-letter stream and marker on a cluster: give it a hash tag ({{...}}) or drop the '}}'"
        )
    })
}

/// Which shard of how many a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Names {
    /// The stream of the shard `index` of this stream's family (`REDIS_STREAM:{index}`).
    pub fn sibling(&self, index: u32) -> String {
        match self.shard {
            Some(s) => member(
                self.stream
                    .strip_suffix(&format!(":{{{}}}", s.index))
                    .unwrap_or(&self.stream),
                index,
            ),
            None => self.stream.clone(),
        }
    }
}

impl Shard {
    /// The first of `row_ids` that belongs to another shard, with its shard. A row id is what a
    /// row is keyed by: a record's `id` for TRACKED (the id segment of the entry's key), the
    /// `user_email` for USER.
    pub fn stray<'a>(&self, row_ids: impl IntoIterator<Item = &'a str>) -> Option<(&'a str, u32)> {
        row_ids
            .into_iter()
            .map(|id| (id, shard_of(id.as_bytes(), self.count)))
            .find(|(_, s)| *s != self.index)
    }
}

/// The names of the keys the module writes for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The stream.
    pub stream: String,
    /// Its place in the family, when `STREAM_SHARDS` > 1.
    pub shard: Option<Shard>,
    /// `None` on a standalone server with one stream (the keys keep their plain names), else the
    /// hash tag every key of the stream carries: `{i}` for a shard, `{<stream>}` for one stream on
    /// a cluster.
    tag: Option<String>,
}

impl Names {
    /// The names for `stream`; `tagged` when its keys must share its slot (a cluster, or a family).
    pub fn new(stream: &str, tagged: bool) -> Names {
        let tag = tagged.then(|| {
            let hashed = hashed_part(stream.as_bytes());
            format!("{{{}}}", String::from_utf8_lossy(hashed))
        });
        Names {
            stream: stream.to_string(),
            shard: None,
            tag,
        }
    }

    /// The names of every stream of the family of `stream` with `shards` streams; `tagged` as in
    /// [`Names::new`] (always, for a family).
    pub fn family(stream: &str, shards: u32, tagged: bool) -> Vec<Names> {
        family(stream, shards)
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut names = Names::new(name, tagged || shards > 1);
                if shards > 1 {
                    names.shard = Some(Shard {
                        index: i as u32,
                        count: shards,
                    });
                }
                names
            })
            .collect()
    }

    /// `base`, made to share the stream's slot: `<base>:{tag}`, unless it carries the tag already.
    pub fn key(&self, base: &str) -> String {
        match &self.tag {
            Some(tag) if hashed_part(base.as_bytes()) != &tag.as_bytes()[1..tag.len() - 1] => {
                format!("{base}:{tag}")
            }
            _ => base.to_string(),
        }
    }

    /// The dead-letter stream: `<stream>:dlq` (with the tag added when the stream has none).
    pub fn dlq(&self) -> String {
        self.key(&format!("{}:dlq", self.stream))
    }

    /// The restore marker: `RESTORE_MARK_KEY`, tagged.
    pub fn marker(&self, base: &str) -> String {
        self.key(base)
    }

    /// The set of legacy keys already imported into this stream.
    pub fn imported(&self) -> String {
        self.key("_wb_imported")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_is_the_stream_itself_and_more_are_tagged_by_number() {
        assert_eq!(family("userdata-stream", 1), ["userdata-stream"]);
        assert_eq!(family("s", 3), ["s:{0}", "s:{1}", "s:{2}"]);
    }

    #[test]
    fn the_shard_of_a_user_is_zlib_crc32_modulo_n() {
        // The published check value of CRC-32/ISO-HDLC (zlib's crc32).
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(shard_of(b"123456789", 7), 0xCBF4_3926 % 7);
        assert_eq!(shard_of(b"anyone", 1), 0);
        let spread: std::collections::BTreeSet<u32> = (0..200)
            .map(|i| shard_of(format!("user-{i}").as_bytes(), 8))
            .collect();
        assert_eq!(spread.len(), 8, "200 users reach every one of 8 shards");
    }

    #[test]
    fn the_user_of_a_key_is_its_id_segment() {
        assert_eq!(
            user_of_key("userdata-events:alice-1/visited/home"),
            "alice-1"
        );
        assert_eq!(user_of_key("userdata-events:bob/saved"), "bob");
        assert_eq!(user_of_key("plain"), "plain");
    }

    #[test]
    fn the_hashed_part_follows_the_cluster_rule() {
        assert_eq!(hashed_part(b"s:{3}"), b"3");
        assert_eq!(hashed_part(b"s:{3}:dlq"), b"3");
        assert_eq!(
            hashed_part(b"{}x{y}"),
            b"{}x{y}",
            "an empty first tag hashes the whole key"
        );
        assert_eq!(hashed_part(b"plain"), b"plain");
        assert_eq!(hashed_part(b"a{b"), b"a{b");
    }

    #[test]
    fn standalone_single_stream_keys_keep_their_names() {
        let n = Names::new("userdata-stream", false);
        assert_eq!(n.dlq(), "userdata-stream:dlq");
        assert_eq!(
            n.marker("_userdata_stream_restored"),
            "_userdata_stream_restored"
        );
        assert_eq!(n.imported(), "_wb_imported");
    }

    #[test]
    fn every_key_of_a_tagged_stream_hashes_like_the_stream() {
        for stream in ["s:{4}", "userdata-stream"] {
            let n = Names::new(stream, true);
            let want = hashed_part(stream.as_bytes()).to_vec();
            for key in [n.dlq(), n.marker("_userdata_stream_restored"), n.imported()] {
                assert_eq!(hashed_part(key.as_bytes()), want.as_slice(), "{key}");
            }
        }
        let n = Names::new("s:{4}", true);
        assert_eq!(n.dlq(), "s:{4}:dlq");
        assert_eq!(n.marker("_m"), "_m:{4}");
        assert_eq!(n.imported(), "_wb_imported:{4}");
        let one = Names::new("userdata-stream", true);
        assert_eq!(one.dlq(), "userdata-stream:dlq:{userdata-stream}");
    }

    #[test]
    fn a_family_knows_each_streams_shard_and_finds_stray_rows() {
        let names = Names::family("s", 4, false);
        assert_eq!(names.len(), 4);
        let third = names[2].shard.expect("a shard");
        assert_eq!((third.index, third.count), (2, 4));
        assert_eq!(names[2].dlq(), "s:{2}:dlq");
        assert_eq!(names[2].sibling(0), "s:{0}");
        let home: Vec<String> = (0..100)
            .map(|i| format!("u{i}"))
            .filter(|u| shard_of(u.as_bytes(), 4) == 2)
            .collect();
        let away = (0..100)
            .map(|i| format!("u{i}"))
            .find(|u| shard_of(u.as_bytes(), 4) != 2)
            .expect("some user is elsewhere");
        assert_eq!(third.stray([home[0].as_str(), home[1].as_str()]), None);
        assert_eq!(
            third.stray([home[0].as_str(), away.as_str()]),
            Some((away.as_str(), shard_of(away.as_bytes(), 4)))
        );
        assert_eq!(Names::family("s", 1, false)[0].shard, None);
    }

    #[test]
    fn a_family_refuses_a_stream_name_with_braces() {
        assert!(refusal("a{b}", 4, false).is_some());
        assert!(refusal("a{b}", 1, true).is_none());
        assert!(refusal("userdata-stream", 4, true).is_none());
        assert!(refusal("a}b", 1, true).is_some());
        assert!(refusal("a}b", 1, false).is_none());
    }
}
