//! Snowflake account identifiers: the forms Snowflake accepts, and the JWT account and default host
//! each becomes. Pure text rules, below both the settings (which refuse an identifier in no known
//! form) and the client (which signs and connects with it).

/// An account identifier as Snowflake's own connectors read it: the account the JWT names and the
/// default host. The forms and what they become are in `docs/snowflake.md`:
///
/// | identifier | JWT account | host |
/// |---|---|---|
/// | `xy12345` | `XY12345` | `xy12345.snowflakecomputing.com` |
/// | `xy12345.us-east-1` (`.aws`, `.azure`, `.gcp`) | `XY12345` | `xy12345.us-east-1.snowflakecomputing.com` |
/// | `myorg-myaccount` | `MYORG-MYACCOUNT` | `myorg-myaccount.snowflakecomputing.com` |
/// | `myorg-my_account` | `MYORG-MY_ACCOUNT` | `myorg-my-account.snowflakecomputing.com` |
/// | `myorg.myaccount` | `MYORG-MYACCOUNT` | `myorg-myaccount.snowflakecomputing.com` |
/// | `myorg-myaccount.privatelink` | `MYORG-MYACCOUNT` | `myorg-myaccount.privatelink.snowflakecomputing.com` |
/// | `xy12345.us-east-1.privatelink` | `XY12345` | `xy12345.us-east-1.privatelink.snowflakecomputing.com` |
/// | `myorg-myaccount-abcd1234.global` | `MYORG-MYACCOUNT` | `myorg-myaccount-abcd1234.global.snowflakecomputing.com` |
/// | `xy12345.cn-north-1.aws` | `XY12345` | `xy12345.cn-north-1.aws.snowflakecomputing.cn` |
///
/// As in snowflake-connector-python (`parse_account`, `construct_hostname`, the key-pair JWT): the
/// JWT keeps the part before the first `.` (a `.global` identifier also loses its `-<id>` suffix),
/// and the host keeps every suffix. Two differences, from Snowflake's documentation: hosts carry no
/// `_` (an account name's underscores become hyphens in URLs), and the `orgname.accountname` form
/// used in SQL is read as `orgname-accountname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountForms {
    /// The account as the JWT's `iss`/`sub` name it (upper case).
    pub jwt: String,
    /// The default host name.
    pub host: String,
}

impl AccountForms {
    pub fn parse(identifier: &str) -> AccountForms {
        let lower = identifier.trim().to_ascii_lowercase();
        let (first, rest) = match lower.split_once('.') {
            Some((f, r)) => (f.to_string(), Some(r.to_string())),
            None => (lower.clone(), None),
        };
        match rest {
            // `orgname.accountname`: the SQL form of `orgname-accountname`.
            Some(r) if !is_suffix(&r) => {
                let name = format!("{first}-{r}");
                AccountForms {
                    jwt: name.to_ascii_uppercase(),
                    host: host_of(&name, None),
                }
            }
            Some(r) => {
                let jwt = if r == "global" || r.starts_with("global.") {
                    // `<account>-<id>.global`: the id after the last hyphen is not the account.
                    first
                        .rsplit_once('-')
                        .map_or(first.as_str(), |(a, _)| a)
                        .to_string()
                } else {
                    first.clone()
                };
                AccountForms {
                    jwt: jwt.to_ascii_uppercase(),
                    host: host_of(&lower, r.split('.').next()),
                }
            }
            None => AccountForms {
                jwt: lower.to_ascii_uppercase(),
                host: host_of(&lower, None),
            },
        }
    }
}

/// Whether `identifier` is empty or in one of Snowflake's forms (see [`AccountForms`]): an account
/// (`[A-Za-z0-9][A-Za-z0-9_-]*`, no trailing `-`, at most 255 characters), then either the SQL
/// form's `.accountname` or suffixes in order — a region (`us-east-1`: letters, digits, hyphens,
/// at least one hyphen) with an optional cloud (`aws`, `azure`, `gcp`), then an optional
/// `privatelink` — or `global`. Anything else (a host name, a URL, a port, a path, `@`, spaces) is
/// refused: the identifier becomes a host name and the JWT's account.
pub fn validate_account(identifier: &str) -> Result<(), String> {
    if identifier.is_empty() {
        return Ok(());
    }
    let name = |s: &str, hyphen: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 255
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || (hyphen && *c == b'-'))
    };
    let account = identifier.split('.').next().unwrap_or_default();
    if !name(account, true) {
        return Err(format!("'{account}' is not an account name"));
    }
    let rest: Vec<String> = identifier
        .split('.')
        .skip(1)
        .map(str::to_ascii_lowercase)
        .collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let region = |s: &str| {
        s.contains('-')
            && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && !s.ends_with('-')
    };
    let ok = match rest.as_slice() {
        [] => true,
        ["global"] | ["privatelink"] => true,
        // `orgname.accountname`: an organization name has no hyphen, an account name neither.
        [acct] if !is_suffix(acct) => !account.contains('-') && name(acct, false),
        [r] | [r, "privatelink"] => region(r),
        [r, cloud] | [r, cloud, "privatelink"] => {
            region(r) && matches!(*cloud, "aws" | "azure" | "gcp")
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{identifier}' is not in one of Snowflake's account forms"
        ))
    }
}

/// Whether what follows the first `.` is a suffix of the account (region, cloud, `privatelink`,
/// `global`) rather than the account name of an `orgname.accountname` form. Region ids always carry
/// a hyphen (`us-east-1`, `east-us-2`, `us-central1`); account names never do.
fn is_suffix(rest: &str) -> bool {
    let head = rest.split('.').next().unwrap_or(rest);
    head.contains('-') || head == "privatelink" || head == "global"
}

/// `<identifier>.snowflakecomputing.com` (`.cn` in the China regions), without underscores.
fn host_of(identifier: &str, region: Option<&str>) -> String {
    let tld = if region.is_some_and(|r| r.starts_with("cn-")) {
        "cn"
    } else {
        "com"
    };
    format!("{}.snowflakecomputing.{tld}", identifier.replace('_', "-"))
}
