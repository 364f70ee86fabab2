//! Column types as Snowflake describes them, and a hash value converted to one.
//!
//! A hash holds bytes; a table holds typed values. Each mapped value is checked and rewritten here,
//! in Rust, into one canonical text per type, which the MERGE turns into the column's type with an
//! explicit format ([`Type::format`]). A value that cannot become its column's type is refused here
//! with the reason, so the change it belongs to is dead-lettered alone instead of failing the
//! statement — and with it every other change of the batch.
//!
//! What a value may look like, per type (a mapped field missing from the hash is SQL `NULL`):
//!
//! | column type | accepted | sent as |
//! |---|---|---|
//! | `NUMBER(p,s)` and its synonyms | decimal text, optional sign, fraction and exponent; rounded half away from zero to `s` places; at most `p-s` integer digits | `-123.45` |
//! | `FLOAT`, `DOUBLE`, `REAL` | decimal or exponent text, `NaN`, `inf`, `-inf` | shortest round-trip text |
//! | `VARCHAR(n)`, `TEXT`, `STRING`, `CHAR` | valid UTF-8, at most `n` characters | as is |
//! | `BOOLEAN` | `true/false`, `t/f`, `yes/no`, `y/n`, `on/off`, `1/0`, any case | `true`, `false` |
//! | `DATE` | `YYYY-MM-DD` | `YYYY-MM-DD` |
//! | `TIME` | `HH:MM[:SS[.fraction]]` | `HH24:MI:SS.FF9` |
//! | `TIMESTAMP_NTZ` | ISO 8601: `YYYY-MM-DD[( |T)HH:MM[:SS[.fraction]]][Z|±HH:MM]`; with an offset, converted to UTC | `YYYY-MM-DD HH24:MI:SS.FF9` |
//! | `TIMESTAMP_LTZ`, `TIMESTAMP_TZ` | the same; without an offset, UTC | `YYYY-MM-DD HH24:MI:SS.FF9 TZH:TZM` |
//! | `VARIANT` / `OBJECT` / `ARRAY` | a JSON document (an object / an array) | the JSON text |
//! | `BINARY(n)` | any bytes, at most `n` | hexadecimal |
//!
//! Epoch numbers are not read as timestamps (is `20240102` a date or a second?): write ISO 8601.
//! Other types (`GEOGRAPHY`, `VECTOR`, structured types) cannot be mapped; the mapping is refused
//! when the table is first described.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// A column's type, from `DESCRIBE TABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Number { precision: u8, scale: u8 },
    Float,
    Text { max_chars: u32 },
    Boolean,
    Date,
    Time,
    TimestampNtz,
    TimestampLtz,
    TimestampTz,
    Variant,
    Object,
    Array,
    Binary { max_bytes: u32 },
}

/// Snowflake's longest string and binary (16 MB and 8 MB), the defaults of an unsized type.
const MAX_TEXT_CHARS: u32 = 16_777_216;
const MAX_BINARY_BYTES: u32 = 8_388_608;

/// The formats of the canonical texts; the MERGE passes them to `TO_DATE`, `TO_TIMESTAMP_*`, ...
pub const DATE_FORMAT: &str = "YYYY-MM-DD";
pub const TIME_FORMAT: &str = "HH24:MI:SS.FF9";
pub const NTZ_FORMAT: &str = "YYYY-MM-DD HH24:MI:SS.FF9";
pub const TZ_FORMAT: &str = "YYYY-MM-DD HH24:MI:SS.FF9 TZH:TZM";

impl Type {
    /// Reads a type as `DESCRIBE TABLE` shows it (`NUMBER(38,0)`, `VARCHAR(16777216)`,
    /// `TIMESTAMP_NTZ(9)`) or as a synonym (`INT`, `TEXT`, `DOUBLE`, `DATETIME`).
    pub fn parse(described: &str) -> Result<Type, String> {
        let t = described.trim().to_ascii_uppercase();
        let (name, args) = match t.find('(') {
            Some(i) if t.ends_with(')') => (t[..i].trim(), Some(&t[i + 1..t.len() - 1])),
            Some(_) => return Err(format!("cannot read column type '{described}'")),
            None => (t.as_str(), None),
        };
        let nums: Vec<u32> = match args {
            Some(a) => a
                .split(',')
                .map(|n| n.trim().parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("cannot read column type '{described}'"))?,
            None => Vec::new(),
        };
        let size = |default: u32| nums.first().copied().unwrap_or(default);
        let ty = match name {
            "NUMBER" | "DECIMAL" | "NUMERIC" => {
                let precision = size(38).min(38) as u8;
                let scale = nums.get(1).copied().unwrap_or(0).min(precision as u32) as u8;
                Type::Number { precision, scale }
            }
            "INT" | "INTEGER" | "BIGINT" | "SMALLINT" | "TINYINT" | "BYTEINT" => Type::Number {
                precision: 38,
                scale: 0,
            },
            "FLOAT" | "FLOAT4" | "FLOAT8" | "DOUBLE" | "DOUBLE PRECISION" | "REAL" => Type::Float,
            "VARCHAR" | "TEXT" | "STRING" | "CHAR" | "CHARACTER" | "NCHAR" | "NVARCHAR"
            | "NVARCHAR2" | "CHAR VARYING" | "NCHAR VARYING" => Type::Text {
                max_chars: match (name, nums.first()) {
                    ("CHAR" | "CHARACTER" | "NCHAR", None) => 1,
                    _ => size(MAX_TEXT_CHARS),
                },
            },
            "BOOLEAN" => Type::Boolean,
            "DATE" => Type::Date,
            "TIME" => Type::Time,
            "TIMESTAMP_NTZ" | "DATETIME" | "TIMESTAMP" | "TIMESTAMPNTZ" | "TIMESTAMP WITHOUT TIME ZONE" => {
                Type::TimestampNtz
            }
            "TIMESTAMP_LTZ" | "TIMESTAMPLTZ" | "TIMESTAMP WITH LOCAL TIME ZONE" => Type::TimestampLtz,
            "TIMESTAMP_TZ" | "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => Type::TimestampTz,
            "VARIANT" => Type::Variant,
            "OBJECT" if args.is_none() => Type::Object,
            "ARRAY" if args.is_none() => Type::Array,
            "BINARY" | "VARBINARY" => Type::Binary {
                max_bytes: size(MAX_BINARY_BYTES),
            },
            _ => {
                return Err(format!(
                    "column type '{described}' cannot be mapped (see docs/mappings.md for the types that can)"
                ))
            }
        };
        Ok(ty)
    }

    /// Checks `value` and rewrites it into this type's canonical text.
    pub fn convert(&self, value: &[u8]) -> Result<String, String> {
        match *self {
            Type::Binary { max_bytes } => {
                if value.len() > max_bytes as usize {
                    return Err(format!(
                        "{} bytes do not fit BINARY({max_bytes})",
                        value.len()
                    ));
                }
                Ok(value.iter().map(|b| format!("{b:02X}")).collect())
            }
            _ => {
                let text = std::str::from_utf8(value).map_err(|_| {
                    "is not valid UTF-8 (only BINARY columns take any bytes)".to_string()
                })?;
                self.convert_text(text)
            }
        }
    }

    fn convert_text(&self, text: &str) -> Result<String, String> {
        match *self {
            Type::Number { precision, scale } => number(text, precision, scale),
            Type::Float => float(text),
            Type::Text { max_chars } => {
                let chars = text.chars().count();
                if chars > max_chars as usize {
                    return Err(format!(
                        "{chars} characters do not fit VARCHAR({max_chars})"
                    ));
                }
                Ok(text.to_string())
            }
            Type::Boolean => boolean(text),
            Type::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .ok()
                .filter(|_| text.trim().len() == 10)
                .map(|d| d.format("%Y-%m-%d").to_string())
                .ok_or_else(|| "is not a date (YYYY-MM-DD)".to_string()),
            Type::Time => ["%H:%M:%S%.f", "%H:%M"]
                .iter()
                .find_map(|f| NaiveTime::parse_from_str(text.trim(), f).ok())
                .map(|t| t.format("%H:%M:%S%.9f").to_string())
                .ok_or_else(|| "is not a time (HH:MM[:SS[.fraction]])".to_string()),
            Type::TimestampNtz => {
                let (at, offset) = timestamp(text)?;
                let utc = match offset {
                    Some(o) => o
                        .from_local_datetime(&at)
                        .single()
                        .map(|t| t.with_timezone(&Utc).naive_utc())
                        .ok_or("is not a valid time")?,
                    None => at,
                };
                Ok(utc.format("%Y-%m-%d %H:%M:%S%.9f").to_string())
            }
            Type::TimestampLtz | Type::TimestampTz => {
                let (at, offset) = timestamp(text)?;
                let offset = offset.unwrap_or_else(|| FixedOffset::east_opt(0).expect("UTC"));
                let t: DateTime<FixedOffset> = offset
                    .from_local_datetime(&at)
                    .single()
                    .ok_or("is not a valid time")?;
                Ok(t.format("%Y-%m-%d %H:%M:%S%.9f %:z").to_string())
            }
            Type::Variant | Type::Object | Type::Array => {
                let doc: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| format!("is not JSON ({e})"))?;
                match (self, &doc) {
                    (Type::Object, v) if !v.is_object() => Err("is not a JSON object".into()),
                    (Type::Array, v) if !v.is_array() => Err("is not a JSON array".into()),
                    _ => Ok(text.to_string()),
                }
            }
            Type::Binary { .. } => unreachable!("binary values are converted as bytes"),
        }
    }

    /// The explicit format the MERGE converts this type's canonical text with, if any.
    pub fn format(&self) -> Option<&'static str> {
        match self {
            Type::Date => Some(DATE_FORMAT),
            Type::Time => Some(TIME_FORMAT),
            Type::TimestampNtz => Some(NTZ_FORMAT),
            Type::TimestampLtz | Type::TimestampTz => Some(TZ_FORMAT),
            _ => None,
        }
    }
}

/// A decimal in canonical form for `NUMBER(precision, scale)`.
fn number(text: &str, precision: u8, scale: u8) -> Result<String, String> {
    let bad = || format!("is not a number that fits NUMBER({precision},{scale})");
    let t = text.trim();
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) || exponent.abs() > 100
    {
        return Err(bad());
    }
    // Digits with the decimal point after `point` of them.
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let mut point = int.len() as i32 + exponent;
    if point < 0 {
        digits.splice(0..0, std::iter::repeat_n(0, (-point) as usize));
        point = 0;
    }
    while (digits.len() as i32) < point {
        digits.push(0);
    }
    let mut point = point as usize;
    // Round half away from zero to `scale` places, as Snowflake does.
    let keep = point + scale as usize;
    if digits.len() > keep {
        let round_up = digits[keep] >= 5;
        digits.truncate(keep);
        if round_up {
            // Add one in the last kept place, carrying; a carry out of the first digit adds one.
            match digits.iter().rposition(|d| *d != 9) {
                Some(i) => {
                    digits[i] += 1;
                    digits[i + 1..].iter_mut().for_each(|d| *d = 0);
                }
                None => {
                    digits.iter_mut().for_each(|d| *d = 0);
                    digits.insert(0, 1);
                    point += 1;
                }
            }
        }
    }
    let (int_digits, frac_digits) = digits.split_at(point);
    let int_text: String = int_digits
        .iter()
        .map(|d| (b'0' + d) as char)
        .collect::<String>()
        .trim_start_matches('0')
        .to_string();
    let frac_text: String = frac_digits.iter().map(|d| (b'0' + d) as char).collect();
    let frac_text = frac_text.trim_end_matches('0');
    if int_text.len() > (precision - scale) as usize {
        return Err(format!(
            "has {} integer digits, more than NUMBER({precision},{scale}) holds",
            int_text.len()
        ));
    }
    let zero = int_text.is_empty() && frac_text.is_empty();
    let mut out = String::new();
    if negative && !zero {
        out.push('-');
    }
    out.push_str(if int_text.is_empty() { "0" } else { &int_text });
    if !frac_text.is_empty() {
        out.push('.');
        out.push_str(frac_text);
    }
    Ok(out)
}

fn float(text: &str) -> Result<String, String> {
    let t = text.trim();
    let v: f64 = t
        .parse()
        .map_err(|_| "is not a floating-point number".to_string())?;
    Ok(if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:?}")
    })
}

fn boolean(text: &str) -> Result<String, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Ok("true".into()),
        "false" | "f" | "no" | "n" | "off" | "0" => Ok("false".into()),
        _ => Err("is not a boolean (true/false, yes/no, on/off, 1/0)".into()),
    }
}

/// An ISO 8601 date or date-time and its offset, if it has one.
fn timestamp(text: &str) -> Result<(NaiveDateTime, Option<FixedOffset>), String> {
    let bad = || {
        "is not an ISO 8601 timestamp (YYYY-MM-DD[ HH:MM[:SS[.fraction]]][Z|+HH:MM])".to_string()
    };
    let t = text.trim();
    if t.len() < 10 {
        return Err(bad());
    }
    // An offset can only follow the time, which starts after the date's 10 characters.
    let (local, offset) = if let Some(rest) = t.strip_suffix(['Z', 'z']) {
        (rest, Some(FixedOffset::east_opt(0).expect("UTC")))
    } else {
        match t[10..].rfind(['+', '-']) {
            Some(i) => {
                let at = 10 + i;
                let off = &t[at..];
                let digits: String = off[1..].chars().filter(|c| *c != ':').collect();
                let (h, m) = match digits.len() {
                    2 => (digits.parse::<i32>().ok(), Some(0)),
                    4 => (
                        digits[..2].parse::<i32>().ok(),
                        digits[2..].parse::<i32>().ok(),
                    ),
                    _ => (None, None),
                };
                let (Some(h), Some(m)) = (h, m) else {
                    return Err(bad());
                };
                let secs = (h * 3600 + m * 60) * if off.starts_with('-') { -1 } else { 1 };
                (&t[..at], Some(FixedOffset::east_opt(secs).ok_or_else(bad)?))
            }
            None => (t, None),
        }
    };
    let local = local.trim_end();
    if local.len() == 10 {
        let d = NaiveDate::parse_from_str(local, "%Y-%m-%d").map_err(|_| bad())?;
        return Ok((d.and_hms_opt(0, 0, 0).ok_or_else(bad)?, offset));
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(local, f).ok())
    .filter(|_| local.as_bytes().get(4) == Some(&b'-'))
    .map(|at| (at, offset))
    .ok_or_else(bad)
}

/// One column of a table, as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: Type,
    pub nullable: bool,
}

/// A mapping's columns resolved against its table: the key column and each mapped column, in the
/// mapping's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub key: Column,
    pub columns: Vec<Column>,
}

/// Finds the mapping's columns among the table's (`described`: name, type text, nullable), so a
/// missing column or an unmappable type stops the mapping with a clear reason before any change is
/// written.
pub fn resolve(
    mapping: &super::Mapping,
    described: &[(String, String, bool)],
) -> Result<Resolved, String> {
    let find = |name: &str| -> Result<Column, String> {
        let (n, t, nullable) = described
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("table {} has no column {name}", mapping.table))?;
        let ty = Type::parse(t).map_err(|e| format!("{}.{n}: {e}", mapping.table))?;
        Ok(Column {
            name: n.to_ascii_uppercase(),
            ty,
            nullable: *nullable,
        })
    };
    Ok(Resolved {
        key: find(&mapping.key_column)?,
        columns: mapping
            .columns
            .iter()
            .map(|c| find(&c.column))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(ty: &str, v: &str) -> Result<String, String> {
        Type::parse(ty).unwrap().convert(v.as_bytes())
    }

    #[test]
    fn described_types_and_synonyms_are_read() {
        assert_eq!(
            Type::parse("NUMBER(38,0)"),
            Ok(Type::Number {
                precision: 38,
                scale: 0
            })
        );
        assert_eq!(
            Type::parse("number(10, 2)"),
            Ok(Type::Number {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(
            Type::parse("VARCHAR(16777216)"),
            Ok(Type::Text {
                max_chars: 16_777_216
            })
        );
        assert_eq!(Type::parse("CHAR"), Ok(Type::Text { max_chars: 1 }));
        assert_eq!(Type::parse("TIMESTAMP_NTZ(9)"), Ok(Type::TimestampNtz));
        assert_eq!(Type::parse("DOUBLE"), Ok(Type::Float));
        assert_eq!(Type::parse("BINARY(8)"), Ok(Type::Binary { max_bytes: 8 }));
        for bad in [
            "GEOGRAPHY",
            "VECTOR(INT, 3)",
            "OBJECT(a INT)",
            "NUMBER(x)",
            "NUMBER(38",
        ] {
            assert!(Type::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_are_rounded_half_away_from_zero_and_must_fit() {
        let n = |v| conv("NUMBER(10,2)", v);
        assert_eq!(n("42"), Ok("42".into()));
        assert_eq!(n(" -0042.50 "), Ok("-42.5".into()));
        assert_eq!(n("1.005"), Ok("1.01".into()));
        assert_eq!(n("-1.005"), Ok("-1.01".into()));
        assert_eq!(
            n("99999999.995").unwrap_err(),
            "has 9 integer digits, more than NUMBER(10,2) holds"
        );
        assert_eq!(n("1.5e3"), Ok("1500".into()));
        assert_eq!(n("25e-2"), Ok("0.25".into()));
        assert_eq!(n("-0.001"), Ok("0".into()));
        assert_eq!(n(".5"), Ok("0.5".into()));
        assert_eq!(conv("NUMBER(38,0)", "0.5"), Ok("1".into()));
        assert_eq!(conv("NUMBER(38,0)", "9.5"), Ok("10".into()));
        assert_eq!(
            conv("INT", "12345678901234567890123"),
            Ok("12345678901234567890123".into())
        );
        for bad in [
            "", "-", ".", "1.2.3", "12a", "0x10", "1e", "1e999", "NaN", "1 000",
        ] {
            assert!(n(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn floats_booleans_and_text() {
        assert_eq!(conv("FLOAT", "0.1"), Ok("0.1".into()));
        assert_eq!(conv("FLOAT", "1e300"), Ok("1e300".into()));
        assert_eq!(conv("FLOAT", "-inf"), Ok("-inf".into()));
        assert_eq!(conv("FLOAT", "nan"), Ok("NaN".into()));
        assert!(conv("FLOAT", "one").is_err());
        assert_eq!(conv("BOOLEAN", "Yes"), Ok("true".into()));
        assert_eq!(conv("BOOLEAN", "0"), Ok("false".into()));
        assert!(conv("BOOLEAN", "maybe").is_err());
        assert_eq!(conv("VARCHAR(3)", "héé"), Ok("héé".into()));
        assert!(conv("VARCHAR(3)", "four").is_err());
        assert!(Type::Text { max_chars: 9 }.convert(b"a\xffb").is_err());
        assert_eq!(
            Type::Binary { max_bytes: 3 }.convert(b"a\xff\0"),
            Ok("61FF00".into())
        );
        assert!(Type::Binary { max_bytes: 2 }.convert(b"abc").is_err());
    }

    #[test]
    fn dates_times_and_timestamps_take_iso_8601_only() {
        assert_eq!(conv("DATE", "2024-02-29"), Ok("2024-02-29".into()));
        for bad in ["2023-02-29", "02/03/2024", "2024-2-3", "20240203"] {
            assert!(conv("DATE", bad).is_err(), "{bad}");
        }
        assert_eq!(conv("TIME", "07:05"), Ok("07:05:00.000000000".into()));
        assert_eq!(
            conv("TIME(9)", "23:59:59.5"),
            Ok("23:59:59.500000000".into())
        );
        let ntz = |v| conv("TIMESTAMP_NTZ(9)", v);
        assert_eq!(
            ntz("2024-01-02"),
            Ok("2024-01-02 00:00:00.000000000".into())
        );
        assert_eq!(
            ntz("2024-01-02T03:04:05.123"),
            Ok("2024-01-02 03:04:05.123000000".into())
        );
        assert_eq!(
            ntz("2024-01-02 03:04:05+02:00"),
            Ok("2024-01-02 01:04:05.000000000".into())
        );
        assert_eq!(
            ntz("2024-01-01T23:30:00-0100"),
            Ok("2024-01-02 00:30:00.000000000".into())
        );
        assert_eq!(
            ntz("2024-01-02T03:04Z"),
            Ok("2024-01-02 03:04:00.000000000".into())
        );
        let tz = |v| conv("TIMESTAMP_TZ(9)", v);
        assert_eq!(
            tz("2024-01-02 03:04:05+05:30"),
            Ok("2024-01-02 03:04:05.000000000 +05:30".into())
        );
        assert_eq!(
            tz("2024-01-02 03:04:05"),
            Ok("2024-01-02 03:04:05.000000000 +00:00".into())
        );
        for bad in [
            "1704164645",
            "2024-01-02 25:00",
            "2024-01-02 03:04+5",
            "yesterday",
            "2024-01-02 03:04:05 UTC",
        ] {
            assert!(ntz(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_columns_take_json_of_their_kind() {
        assert_eq!(conv("VARIANT", "[1,{\"a\":2}]"), Ok("[1,{\"a\":2}]".into()));
        assert_eq!(conv("VARIANT", "\"s\""), Ok("\"s\"".into()));
        assert!(conv("VARIANT", "{bad").is_err());
        assert!(conv("OBJECT", "[1]").is_err());
        assert!(conv("ARRAY", "{}").is_err());
        assert_eq!(conv("ARRAY", "[]"), Ok("[]".into()));
    }

    #[test]
    fn a_mapping_is_resolved_against_its_table() {
        let m = crate::mapping::Mappings::parse(
            "mappings: [{name: p, key_prefix: 'p:', table: PERSONS, key_column: person_id, columns: {age: AGE}}]",
            "m.yaml",
        )
        .unwrap()
        .mappings
        .remove(0);
        let table = |age: &str| {
            vec![
                ("PERSON_ID".to_string(), "NUMBER(38,0)".to_string(), false),
                ("AGE".to_string(), age.to_string(), true),
            ]
        };
        let r = resolve(&m, &table("NUMBER(3,0)")).unwrap();
        assert_eq!(
            r.key.ty,
            Type::Number {
                precision: 38,
                scale: 0
            }
        );
        assert!(!r.key.nullable && r.columns[0].nullable);
        assert!(resolve(&m, &table("GEOGRAPHY"))
            .unwrap_err()
            .contains("PERSONS.AGE"));
        assert_eq!(
            resolve(&m, &table("INT")[..1]).unwrap_err(),
            "table PERSONS has no column AGE"
        );
    }
}
