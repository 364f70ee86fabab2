//! How to reach Snowflake: endpoint, identity, credentials, session context and time limits.
//!
//! The client takes a plain [`ClientConfig`], so tests and tools can build one directly;
//! [`ClientConfig::from_settings`] builds it from the module's settings table and the secrets in the
//! environment. `Debug` never shows a token or passphrase.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::account::{validate_account, AccountForms};
use crate::settings::{secret_from_env, Key, Snapshot};

/// The kind of bearer token, sent as `X-Snowflake-Authorization-Token-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    ProgrammaticAccessToken,
    OAuth,
}

impl TokenType {
    pub fn header_value(self) -> &'static str {
        match self {
            TokenType::ProgrammaticAccessToken => "PROGRAMMATIC_ACCESS_TOKEN",
            TokenType::OAuth => "OAUTH",
        }
    }
}

/// Where a bearer token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// A fixed value (from `SNOWFLAKE_TOKEN`).
    Value(String),
    /// A file re-read whenever it changes, so a rotated token is used without a restart.
    File(PathBuf),
}

/// Credentials. Password sign-in is deliberately absent: Snowflake is retiring it for service users.
#[derive(Clone)]
pub enum AuthConfig {
    /// Key-pair authentication: a JWT signed (RS256) with this PKCS#8 PEM key.
    KeyPair {
        private_key_path: PathBuf,
        passphrase: Option<String>,
    },
    /// A programmatic access token or an OAuth access token.
    Token {
        source: TokenSource,
        token_type: TokenType,
    },
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::KeyPair {
                private_key_path,
                passphrase,
            } => f
                .debug_struct("KeyPair")
                .field("private_key_path", private_key_path)
                .field("passphrase", &passphrase.as_ref().map(|_| "<redacted>"))
                .finish(),
            AuthConfig::Token { source, token_type } => {
                let source = match source {
                    TokenSource::Value(_) => "value <redacted>".to_string(),
                    TokenSource::File(p) => format!("file {}", p.display()),
                };
                f.debug_struct("Token")
                    .field("source", &source)
                    .field("token_type", token_type)
                    .finish()
            }
        }
    }
}

/// Everything the client needs. Build with [`ClientConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://<account>.snowflakecomputing.com`, or `http://127.0.0.1:PORT` for the emulator.
    pub base_url: String,
    /// Account identifier as configured (e.g. `myorg-myaccount`); used for JWT claims.
    pub account: String,
    pub user: String,
    pub auth: AuthConfig,
    pub database: Option<String>,
    pub schema: Option<String>,
    pub warehouse: Option<String>,
    pub role: Option<String>,
    /// Overall limit of one `execute`: submission, retries and polling. Past it a running
    /// statement is cancelled and a retryable timeout error returned.
    pub request_timeout: Duration,
    /// Limit of one HTTP round trip. Snowflake holds a synchronous request up to ~45 s before
    /// answering 202, so the default is above that.
    pub http_timeout: Duration,
    pub connect_timeout: Duration,
    /// Most submissions of one statement (the first included) before giving up on a retryable error.
    pub max_attempts: u32,
    /// First backoff between retries; doubles each time, with jitter.
    pub retry_base_backoff: Duration,
    pub retry_max_backoff: Duration,
    /// Longest pause between two polls of a running statement.
    pub poll_max_interval: Duration,
    /// Renew the JWT / re-read the token and retry once when Snowflake rejects the credentials.
    pub auto_reconnect: bool,
    pub user_agent: String,
    /// Keep-alive round trip interval (`SNOWFLAKE_PING_INTERVAL_SECONDS`); zero turns it off.
    pub ping_interval: Duration,
    /// Start-up: connection attempts before the failure is reported (`CONFIG_MAX_ATTEMPTS`).
    pub startup_attempts: u32,
    /// Start-up: pause between attempts (`CONFIG_SLEEP_SECONDS`).
    pub startup_sleep: Duration,
    /// Log the session context on connect (`VERBOSE_SNOWFLAKE_TEST`).
    pub verbose_connect: bool,
}

/// Why the settings do not describe a usable Snowflake connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("{setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

impl ClientConfig {
    /// A configuration with the product's defaults for everything but the endpoint and identity.
    pub fn new(
        base_url: impl Into<String>,
        account: impl Into<String>,
        user: impl Into<String>,
        auth: AuthConfig,
    ) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            account: account.into(),
            user: user.into(),
            auth,
            database: None,
            schema: None,
            warehouse: None,
            role: None,
            request_timeout: Duration::from_secs(120),
            http_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 8,
            retry_base_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(30),
            poll_max_interval: Duration::from_secs(1),
            auto_reconnect: true,
            user_agent: format!("redis-writebehind/{}", env!("CARGO_PKG_VERSION")),
            ping_interval: Duration::from_secs(300),
            startup_attempts: 12,
            startup_sleep: Duration::from_secs(5),
            verbose_connect: false,
        }
    }

    /// Builds the configuration from the settings, with secrets from the environment.
    pub fn from_settings(snap: &Snapshot) -> Result<ClientConfig, ConfigError> {
        ClientConfig::from_settings_with(snap, &|name| secret_from_env(name))
    }

    /// As [`ClientConfig::from_settings`], reading secrets through `secret` (for tests).
    pub fn from_settings_with(
        snap: &Snapshot,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ClientConfig, ConfigError> {
        let text = |k: Key| -> Option<String> {
            let v = snap.str(k).trim();
            (!v.is_empty()).then(|| v.to_string())
        };
        let account = text(Key::SnowflakeAccount).unwrap_or_default();
        let user = text(Key::SnowflakeUser).ok_or(ConfigError::Missing("SNOWFLAKE_USER"))?;
        let base_url = match text(Key::SnowflakeUrl) {
            Some(url) => url,
            None if account.is_empty() => {
                return Err(ConfigError::Missing("SNOWFLAKE_ACCOUNT (or SNOWFLAKE_URL)"))
            }
            None => default_base_url(&account),
        };
        let auth = if let Some(path) = text(Key::SnowflakePrivateKeyPath) {
            if account.is_empty() {
                return Err(ConfigError::Missing(
                    "SNOWFLAKE_ACCOUNT (key-pair authentication names the account in its JWT)",
                ));
            }
            AuthConfig::KeyPair {
                private_key_path: PathBuf::from(path),
                passphrase: secret("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"),
            }
        } else {
            let token_type = match snap.str(Key::SnowflakeTokenType) {
                "OAUTH" => TokenType::OAuth,
                _ => TokenType::ProgrammaticAccessToken,
            };
            let source = if let Some(file) = text(Key::SnowflakeTokenFile) {
                TokenSource::File(PathBuf::from(file))
            } else if let Some(token) = secret("SNOWFLAKE_TOKEN") {
                TokenSource::Value(token)
            } else {
                return Err(ConfigError::Missing(
                    "SNOWFLAKE_PRIVATE_KEY_PATH, SNOWFLAKE_TOKEN_FILE or SNOWFLAKE_TOKEN",
                ));
            };
            AuthConfig::Token { source, token_type }
        };
        let mut cfg = ClientConfig::new(base_url, account, user, auth);
        cfg.database = text(Key::SnowflakeDatabase);
        cfg.schema = text(Key::SnowflakeSchema);
        cfg.warehouse = text(Key::SnowflakeWarehouse);
        cfg.role = text(Key::SnowflakeRole);
        cfg.auto_reconnect = snap.bool(Key::SnowflakeAutoReconnect);
        cfg.request_timeout =
            Duration::from_secs(snap.uint(Key::SnowflakeRequestTimeoutSeconds).max(1));
        cfg.http_timeout = cfg.http_timeout.min(cfg.request_timeout);
        cfg.retry_max_backoff = Duration::from_millis(snap.uint(Key::RetryMaxBackoffMs).max(10));
        cfg.ping_interval = Duration::from_secs(snap.uint(Key::SnowflakePingIntervalSeconds));
        cfg.startup_attempts = u32::try_from(snap.uint(Key::ConfigMaxAttempts))
            .unwrap_or(u32::MAX)
            .max(1);
        cfg.startup_sleep = Duration::from_secs(snap.uint(Key::ConfigSleepSeconds));
        cfg.verbose_connect = snap.bool(Key::VerboseSnowflakeTest);
        Ok(cfg)
    }
}

/// `https://<host>` for an account identifier (see [`AccountForms`]).
pub fn default_base_url(account: &str) -> String {
    format!("https://{}", AccountForms::parse(account).host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Value;

    fn snap(pairs: &[(Key, &str)]) -> Snapshot {
        let mut s = Snapshot::defaults();
        for (k, v) in pairs {
            s = s.with(*k, Value::Str(v.to_string()));
        }
        s
    }

    #[test]
    fn account_identifiers_give_the_jwt_account_and_host_of_snowflakes_connectors() {
        let table = [
            ("xy12345", "XY12345", "xy12345.snowflakecomputing.com"),
            (
                "XY12345.us-east-1",
                "XY12345",
                "xy12345.us-east-1.snowflakecomputing.com",
            ),
            (
                "xy12345.us-east-2.aws",
                "XY12345",
                "xy12345.us-east-2.aws.snowflakecomputing.com",
            ),
            (
                "xy12345.east-us-2.azure",
                "XY12345",
                "xy12345.east-us-2.azure.snowflakecomputing.com",
            ),
            (
                "xy12345.us-central1.gcp",
                "XY12345",
                "xy12345.us-central1.gcp.snowflakecomputing.com",
            ),
            (
                "myorg-myaccount",
                "MYORG-MYACCOUNT",
                "myorg-myaccount.snowflakecomputing.com",
            ),
            (
                "MyOrg-My_Account",
                "MYORG-MY_ACCOUNT",
                "myorg-my-account.snowflakecomputing.com",
            ),
            (
                "myorg.myaccount",
                "MYORG-MYACCOUNT",
                "myorg-myaccount.snowflakecomputing.com",
            ),
            (
                "myorg-myaccount.privatelink",
                "MYORG-MYACCOUNT",
                "myorg-myaccount.privatelink.snowflakecomputing.com",
            ),
            (
                "xy12345.us-east-1.privatelink",
                "XY12345",
                "xy12345.us-east-1.privatelink.snowflakecomputing.com",
            ),
            (
                "xy12345.privatelink",
                "XY12345",
                "xy12345.privatelink.snowflakecomputing.com",
            ),
            (
                "myorg-myaccount-abcd1234.global",
                "MYORG-MYACCOUNT",
                "myorg-myaccount-abcd1234.global.snowflakecomputing.com",
            ),
            (
                "xy12345-abcd1234.global",
                "XY12345",
                "xy12345-abcd1234.global.snowflakecomputing.com",
            ),
            (
                "xy12345.cn-north-1.aws",
                "XY12345",
                "xy12345.cn-north-1.aws.snowflakecomputing.cn",
            ),
            (
                " myorg-acct ",
                "MYORG-ACCT",
                "myorg-acct.snowflakecomputing.com",
            ),
        ];
        for (identifier, jwt, host) in table {
            let forms = AccountForms::parse(identifier);
            assert_eq!(forms.jwt, jwt, "JWT account of {identifier}");
            assert_eq!(forms.host, host, "host of {identifier}");
            assert_eq!(default_base_url(identifier), format!("https://{host}"));
        }
    }

    #[test]
    fn key_path_selects_key_pair_auth_with_passphrase_from_the_environment() {
        let s = snap(&[
            (Key::SnowflakeAccount, "myorg-acct"),
            (Key::SnowflakeUser, "writer"),
            (Key::SnowflakePrivateKeyPath, "/keys/rsa_key.p8"),
            (Key::SnowflakeDatabase, "DB"),
        ]);
        let env = |n: &str| (n == "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE").then(|| "s3cret".to_string());
        let cfg = ClientConfig::from_settings_with(&s, &env).unwrap();
        assert_eq!(cfg.base_url, "https://myorg-acct.snowflakecomputing.com");
        assert_eq!(cfg.database.as_deref(), Some("DB"));
        assert_eq!(cfg.schema, None);
        assert!(matches!(
            cfg.auth,
            AuthConfig::KeyPair {
                passphrase: Some(_),
                ..
            }
        ));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn token_file_beats_token_value_and_url_overrides_account() {
        let s = snap(&[
            (Key::SnowflakeUser, "writer"),
            (Key::SnowflakeUrl, "http://127.0.0.1:9"),
            (Key::SnowflakeTokenFile, "/run/token"),
            (Key::SnowflakeTokenType, "OAUTH"),
        ]);
        let env = |n: &str| (n == "SNOWFLAKE_TOKEN").then(|| "tok".to_string());
        let cfg = ClientConfig::from_settings_with(&s, &env).unwrap();
        assert_eq!(cfg.base_url, "http://127.0.0.1:9");
        match cfg.auth {
            AuthConfig::Token {
                source: TokenSource::File(p),
                token_type: TokenType::OAuth,
            } => assert_eq!(p, PathBuf::from("/run/token")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_credentials_name_the_settings_to_set() {
        let s = snap(&[(Key::SnowflakeAccount, "a"), (Key::SnowflakeUser, "u")]);
        let e = ClientConfig::from_settings_with(&s, &|_| None).unwrap_err();
        assert!(e.to_string().contains("SNOWFLAKE_PRIVATE_KEY_PATH"), "{e}");
        let e = ClientConfig::from_settings_with(&snap(&[]), &|_| None).unwrap_err();
        assert_eq!(e, ConfigError::Missing("SNOWFLAKE_USER"));
    }
}
