//! What the benchmark's helper programs share: `--flag value` command lines.

use std::fmt::Display;
use std::str::FromStr;

/// Hands each `--flag value` pair of the command line to `set`; the first error ends it.
pub fn flags(mut set: impl FnMut(&str, &str) -> Result<(), String>) -> Result<(), String> {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        set(&flag, &value)?;
    }
    Ok(())
}

/// `value` parsed, or an error naming `flag`.
pub fn parsed<T: FromStr>(flag: &str, value: &str) -> Result<T, String>
where
    T::Err: Display,
{
    value.parse().map_err(|e| format!("{flag} {value}: {e}"))
}

/// The arguments, or the program's name and the error on stderr and exit code 2.
pub fn or_usage<T>(program: &str, args: Result<T, String>) -> T {
    args.unwrap_or_else(|e| {
        eprintln!("{program}: {e}");
        std::process::exit(2);
    })
}
