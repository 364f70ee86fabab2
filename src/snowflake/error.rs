//! What went wrong talking to Snowflake, classified by what the caller should do about it.
//!
//! The pipeline does not care about HTTP details; it needs to know whether to try the same batch
//! again later ([`ErrorClass::Retryable`]), whether the credentials must be renewed
//! ([`ErrorClass::Reauth`]), whether the statement itself is wrong and retrying cannot help
//! ([`ErrorClass::Permanent`]), or whether the configuration is broken ([`ErrorClass::Config`]).
//! Snowflake's own `code`, `sqlState` and `message` are kept so `WB.STATUS`, `WB.PING` and the log
//! can show a line an operator can act on. Secrets never enter an error: messages are built from
//! response bodies and local facts only, never from tokens, keys or passphrases.

use std::fmt;

/// What the caller should do with a failed request. Decided in one place, [`classify`], from
/// Snowflake's error code and SQL state first; the HTTP status only speaks when the answer carries
/// neither (a proxy's 502, a 429 without a body). The table is in `docs/snowflake.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Transient: rate limiting (429), server errors (5xx), lost connections, and the statement
    /// errors Snowflake raises under load — SQL state class 57 (57014: canceled, statement timeout
    /// `000630`, too many lock waiters `000625`, `000604`/`000605`). Try again with backoff; a
    /// resubmission reuses the statement's `requestId`.
    Retryable,
    /// The JWT, token or session was rejected (401, Snowflake codes 390xxx/394xxx): renew the
    /// credentials and try again.
    Reauth,
    /// SQL state class 22 (data exception, e.g. `100035`/`22007` a timestamp not recognised): the
    /// values of the statement were refused. Whether that is one entry's fault or every statement's
    /// is for the caller to find out (see the pipeline's triage).
    Data,
    /// The request is wrong (400, 422 compilation errors, a missing table or privilege, 404 unknown
    /// handle): retrying the same statement cannot succeed until someone changes something.
    Permanent,
    /// The local configuration is unusable (missing setting, unreadable or invalid key file).
    Config,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Reauth => "re-authenticate",
            ErrorClass::Data => "data",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Config => "configuration",
        }
    }
}

/// A classified Snowflake failure. `Display` is one line: class, HTTP status, Snowflake code and
/// SQL state when known, then the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnowflakeError {
    pub class: ErrorClass,
    pub http_status: Option<u16>,
    /// Snowflake's error code, e.g. `002003` or `390144`.
    pub code: Option<String>,
    pub sql_state: Option<String>,
    pub message: String,
    /// The statement ran past its time: Snowflake's statement timeout (`000630`) or this client's
    /// request timeout while the statement was still running (it keeps running and is found again
    /// by the next submission with the same `requestId`).
    pub timed_out: bool,
}

impl SnowflakeError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> SnowflakeError {
        SnowflakeError {
            class,
            http_status: None,
            code: None,
            sql_state: None,
            message: one_line(&message.into()),
            timed_out: false,
        }
    }

    pub fn config(message: impl Into<String>) -> SnowflakeError {
        SnowflakeError::new(ErrorClass::Config, message)
    }

    pub fn retryable(message: impl Into<String>) -> SnowflakeError {
        SnowflakeError::new(ErrorClass::Retryable, message)
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    /// Whether Snowflake ran the statement and it failed (the answer names a SQL state): its
    /// outcome is known — nothing applied — unlike a lost answer or a 5xx.
    pub fn statement_failed(&self) -> bool {
        self.sql_state.is_some() && self.class != ErrorClass::Reauth
    }

    /// Classifies an HTTP error response from its status and (JSON) body.
    pub fn from_response(status: u16, body: &str) -> SnowflakeError {
        let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let field = |name: &str| -> Option<String> {
            let v = parsed.as_ref()?.get(name)?;
            match v {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let code = field("code");
        let sql_state = field("sqlState");
        let message = field("message").unwrap_or_else(|| {
            let text: String = body.chars().take(200).collect();
            if text.trim().is_empty() {
                format!("HTTP {status} {}", reason(status))
            } else {
                format!("HTTP {status} {}: {}", reason(status), text.trim())
            }
        });
        SnowflakeError {
            class: classify(status, code.as_deref(), sql_state.as_deref()),
            http_status: Some(status),
            timed_out: code.as_deref() == Some("000630"),
            code,
            sql_state,
            message: one_line(&message),
        }
    }

    /// Classifies a failure to get any HTTP response at all.
    pub fn transport(what: &str, err: &dyn fmt::Display) -> SnowflakeError {
        SnowflakeError::retryable(format!("{what}: {err}"))
    }
}

/// Snowflake errors raised by load or by a statement's own limits, not by what it says: retried.
/// `000625` too many waiters on a locked table, `000630` statement reached its statement or
/// warehouse timeout, `000604` SQL execution canceled, `000605` the statement is not executing any
/// more (its session went away), all with SQL state `57014`.
pub const RETRYABLE_CODES: &[&str] = &["000625", "000630", "000604", "000605"];

/// The one decision of what a failure means: Snowflake's code and SQL state first, then the HTTP
/// status for answers that carry neither.
pub fn classify(status: u16, code: Option<&str>, sql_state: Option<&str>) -> ErrorClass {
    if code.is_some_and(is_auth_code) {
        return ErrorClass::Reauth;
    }
    if code.is_some_and(|c| RETRYABLE_CODES.contains(&c)) {
        return ErrorClass::Retryable;
    }
    match sql_state.map(|s| s.get(..2).unwrap_or(s)) {
        // Operator intervention: canceled, timed out, server shutting down or not ready.
        Some("57") => return ErrorClass::Retryable,
        Some("22") => return ErrorClass::Data,
        _ => {}
    }
    match status {
        401 => ErrorClass::Reauth,
        408 | 429 => ErrorClass::Retryable,
        500..=599 => ErrorClass::Retryable,
        // 400, 403, 404, 405, 415, 422 and anything unexpected: the same request will fail again.
        _ => ErrorClass::Permanent,
    }
}

/// Snowflake's authentication and session error codes: the session and token family (390100
/// incorrect credentials, 390101-390104 missing or unknown session, 390111-390114 expired session or
/// token, 390144 invalid JWT, 390195 invalid id token, 390303 invalid OAuth token, 390318 expired
/// OAuth token) and the key-pair details (3943xx, e.g. 394304 expired JWT, 394307 account
/// mismatch). Other 390xxx codes (e.g. an unknown database at login) are not credential problems.
fn is_auth_code(code: &str) -> bool {
    const CODES: &[&str] = &[
        "390100", "390101", "390102", "390103", "390104", "390111", "390112", "390113", "390114",
        "390144", "390195", "390303", "390318",
    ];
    CODES.contains(&code) || (code.len() == 6 && code.starts_with("3943"))
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Messages end up in one-line logs and Redis error replies: no line breaks.
/// Characters of a message kept: Snowflake's error texts can quote the values of a statement
/// (`Timestamp '<value>' is not recognized`), and the message reaches the log and `WB.STATUS`
/// `last_error`; the code and SQL state, kept apart, say what went wrong.
pub const MESSAGE_CHARS: usize = 200;

/// `s` on one line: whitespace runs become one space, other control characters are escaped
/// (`\u{0}`), and at most [`MESSAGE_CHARS`] characters are kept (`…` marks the cut).
fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut = joined.char_indices().nth(MESSAGE_CHARS).map(|(i, _)| i);
    let kept = crate::text::escaped(&joined[..cut.unwrap_or(joined.len())]);
    match cut {
        Some(_) => kept + "…",
        None => kept,
    }
}

impl fmt::Display for SnowflakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snowflake {} error", self.class.as_str())?;
        let mut details = Vec::new();
        if let Some(s) = self.http_status {
            details.push(format!("HTTP {s}"));
        }
        if let Some(c) = &self.code {
            details.push(format!("code {c}"));
        }
        if let Some(s) = &self.sql_state {
            details.push(format!("SQL state {s}"));
        }
        if !details.is_empty() {
            write!(f, " ({})", details.join(", "))?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SnowflakeError {}

impl From<super::config::ConfigError> for SnowflakeError {
    fn from(e: super::config::ConfigError) -> SnowflakeError {
        SnowflakeError::config(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_that_quotes_data_is_cut_and_its_control_characters_escaped() {
        let value = "x".repeat(5000);
        let body = serde_json::json!({
            "code": "100035",
            "sqlState": "22007",
            "message": format!("Timestamp 'a\u{0}b\u{1b}[31m{value}' is not recognized"),
        })
        .to_string();
        let e = SnowflakeError::from_response(422, &body);
        assert_eq!(e.code.as_deref(), Some("100035"));
        assert_eq!(e.sql_state.as_deref(), Some("22007"));
        assert!(e.message.ends_with('…'), "{}", e.message);
        assert!(e.message.chars().count() <= MESSAGE_CHARS * 6 + 1);
        assert!(
            !e.message.contains(&"x".repeat(MESSAGE_CHARS)),
            "{}",
            e.message
        );
        assert!(!e.message.chars().any(char::is_control), "{:?}", e.message);
        assert!(
            e.message.starts_with("Timestamp 'a\\u{0}b\\u{1b}[31m"),
            "{}",
            e.message
        );
        let shown = e.to_string();
        assert!(shown.contains("code 100035") && shown.contains("SQL state 22007"));
    }

    #[test]
    fn sql_compilation_error_is_permanent_with_its_code() {
        let body = r#"{"code":"002003","sqlState":"42S02","message":"SQL compilation error:\nTable 'NOPE' does not exist or not authorized.","statementHandle":"x"}"#;
        let e = SnowflakeError::from_response(422, body);
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(e.code.as_deref(), Some("002003"));
        assert_eq!(e.sql_state.as_deref(), Some("42S02"));
        assert_eq!(
            e.to_string(),
            "Snowflake permanent error (HTTP 422, code 002003, SQL state 42S02): SQL compilation error: Table 'NOPE' does not exist or not authorized."
        );
    }

    #[test]
    fn rate_limits_server_errors_and_timeouts_are_retryable() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                classify(status, None, None),
                ErrorClass::Retryable,
                "{status}"
            );
        }
        let e = SnowflakeError::from_response(503, "<html>busy</html>");
        assert!(e.is_retryable());
        assert!(e.message.contains("503"), "{e}");
    }

    #[test]
    fn expired_or_invalid_credentials_ask_for_reauthentication() {
        let e = SnowflakeError::from_response(
            401,
            r#"{"code":"390144","message":"JWT token is invalid."}"#,
        );
        assert_eq!(e.class, ErrorClass::Reauth);
        assert_eq!(classify(401, None, None), ErrorClass::Reauth);
        // Some session errors arrive with other statuses but keep their 390xxx code.
        assert_eq!(
            classify(200, Some("390112"), Some("08001")),
            ErrorClass::Reauth
        );
        assert_eq!(classify(403, Some("394304"), None), ErrorClass::Reauth);
    }

    #[test]
    fn other_390_codes_are_not_credential_problems() {
        assert_eq!(
            classify(422, Some("390201"), Some("08004")),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn bad_requests_are_permanent() {
        assert_eq!(classify(400, None, None), ErrorClass::Permanent);
        assert_eq!(
            classify(404, Some("333333"), Some("02000")),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn error_classes_follow_code_and_sql_state_not_the_http_status() {
        // (HTTP status, code, SQL state, class): the table of docs/snowflake.md.
        let table = [
            (422, Some("000630"), Some("57014"), ErrorClass::Retryable),
            (422, Some("000625"), Some("57014"), ErrorClass::Retryable),
            (422, Some("000604"), Some("57014"), ErrorClass::Retryable),
            (422, Some("000605"), Some("57014"), ErrorClass::Retryable),
            (422, Some("000605"), None, ErrorClass::Retryable),
            (422, Some("999999"), Some("57014"), ErrorClass::Retryable),
            (422, Some("100035"), Some("22007"), ErrorClass::Data),
            (422, Some("100038"), Some("22018"), ErrorClass::Data),
            (400, Some("100035"), Some("22007"), ErrorClass::Data),
            (422, Some("002003"), Some("42S02"), ErrorClass::Permanent),
            (422, Some("003001"), Some("42501"), ErrorClass::Permanent),
            (401, Some("390144"), Some("08004"), ErrorClass::Reauth),
            (429, None, None, ErrorClass::Retryable),
            (503, None, None, ErrorClass::Retryable),
            (408, None, None, ErrorClass::Retryable),
            (400, None, None, ErrorClass::Permanent),
        ];
        for (status, code, state, class) in table {
            assert_eq!(
                classify(status, code, state),
                class,
                "{status} {code:?} {state:?}"
            );
        }
        let body = r#"{"code":"000630","sqlState":"57014","message":"Statement reached its statement or warehouse timeout of 60 second(s) and was canceled."}"#;
        assert!(SnowflakeError::from_response(422, body).is_retryable());
    }

    #[test]
    fn empty_body_still_gives_a_readable_line() {
        let e = SnowflakeError::from_response(502, "");
        assert_eq!(
            e.to_string(),
            "Snowflake retryable error (HTTP 502): HTTP 502 Bad Gateway"
        );
    }
}
