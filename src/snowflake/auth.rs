//! The `Authorization` header of every request: a key-pair JWT or a bearer token.
//!
//! Key pair: Snowflake accepts a JWT signed with RS256 whose `iss` is
//! `ACCOUNT.USER.SHA256:<base64 SHA-256 of the public key's DER SubjectPublicKeyInfo>`, whose `sub`
//! is `ACCOUNT.USER` (both upper-cased), and whose `exp` is at most one hour after `iat`. A JWT is
//! minted for 59 minutes and reused until less than 10 minutes remain, so signing costs nothing
//! per request. Encrypted PKCS#8 keys are decrypted once at start with the passphrase.
//!
//! Token: a programmatic access token or an OAuth token, given directly or in a file. The file is
//! checked on every request (one `stat`) and re-read when its modification time or size changes,
//! so a rotated secret is used without a restart.
//!
//! After Snowflake rejects the credentials, [`Authenticator::renew`] mints a new JWT (different
//! from the rejected one) or re-reads the token file.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use parking_lot::Mutex;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use sha2::{Digest, Sha256};

use super::config::{AccountForms, AuthConfig, TokenSource, TokenType};
use super::error::SnowflakeError;

/// How long a minted JWT is valid (Snowflake allows at most one hour).
pub const JWT_LIFETIME: Duration = Duration::from_secs(59 * 60);
/// A cached JWT is replaced when less than this remains.
pub const JWT_RENEW_BEFORE: Duration = Duration::from_secs(10 * 60);

/// A bearer credential and its type header. `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Bearer {
    pub value: String,
    /// `KEYPAIR_JWT`, `PROGRAMMATIC_ACCESS_TOKEN` or `OAUTH`.
    pub token_type: &'static str,
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bearer({}, <redacted>)", self.token_type)
    }
}

/// Produces the credential for each request.
pub enum Authenticator {
    /// Boxed: the key is large and the token variant small.
    KeyPair(Box<KeyPairSigner>),
    Token(TokenReader),
}

impl Authenticator {
    pub fn from_config(
        auth: &AuthConfig,
        account: &str,
        user: &str,
    ) -> Result<Authenticator, SnowflakeError> {
        match auth {
            AuthConfig::KeyPair {
                private_key_path,
                passphrase,
            } => Ok(Authenticator::KeyPair(Box::new(KeyPairSigner::from_file(
                private_key_path,
                passphrase.as_deref(),
                account,
                user,
            )?))),
            AuthConfig::Token { source, token_type } => {
                let reader = TokenReader::new(source.clone(), *token_type);
                // Fail fast on an unreadable file, but keep going: it is re-read on every request.
                reader.bearer()?;
                Ok(Authenticator::Token(reader))
            }
        }
    }

    /// The credential to send now.
    pub fn bearer(&self) -> Result<Bearer, SnowflakeError> {
        match self {
            Authenticator::KeyPair(k) => k.bearer(SystemTime::now()),
            Authenticator::Token(t) => t.bearer(),
        }
    }

    /// Forgets the cached credential after Snowflake rejected `rejected`.
    pub fn renew(&self, rejected: &Bearer) {
        match self {
            Authenticator::KeyPair(k) => k.renew(rejected, SystemTime::now()),
            Authenticator::Token(t) => t.invalidate(),
        }
    }

    /// A hint appended to authentication errors: what Snowflake must have on file for this user.
    pub fn hint(&self) -> String {
        match self {
            Authenticator::KeyPair(k) => format!(
                "JWT for {} with key fingerprint {}: check SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, the user's RSA_PUBLIC_KEY_FP and the clock",
                k.subject, k.fingerprint
            ),
            Authenticator::Token(t) => format!(
                "{} token from {}: check that it is current and granted to SNOWFLAKE_USER",
                t.token_type.header_value(),
                t.describe_source()
            ),
        }
    }
}

/// Signs key-pair JWTs and caches the current one.
pub struct KeyPairSigner {
    key: SigningKey<Sha256>,
    /// `SHA256:<base64>` of the public key.
    fingerprint: String,
    /// `ACCOUNT.USER`.
    subject: String,
    cached: Mutex<Option<CachedJwt>>,
}

struct CachedJwt {
    token: String,
    issued_at: u64,
    expires_at: u64,
}

impl KeyPairSigner {
    /// Reads a PEM key file: PKCS#8 (plain or encrypted) or PKCS#1.
    pub fn from_file(
        path: &Path,
        passphrase: Option<&str>,
        account: &str,
        user: &str,
    ) -> Result<KeyPairSigner, SnowflakeError> {
        let pem = fs::read_to_string(path).map_err(|e| {
            SnowflakeError::config(format!(
                "cannot read private key file {} (SNOWFLAKE_PRIVATE_KEY_PATH): {e}",
                path.display()
            ))
        })?;
        KeyPairSigner::from_pem(&pem, passphrase, account, user).map_err(|e| {
            SnowflakeError::config(format!(
                "private key file {}: {}",
                path.display(),
                e.message
            ))
        })
    }

    pub fn from_pem(
        pem: &str,
        passphrase: Option<&str>,
        account: &str,
        user: &str,
    ) -> Result<KeyPairSigner, SnowflakeError> {
        let key = decode_private_key(pem, passphrase)?;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| SnowflakeError::config(format!("cannot encode the public key: {e}")))?;
        let fingerprint = format!("SHA256:{}", STANDARD.encode(Sha256::digest(der.as_bytes())));
        if user.trim().is_empty() {
            return Err(SnowflakeError::config("SNOWFLAKE_USER is not set"));
        }
        let subject = format!(
            "{}.{}",
            jwt_account(account),
            user.trim().to_ascii_uppercase()
        );
        Ok(KeyPairSigner {
            key: SigningKey::<Sha256>::new(key),
            fingerprint,
            subject,
            cached: Mutex::new(None),
        })
    }

    /// `SHA256:<base64>`, as Snowflake shows it in `DESCRIBE USER` (`RSA_PUBLIC_KEY_FP`).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `ACCOUNT.USER`, the `sub` claim.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `ACCOUNT.USER.SHA256:<fingerprint>`, the `iss` claim.
    pub fn issuer(&self) -> String {
        format!("{}.{}", self.subject, self.fingerprint)
    }

    /// The cached JWT, or a new one when less than [`JWT_RENEW_BEFORE`] remains.
    pub fn bearer(&self, now: SystemTime) -> Result<Bearer, SnowflakeError> {
        let now_s = unix_seconds(now);
        let mut cached = self.cached.lock();
        if let Some(c) = cached.as_ref() {
            if c.expires_at > now_s + JWT_RENEW_BEFORE.as_secs() && c.issued_at <= now_s + 60 {
                return Ok(jwt_bearer(c.token.clone()));
            }
        }
        let token = self.jwt_at(now_s)?;
        let bearer = jwt_bearer(token.clone());
        *cached = Some(CachedJwt {
            token,
            issued_at: now_s,
            expires_at: now_s + JWT_LIFETIME.as_secs(),
        });
        Ok(bearer)
    }

    /// Replaces the cached JWT. Signing is deterministic, so a JWT minted within the same second
    /// as the rejected one would be identical: it is then issued one second earlier instead.
    pub fn renew(&self, rejected: &Bearer, now: SystemTime) {
        let mut now_s = unix_seconds(now);
        let mut cached = self.cached.lock();
        let same = |c: &Option<CachedJwt>| c.as_ref().is_some_and(|c| c.token == rejected.value);
        if !same(&cached) {
            // Another thread already renewed it.
            return;
        }
        if cached.as_ref().is_some_and(|c| c.issued_at == now_s) {
            now_s = now_s.saturating_sub(1);
        }
        *cached = self.jwt_at(now_s).ok().map(|token| CachedJwt {
            token,
            issued_at: now_s,
            expires_at: now_s + JWT_LIFETIME.as_secs(),
        });
    }

    /// A JWT issued at `iat` (seconds since the epoch), valid for [`JWT_LIFETIME`].
    pub fn jwt_at(&self, iat: u64) -> Result<String, SnowflakeError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.issuer(),
            "sub": self.subject,
            "iat": iat,
            "exp": iat + JWT_LIFETIME.as_secs(),
        });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let signature = self
            .key
            .try_sign(signing_input.as_bytes())
            .map_err(|e| SnowflakeError::config(format!("cannot sign the JWT: {e}")))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

fn jwt_bearer(value: String) -> Bearer {
    Bearer {
        value,
        token_type: "KEYPAIR_JWT",
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn decode_private_key(
    pem: &str,
    passphrase: Option<&str>,
) -> Result<RsaPrivateKey, SnowflakeError> {
    let pem = pem.trim();
    if pem.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        let Some(pass) = passphrase.filter(|p| !p.is_empty()) else {
            return Err(SnowflakeError::config(
                "the key is encrypted: set SNOWFLAKE_PRIVATE_KEY_PASSPHRASE in the environment",
            ));
        };
        RsaPrivateKey::from_pkcs8_encrypted_pem(pem, pass.as_bytes()).map_err(|e| {
            SnowflakeError::config(format!(
                "cannot decrypt the key (wrong SNOWFLAKE_PRIVATE_KEY_PASSPHRASE or unsupported encryption): {e}"
            ))
        })
    } else if pem.contains("BEGIN RSA PRIVATE KEY") {
        RsaPrivateKey::from_pkcs1_pem(pem)
            .map_err(|e| SnowflakeError::config(format!("not a valid PKCS#1 RSA key: {e}")))
    } else if pem.contains("BEGIN PRIVATE KEY") {
        RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| SnowflakeError::config(format!("not a valid PKCS#8 RSA key: {e}")))
    } else {
        Err(SnowflakeError::config(
            "not a PEM private key (expected -----BEGIN PRIVATE KEY----- or -----BEGIN ENCRYPTED PRIVATE KEY-----)",
        ))
    }
}

/// The account as the JWT names it (see [`AccountForms`]): upper-cased, without region, cloud,
/// `.privatelink` or `.global` suffixes (`xy12345.us-east-1` -> `XY12345`,
/// `myorg-acct.privatelink` -> `MYORG-ACCT`); an `org.account` form becomes `ORG-ACCOUNT`.
pub fn jwt_account(account: &str) -> String {
    AccountForms::parse(account).jwt
}

/// Reads a bearer token, re-reading its file when it changes.
pub struct TokenReader {
    source: TokenSource,
    token_type: TokenType,
    cached: Mutex<Option<FileToken>>,
}

struct FileToken {
    value: String,
    stamp: Option<(SystemTime, u64)>,
}

impl TokenReader {
    pub fn new(source: TokenSource, token_type: TokenType) -> TokenReader {
        TokenReader {
            source,
            token_type,
            cached: Mutex::new(None),
        }
    }

    pub fn bearer(&self) -> Result<Bearer, SnowflakeError> {
        let value = match &self.source {
            TokenSource::Value(v) => v.trim().to_string(),
            TokenSource::File(path) => self.read_file(path)?,
        };
        if value.is_empty() {
            return Err(SnowflakeError::config(format!(
                "the token from {} is empty",
                self.describe_source()
            )));
        }
        Ok(Bearer {
            value,
            token_type: self.token_type.header_value(),
        })
    }

    pub fn invalidate(&self) {
        *self.cached.lock() = None;
    }

    fn read_file(&self, path: &PathBuf) -> Result<String, SnowflakeError> {
        let stamp = fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
        let mut cached = self.cached.lock();
        if let Some(c) = cached.as_ref() {
            if stamp.is_some() && c.stamp == stamp {
                return Ok(c.value.clone());
            }
        }
        match fs::read_to_string(path) {
            Ok(text) => {
                let value = text.trim().to_string();
                *cached = Some(FileToken {
                    value: value.clone(),
                    stamp,
                });
                Ok(value)
            }
            // A rotation that replaces the file may leave it missing for a moment: keep the
            // previous token until the new file appears.
            Err(_) if cached.is_some() => {
                Ok(cached.as_ref().map(|c| c.value.clone()).unwrap_or_default())
            }
            Err(e) => Err(SnowflakeError::config(format!(
                "cannot read the token file {} (SNOWFLAKE_TOKEN_FILE): {e}",
                path.display()
            ))),
        }
    }

    fn describe_source(&self) -> String {
        match &self.source {
            TokenSource::Value(_) => "SNOWFLAKE_TOKEN".to_string(),
            TokenSource::File(p) => p.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use rsa::RsaPublicKey;

    const KEY: &str = include_str!("testdata/test_key.p8");
    const PUB: &str = include_str!("testdata/test_key.pub");
    const ENCRYPTED_KEY: &str = include_str!("testdata/test_key_encrypted.p8");

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn expected_fingerprint() -> String {
        let der = RsaPublicKey::from_public_key_pem(PUB)
            .unwrap()
            .to_public_key_der()
            .unwrap();
        format!("SHA256:{}", STANDARD.encode(Sha256::digest(der.as_bytes())))
    }

    #[test]
    fn jwt_claims_name_account_user_and_key_fingerprint() {
        let signer = KeyPairSigner::from_pem(KEY, None, "myorg-acct", "writer").unwrap();
        let jwt = signer.jwt_at(1_700_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_part(parts[0]),
            serde_json::json!({"alg": "RS256", "typ": "JWT"})
        );
        let fp = expected_fingerprint();
        assert_eq!(
            decode_part(parts[1]),
            serde_json::json!({
                "iss": format!("MYORG-ACCT.WRITER.{fp}"),
                "sub": "MYORG-ACCT.WRITER",
                "iat": 1_700_000_000u64,
                "exp": 1_700_000_000u64 + 59 * 60,
            })
        );
        assert_eq!(signer.fingerprint(), fp);
    }

    #[test]
    fn jwt_signature_verifies_with_the_public_key() {
        let signer = KeyPairSigner::from_pem(KEY, None, "acct", "u").unwrap();
        let jwt = signer.jwt_at(1_700_000_000).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let public = RsaPublicKey::from_public_key_pem(PUB).unwrap();
        let verifier = VerifyingKey::<Sha256>::new(public);
        let sig = Signature::try_from(URL_SAFE_NO_PAD.decode(sig).unwrap().as_slice()).unwrap();
        verifier.verify(input.as_bytes(), &sig).unwrap();
        let mut tampered = input.to_string();
        tampered.push('x');
        assert!(verifier.verify(tampered.as_bytes(), &sig).is_err());
    }

    #[test]
    fn encrypted_key_needs_its_passphrase() {
        let e = KeyPairSigner::from_pem(ENCRYPTED_KEY, None, "a", "u")
            .err()
            .unwrap();
        assert!(
            e.message.contains("SNOWFLAKE_PRIVATE_KEY_PASSPHRASE"),
            "{e}"
        );
        let e = KeyPairSigner::from_pem(ENCRYPTED_KEY, Some("hunter2-guess"), "a", "u")
            .err()
            .unwrap();
        assert!(!e.message.contains("hunter2"), "the passphrase leaked: {e}");
        let signer =
            KeyPairSigner::from_pem(ENCRYPTED_KEY, Some("test-passphrase"), "a", "u").unwrap();
        assert_eq!(signer.fingerprint(), expected_fingerprint());
    }

    #[test]
    fn jwt_is_reused_until_ten_minutes_before_expiry() {
        let signer = KeyPairSigner::from_pem(KEY, None, "a", "u").unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = signer.bearer(t0).unwrap();
        assert_eq!(first.token_type, "KEYPAIR_JWT");
        assert_eq!(
            signer.bearer(t0 + Duration::from_secs(48 * 60)).unwrap(),
            first
        );
        assert_ne!(
            signer.bearer(t0 + Duration::from_secs(50 * 60)).unwrap(),
            first
        );
    }

    #[test]
    fn renewal_after_rejection_gives_a_different_jwt_even_within_the_same_second() {
        let signer = KeyPairSigner::from_pem(KEY, None, "a", "u").unwrap();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let rejected = signer.bearer(t0).unwrap();
        signer.renew(&rejected, t0);
        let renewed = signer.bearer(t0).unwrap();
        assert_ne!(renewed, rejected);
        let claims = decode_part(renewed.value.split('.').nth(1).unwrap());
        assert_eq!(claims["iat"], 1_700_000_000u64 - 1);
    }

    #[test]
    fn account_forms_in_claims() {
        assert_eq!(jwt_account("myorg-myaccount"), "MYORG-MYACCOUNT");
        assert_eq!(jwt_account("myorg.myaccount"), "MYORG-MYACCOUNT");
        assert_eq!(jwt_account("xy12345.us-east-2.aws"), "XY12345");
    }

    #[test]
    fn token_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "first\n").unwrap();
        let reader = TokenReader::new(TokenSource::File(path.clone()), TokenType::OAuth);
        let b = reader.bearer().unwrap();
        assert_eq!((b.value.as_str(), b.token_type), ("first", "OAUTH"));
        fs::write(&path, "second-token\n").unwrap();
        assert_eq!(reader.bearer().unwrap().value, "second-token");
        assert!(!format!("{:?}", reader.bearer().unwrap()).contains("second"));
    }
}
