//! Text shown to operators, made safe for one line of a log or an error reply. Pure; the log
//! ([`crate::host::logging`]) and the Snowflake error messages ([`crate::snowflake`]) both use it.

/// `message` with every control character escaped (`\n`, `\r`, `\0`, `\u{1b}`, ...).
pub fn escaped(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_string();
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
