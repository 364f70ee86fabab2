//! rgsync's special `#` field: what one hash write asks the write-behind to do.
//!
//! The first character is the operation; anything after it is an acknowledgement id:
//!
//! | `#` | in Redis | in the table |
//! |---|---|---|
//! | `=` (the default, also without `#`) | written | written |
//! | `+` | written | untouched |
//! | `-` | key deleted | untouched |
//! | `~` (also a plain `DEL`) | key deleted | row deleted |
//!
//! `HSET person:1 age 42 # =6ce0c902-30c2-4ac9-8342-2f04fb359a94` asks for an acknowledgement: once the
//! change is committed (or has failed for good) the stream `{person:1}6ce0c902-…` gets
//! `status done` (or `status failed` and `error`). The `#` field itself never stays in the hash.

/// The operation of a `#` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`: write the hash to Redis and the table.
    Replicate,
    /// `+`: write the hash to Redis only.
    RedisOnly,
    /// `-`: delete the key in Redis only.
    DeleteRedisOnly,
    /// `~`: delete the key in Redis and the row in the table.
    Delete,
}

impl Op {
    /// Whether the table is changed.
    pub fn replicates(self) -> bool {
        matches!(self, Op::Replicate | Op::Delete)
    }

    /// Whether the key is deleted from Redis.
    pub fn deletes(self) -> bool {
        matches!(self, Op::DeleteRedisOnly | Op::Delete)
    }
}

/// A parsed `#` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub op: Op,
    /// The acknowledgement id, when one was given.
    pub ack: Option<String>,
}

/// Longest acknowledgement id accepted (a UUID has 36 characters).
pub const MAX_ACK_ID: usize = 128;

/// Parses the value of a `#` field.
pub fn parse(value: &[u8]) -> Result<Control, String> {
    let op = match value.first() {
        Some(b'=') => Op::Replicate,
        Some(b'+') => Op::RedisOnly,
        Some(b'-') => Op::DeleteRedisOnly,
        Some(b'~') => Op::Delete,
        _ => {
            return Err(format!(
                "the '#' field must start with '=', '+', '-' or '~' (got {})",
                shown(value)
            ))
        }
    };
    let id = &value[1..];
    if id.is_empty() {
        return Ok(Control { op, ack: None });
    }
    if id.len() > MAX_ACK_ID || !id.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the acknowledgement id after '#' must be 1-{MAX_ACK_ID} printable characters without spaces (got {})",
            shown(id)
        ));
    }
    // Checked to be ASCII just above.
    let ack = String::from_utf8_lossy(id).into_owned();
    Ok(Control { op, ack: Some(ack) })
}

/// The acknowledgement stream of a change to `key`: `{<key>}<id>`, in the key's slot.
pub fn ack_stream(key: &[u8], id: &str) -> Vec<u8> {
    let mut name = Vec::with_capacity(key.len() + id.len() + 2);
    name.push(b'{');
    name.extend_from_slice(key);
    name.push(b'}');
    name.extend_from_slice(id.as_bytes());
    name
}

/// How long an acknowledgement stream lives, as in rgsync.
pub const ACK_TTL_SECONDS: u64 = 3600;

/// A value as shown in an error: escaped, at most 40 bytes.
fn shown(value: &[u8]) -> String {
    let cut = &value[..value.len().min(40)];
    let more = if value.len() > cut.len() { "..." } else { "" };
    format!("'{}{more}'", cut.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_four_operations_of_rgsync() {
        let ops: Vec<Op> = ["=", "+", "-", "~"]
            .iter()
            .map(|v| parse(v.as_bytes()).unwrap().op)
            .collect();
        assert_eq!(
            ops,
            [
                Op::Replicate,
                Op::RedisOnly,
                Op::DeleteRedisOnly,
                Op::Delete
            ]
        );
        let replicated: Vec<bool> = ops.iter().map(|o| o.replicates()).collect();
        assert_eq!(replicated, [true, false, false, true]);
        let deleted: Vec<bool> = ops.iter().map(|o| o.deletes()).collect();
        assert_eq!(deleted, [false, false, true, true]);
    }

    #[test]
    fn an_id_after_the_operation_asks_for_an_acknowledgement() {
        let c = parse(b"=6ce0c902-30c2-4ac9-8342-2f04fb359a94").unwrap();
        assert_eq!(c.op, Op::Replicate);
        assert_eq!(
            c.ack.as_deref(),
            Some("6ce0c902-30c2-4ac9-8342-2f04fb359a94")
        );
        assert_eq!(
            ack_stream(b"person:1", c.ack.as_deref().unwrap()),
            b"{person:1}6ce0c902-30c2-4ac9-8342-2f04fb359a94".to_vec()
        );
        assert_eq!(parse(b"~").unwrap().ack, None);
    }

    #[test]
    fn anything_else_is_refused_with_the_value_escaped() {
        for bad in [&b""[..], b"x", b"=a b", b"=\r\n", b"\xff", &[b'='; 200][..]] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains('\r') && !e.contains('\n'), "{e}");
        }
        assert!(parse(b"*").unwrap_err().contains("'*'"));
    }
}
