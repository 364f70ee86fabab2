//! The header of a Redis dump file: checked before a server is started on it.
//!
//! A dump starts with `REDIS` and a four-digit format version (Valkey 9: `VALKEY` and three digits), then auxiliary fields (`0xFA`, a name
//! and a value) such as `redis-ver` and `ctime` (when the dump was made). Reading them lets the tool
//! refuse a file that is not a dump with a clear line instead of a server's failure, say which Redis
//! wrote it, and date legacy entries that carry no time of their own ([`super::ids`]). Only the
//! header is read; the data itself is left to `redis-server` (see [`super`]).

use std::io::Read;
use std::path::Path;

/// The newest RDB format this tool has been tested with (Redis 7.4 and 8 write 12).
pub const NEWEST_KNOWN_VERSION: u32 = 12;

/// The newest Valkey RDB format this tool has been tested with (Valkey 9 writes 80).
pub const NEWEST_KNOWN_VALKEY_VERSION: u32 = 80;

/// Opcode of an auxiliary field.
const AUX: u8 = 0xFA;

/// What the header says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The RDB format version (9: Redis 5–6, 10: 7.0, 11: 7.2, 12: 7.4 and 8; 80: Valkey 9).
    pub version: u32,
    /// Whether Valkey wrote it (`VALKEY` signature).
    pub valkey: bool,
    /// `redis-ver` (or `valkey-ver`) of the server that wrote it.
    pub redis_version: Option<String>,
    /// `ctime`: Unix seconds when the dump was made.
    pub ctime: Option<i64>,
}

/// Reads the header of the file at `path` (only its first kilobytes).
pub fn read_header(path: &Path) -> Result<Header, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut head = Vec::with_capacity(4096);
    file.by_ref()
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read: {e}"))?;
    parse_header(&head)
}

/// Parses the header from the first bytes of a dump.
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let magic = bytes.get(..9).ok_or("not a Redis dump file (too short)")?;
    let (valkey, digits) = if magic.starts_with(b"REDIS") {
        (false, &magic[5..9])
    } else if magic.starts_with(b"VALKEY") {
        (true, &magic[6..9])
    } else {
        return Err("not a Redis dump file (no REDIS or VALKEY signature)".into());
    };
    let version = std::str::from_utf8(digits)
        .ok()
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or("not a Redis dump file (bad version number)")?;
    let mut header = Header {
        version,
        valkey,
        ..Header::default()
    };
    let mut at = 9;
    while bytes.get(at) == Some(&AUX) {
        let Some((name, next)) = read_string(bytes, at + 1) else {
            break;
        };
        let Some((value, next)) = read_string(bytes, next) else {
            break;
        };
        match name.as_slice() {
            b"redis-ver" | b"valkey-ver" => header.redis_version = String::from_utf8(value).ok(),
            b"ctime" => {
                header.ctime = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok())
            }
            _ => {}
        }
        at = next;
    }
    Ok(header)
}

/// One RDB string at `at`: its bytes (integers as decimal text) and the offset after it.
/// Compressed strings are not expected in a header and end the reading (`None`).
fn read_string(bytes: &[u8], at: usize) -> Option<(Vec<u8>, usize)> {
    let first = *bytes.get(at)?;
    let (len, at) = match first >> 6 {
        0 => (usize::from(first & 0x3F), at + 1),
        1 => {
            let second = *bytes.get(at + 1)?;
            (
                (usize::from(first & 0x3F) << 8) | usize::from(second),
                at + 2,
            )
        }
        2 => match first {
            0x80 => {
                let b: [u8; 4] = bytes.get(at + 1..at + 5)?.try_into().ok()?;
                (usize::try_from(u32::from_be_bytes(b)).ok()?, at + 5)
            }
            0x81 => {
                let b: [u8; 8] = bytes.get(at + 1..at + 9)?.try_into().ok()?;
                (usize::try_from(u64::from_be_bytes(b)).ok()?, at + 9)
            }
            _ => return None,
        },
        _ => {
            let (n, width) = match first & 0x3F {
                0 => (i64::from(i8::from_le_bytes([*bytes.get(at + 1)?])), 1),
                1 => {
                    let b: [u8; 2] = bytes.get(at + 1..at + 3)?.try_into().ok()?;
                    (i64::from(i16::from_le_bytes(b)), 2)
                }
                2 => {
                    let b: [u8; 4] = bytes.get(at + 1..at + 5)?.try_into().ok()?;
                    (i64::from(i32::from_le_bytes(b)), 4)
                }
                _ => return None,
            };
            return Some((n.to_string().into_bytes(), at + 1 + width));
        }
    };
    let end = at.checked_add(len)?;
    Some((bytes.get(at..end)?.to_vec(), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aux(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = vec![AUX, name.len() as u8];
        v.extend_from_slice(name);
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn reads_version_redis_version_and_ctime() {
        let mut b = b"REDIS0012".to_vec();
        b.extend(aux(b"redis-ver", &[5, b'8', b'.', b'0', b'.', b'2']));
        b.extend(aux(b"redis-bits", &[0xC0, 64]));
        // ctime as a 32-bit little-endian integer, the way Redis writes it.
        b.extend(aux(b"ctime", &[0xC2, 0x80, 0x5E, 0x08, 0x69]));
        b.extend([0xFE, 0x00]);
        let h = parse_header(&b).unwrap();
        assert_eq!(h.version, 12);
        assert_eq!(h.redis_version.as_deref(), Some("8.0.2"));
        assert_eq!(h.ctime, Some(0x6908_5E80));
    }

    #[test]
    fn a_header_without_aux_fields_still_gives_the_version() {
        let h = parse_header(b"REDIS0009\xFE\x00").unwrap();
        assert_eq!((h.version, h.ctime), (9, None));
    }

    #[test]
    fn other_files_are_refused() {
        assert!(parse_header(b"").is_err());
        assert!(parse_header(b"*1\r\n$4\r\nPING\r\n").is_err());
        assert!(parse_header(b"REDISabcd").is_err());
        assert!(parse_header(b"VALKEY+80").is_err());
    }

    #[test]
    fn truncated_aux_fields_end_the_header_without_panicking() {
        let mut b = b"REDIS0011".to_vec();
        b.extend([AUX, 0x45]);
        assert_eq!(parse_header(&b).unwrap().version, 11);
        let mut b = b"REDIS0011".to_vec();
        b.extend([AUX, 0x81, 0xFF, 0xFF]);
        assert_eq!(parse_header(&b).unwrap().version, 11);
    }

    #[test]
    fn a_valkey_dump_is_read_with_its_version_and_server() {
        let mut b = b"VALKEY080".to_vec();
        b.extend_from_slice(b"\xFA\x0Avalkey-ver\x059.1.2\xFA\x05ctime\xC2\x0D\x56\x0F\x6B");
        let h = parse_header(&b).unwrap();
        assert!(h.valkey);
        assert_eq!(h.version, 80);
        assert_eq!(h.redis_version.as_deref(), Some("9.1.2"));
        assert_eq!(h.ctime, Some(0x6B0F560D));
    }
}
