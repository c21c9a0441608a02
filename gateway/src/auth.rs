//! Who is calling: user JWTs (HS256 secret, RS256/ES256 PEM keys) turned into an [`Identity`],
//! and the tokens `switchboard token` prints.

use globset::{Glob, GlobSet, GlobSetBuilder};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use shared::{ConversationId, UserId, check_id};
use std::sync::Arc;
use std::time::Duration;

/// Why a token was refused; the text follows `unauthorized: ` in what clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token anywhere the client may put one.
    #[error("missing token")]
    Missing,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Signed with another key or algorithm.
    #[error("bad signature")]
    BadSignature,
    /// `iss` differs from --jwt-issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` differs from --jwt-audience.
    #[error("wrong audience")]
    WrongAudience,
    /// The user claim is absent or not a string or number.
    #[error("token has no usable '{0}' claim")]
    NoUser(String),
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// No `exp`, and tokens without one are not accepted (`--jwt-allow-no-exp`).
    #[error("token has no 'exp' claim")]
    NoExpiry,
    /// A claim of the wrong shape: `exp`, `nbf` or `iat` that is not a NumericDate, or a
    /// `conversations` claim over [`MAX_CLAIM_ENTRIES`].
    #[error("invalid '{0}' claim: {1}")]
    BadClaim(&'static str, &'static str),
}

/// Most entries of a token's `conversations` claim (each compiled as a glob at connect).
pub const MAX_CLAIM_ENTRIES: usize = 1000;

/// The time claims of RFC 7519, each a NumericDate (a JSON number of seconds since 1970).
const TIME_CLAIMS: [&str; 3] = ["exp", "nbf", "iat"];

/// The keys that verify and sign user JWTs.
#[derive(Clone)]
pub struct JwtKeys {
    verify: Option<(DecodingKey, Algorithm)>,
    sign: Option<(EncodingKey, Algorithm)>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("verify", &self.verify.as_ref().map(|(_, a)| a))
            .field("sign", &self.sign.as_ref().map(|(_, a)| a))
            .finish()
    }
}

impl JwtKeys {
    /// Builds the keys from a secret and/or PEM files. `Ok(None)` when nothing is given; an
    /// error names the flag at fault.
    pub fn new(
        secret: Option<&str>,
        public_pem: Option<&[u8]>,
        private_pem: Option<&[u8]>,
    ) -> Result<Option<JwtKeys>, (&'static str, String)> {
        if secret.is_some() && public_pem.is_some() {
            return Err((
                "jwt-public-key-file",
                "give either --jwt-secret or --jwt-public-key-file, not both".into(),
            ));
        }
        let mut keys = JwtKeys {
            verify: None,
            sign: None,
        };
        if let Some(secret) = secret {
            keys.verify = Some((DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256));
            keys.sign = Some((EncodingKey::from_secret(secret.as_bytes()), Algorithm::HS256));
        }
        if let Some(pem) = public_pem {
            let key = DecodingKey::from_rsa_pem(pem)
                .map(|k| (k, Algorithm::RS256))
                .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
                .map_err(|_| {
                    (
                        "jwt-public-key-file",
                        "not an RSA or EC (P-256) public key in PEM".to_owned(),
                    )
                })?;
            keys.verify = Some(key);
        }
        if let Some(pem) = private_pem {
            let key = EncodingKey::from_rsa_pem(pem)
                .map(|k| (k, Algorithm::RS256))
                .or_else(|_| EncodingKey::from_ec_pem(pem).map(|k| (k, Algorithm::ES256)))
                .map_err(|_| {
                    (
                        "jwt-private-key-file",
                        "not an RSA or EC (P-256) private key in PEM".to_owned(),
                    )
                })?;
            keys.sign = Some(key);
        }
        Ok((keys.verify.is_some() || keys.sign.is_some()).then_some(keys))
    }
}

/// JWT verification settings.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Verification and signing keys.
    pub keys: JwtKeys,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Refuse tokens without `exp` (the default; `--jwt-allow-no-exp` turns it off).
    pub require_exp: bool,
    /// The claim that names the user (default `sub`).
    pub user_claim: String,
}

impl JwtSettings {
    /// Whether these settings can check a token (a private key alone only signs).
    pub fn can_verify(&self) -> bool {
        self.keys.verify.is_some()
    }

    /// Checks a token and reads who it names: signature, `iss`, `aud`, then the time claims
    /// ([`JwtSettings::check_times`]), then the user claim.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let (key, alg) = self.keys.verify.as_ref().ok_or(AuthError::BadSignature)?;
        let mut v = Validation::new(*alg);
        // The time claims are checked below, on their JSON values: the library skips an
        // `exp` or `nbf` it cannot read as an unsigned integer (a string, -1).
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthError::BadSignature,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer | ErrorKind::MissingRequiredClaim(_) => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            _ => AuthError::Malformed,
        })?;
        self.check_times(&data.claims, chrono::Utc::now().timestamp())?;
        Identity::from_claims(&data.claims, &self.user_claim)
    }

    /// RFC 7519's time claims at `now` (seconds since 1970): `exp`, `nbf` and `iat`, when
    /// present, are NumericDates (JSON numbers; a string, `null` or a boolean is refused);
    /// `exp` is required unless `require_exp` is off, and must not be past; `nbf` must not be
    /// in the future (both within the leeway).
    pub fn check_times(&self, claims: &Map<String, Value>, now: i64) -> Result<(), AuthError> {
        let mut dates = [None; 3];
        for (date, name) in dates.iter_mut().zip(TIME_CLAIMS) {
            *date = match claims.get(name) {
                None => None,
                Some(Value::Number(n)) => match n.as_f64().filter(|f| f.is_finite()) {
                    Some(f) => Some(f),
                    None => return Err(AuthError::BadClaim(name, "expected a NumericDate")),
                },
                Some(_) => return Err(AuthError::BadClaim(name, "expected a NumericDate")),
            };
        }
        let [exp, nbf, _iat] = dates;
        let leeway = self.leeway.as_secs_f64().ceil();
        let now = now as f64;
        match exp {
            None if self.require_exp => return Err(AuthError::NoExpiry),
            Some(exp) if exp + leeway < now => return Err(AuthError::Expired),
            _ => {}
        }
        if nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }

    /// Signs a token for `user`, valid for `ttl`, with extra claims.
    pub fn sign(&self, user: &str, ttl: Duration, extra: Map<String, Value>) -> Result<String, String> {
        let (key, alg) = self
            .keys
            .sign
            .as_ref()
            .ok_or("no signing key: pass --jwt-secret or --jwt-private-key-file")?;
        let now = chrono::Utc::now().timestamp();
        let mut claims = extra;
        claims.insert(self.user_claim.clone(), Value::String(user.to_owned()));
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl.as_secs() as i64).into());
        if let Some(iss) = &self.issuer {
            claims.entry("iss").or_insert_with(|| iss.clone().into());
        }
        if let Some(aud) = &self.audience {
            claims.entry("aud").or_insert_with(|| aud.clone().into());
        }
        jsonwebtoken::encode(&Header::new(*alg), &claims, key).map_err(|e| e.to_string())
    }
}

/// Parses a `--claim key=value`: `true`/`false` become booleans, `conversations` (or any value
/// with a comma) a list of strings.
pub fn parse_claim(kv: &str) -> Result<(String, Value), String> {
    let (k, v) = kv
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("invalid value for --claim: '{kv}' is not KEY=VALUE"))?;
    let value = match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ if k == "conversations" || v.contains(',') => Value::Array(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        ),
        _ => Value::String(v.to_owned()),
    };
    Ok((k.to_owned(), value))
}

/// The token in an `Authorization` header value (`Bearer …`, either case of the scheme): the
/// Socket.IO handshake's rule, so that REST and Socket.IO accept the same headers.
pub use engineio::bearer;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user.
    pub user_id: UserId,
    /// `admin: true` in the token: every right on the REST API.
    pub admin: bool,
    /// The `conversations` claim (ids or glob patterns), when present.
    pub conversations: Option<Arc<ConversationClaim>>,
}

impl Identity {
    /// A user known only by id (a `register`ed connection): no claims.
    pub fn registered(user_id: UserId) -> Self {
        Self {
            user_id,
            admin: false,
            conversations: None,
        }
    }

    fn from_claims(claims: &Map<String, Value>, user_claim: &str) -> Result<Identity, AuthError> {
        // The id rule of every entry point, without trimming: two tokens never name one user.
        let user_id = match claims.get(user_claim) {
            Some(Value::String(s)) if check_id(s) == Ok(s.as_str()) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(AuthError::NoUser(user_claim.to_owned())),
        };
        let entries = match claims.get("conversations") {
            Some(Value::Array(items)) => items.len(),
            Some(Value::String(s)) => s.matches(',').count() + 1,
            _ => 0,
        };
        if entries > MAX_CLAIM_ENTRIES {
            return Err(AuthError::BadClaim("conversations", "more than 1000 entries"));
        }
        let conversations = match claims.get("conversations") {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Some(Value::String(s)) => Some(s.split(',').map(|p| p.trim().to_owned()).collect()),
            _ => None,
        };
        Ok(Identity {
            user_id: UserId::from(user_id),
            admin: claims.get("admin") == Some(&Value::Bool(true)),
            conversations: conversations.map(|c| Arc::new(ConversationClaim::new(c))),
        })
    }
}

/// The `conversations` claim: ids and glob patterns (`team-*`).
#[derive(Debug)]
pub struct ConversationClaim {
    entries: Vec<String>,
    globs: GlobSet,
}

impl ConversationClaim {
    /// Compiles the claim; entries that are not valid globs still match literally.
    pub fn new(entries: Vec<String>) -> Self {
        let mut b = GlobSetBuilder::new();
        for e in &entries {
            if let Ok(g) = Glob::new(e) {
                b.add(g);
            }
        }
        let globs = b.build().unwrap_or_else(|_| GlobSet::empty());
        Self { entries, globs }
    }

    /// Whether the claim grants `conversation`.
    pub fn allows(&self, conversation: &ConversationId) -> bool {
        self.entries.iter().any(|e| e == conversation.as_str()) || self.globs.is_match(conversation.as_str())
    }

    /// The entries as given, for contact lookups.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }
}

/// The property `fuzz/fuzz_targets/jwt.rs` checks on any input, and `cargo test` on its
/// stored corpus: any text is verified as a token, and any JSON object is signed and verified
/// as claims, without a panic; an accepted token names a user by the id rule and carries a
/// numeric `exp` that is not past (a `nbf` that is not future).
#[doc(hidden)]
pub fn fuzz_verify(data: &[u8]) {
    let Ok(keys) = JwtKeys::new(Some("fuzz"), None, None) else {
        return;
    };
    let Some(keys) = keys else { return };
    let settings = JwtSettings {
        keys,
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
        user_claim: "sub".into(),
        require_exp: true,
    };
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = settings.verify(text.trim());
    let Ok(claims) = serde_json::from_str::<Map<String, Value>>(text) else {
        return;
    };
    let key = EncodingKey::from_secret(b"fuzz");
    let Ok(token) = jsonwebtoken::encode(&Header::default(), &claims, &key) else {
        return;
    };
    let now = chrono::Utc::now().timestamp() as f64;
    match settings.verify(&token) {
        Ok(who) => {
            assert_eq!(check_id(who.user_id.as_str()), Ok(who.user_id.as_str()));
            let exp = claims.get("exp").and_then(Value::as_f64);
            assert!(exp.is_some_and(|exp| exp + 5.0 >= now - 1.0), "accepted exp {exp:?}");
            let nbf = claims.get("nbf").map(Value::as_f64);
            assert!(nbf.is_none_or(|nbf| nbf.is_some_and(|nbf| nbf - 5.0 <= now + 1.0)));
        }
        Err(AuthError::BadSignature | AuthError::Missing) => panic!("own signature refused: {claims:?}"),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Result<JwtSettings, String> {
        let keys = JwtKeys::new(Some("secret"), None, None)
            .map_err(|e| e.1)?
            .ok_or("no keys")?;
        Ok(JwtSettings {
            keys,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(0),
            user_claim: "sub".into(),
            require_exp: true,
        })
    }

    #[test]
    fn signed_token_verifies_with_claims() -> Result<(), String> {
        let s = settings()?;
        let mut extra = Map::new();
        for c in ["conversations=a,team-*", "admin=true"] {
            let (k, v) = parse_claim(c)?;
            extra.insert(k, v);
        }
        let token = s.sign("alice", Duration::from_secs(60), extra)?;
        let id = s.verify(&token).map_err(|e| e.to_string())?;
        assert_eq!(id.user_id.as_str(), "alice");
        assert!(id.admin);
        let claim = id.conversations.ok_or("no claim")?;
        assert!(claim.allows(&"a".into()));
        assert!(claim.allows(&"team-9".into()));
        assert!(!claim.allows(&"b".into()));
        Ok(())
    }

    #[test]
    fn refusals_say_why() -> Result<(), String> {
        let s = settings()?;
        let mut expired = Map::new();
        expired.insert("sub".into(), "bob".into());
        expired.insert("exp".into(), (chrono::Utc::now().timestamp() - 60).into());
        let key = EncodingKey::from_secret(b"secret");
        let token = jsonwebtoken::encode(&Header::default(), &expired, &key).map_err(|e| e.to_string())?;
        assert_eq!(s.verify(&token).err(), Some(AuthError::Expired));

        let other = EncodingKey::from_secret(b"other");
        let token = jsonwebtoken::encode(&Header::default(), &Map::new(), &other).map_err(|e| e.to_string())?;
        assert_eq!(s.verify(&token).err(), Some(AuthError::BadSignature));
        assert_eq!(s.verify("not-a-jwt").err(), Some(AuthError::Malformed));

        let mut numeric = Map::new();
        numeric.insert("sub".into(), 42.into());
        numeric.insert("exp".into(), (chrono::Utc::now().timestamp() + 60).into());
        let token = jsonwebtoken::encode(&Header::default(), &numeric, &key).map_err(|e| e.to_string())?;
        assert_eq!(s.verify(&token).map(|i| i.user_id.0).ok().as_deref(), Some("42"));
        Ok(())
    }

    /// Signs `claims` (a JSON object) with the test secret.
    fn signed(claims: Value) -> Result<String, String> {
        let key = EncodingKey::from_secret(b"secret");
        jsonwebtoken::encode(&Header::default(), &claims, &key).map_err(|e| e.to_string())
    }

    /// Issue 12, item 5: the time claims are NumericDates, whatever a client encodes in them.
    #[test]
    fn time_claims_are_numeric_dates() -> Result<(), String> {
        use serde_json::json;
        let s = settings()?;
        let now = chrono::Utc::now().timestamp();
        let bad = |c: &'static str| Some(AuthError::BadClaim(c, "expected a NumericDate"));
        let cases = [
            (json!({"sub": "a", "exp": "1"}), bad("exp")),
            (json!({"sub": "a", "exp": (now - 60).to_string()}), bad("exp")),
            (json!({"sub": "a", "exp": "never"}), bad("exp")),
            (json!({"sub": "a", "exp": (now + 60).to_string()}), bad("exp")),
            (json!({"sub": "a", "exp": null}), bad("exp")),
            (json!({"sub": "a", "exp": true}), bad("exp")),
            (json!({"sub": "a", "exp": -1}), Some(AuthError::Expired)),
            (json!({"sub": "a", "exp": now - 60}), Some(AuthError::Expired)),
            (
                json!({"sub": "a", "exp": (now - 60) as f64 + 0.5}),
                Some(AuthError::Expired),
            ),
            (
                json!({"sub": "a", "exp": now + 60, "nbf": (now + 3600).to_string()}),
                bad("nbf"),
            ),
            (
                json!({"sub": "a", "exp": now + 60, "nbf": now + 3600}),
                Some(AuthError::NotYetValid),
            ),
            (json!({"sub": "a", "exp": now + 60, "iat": "yesterday"}), bad("iat")),
            (json!({"sub": "a"}), Some(AuthError::NoExpiry)),
            (json!({"sub": "a", "nbf": now - 10}), Some(AuthError::NoExpiry)),
            (json!({"sub": "a", "exp": now + 60, "nbf": now - 10, "iat": now}), None),
            (json!({"sub": "a", "exp": (now + 60) as f64 + 0.25}), None),
        ];
        for (claims, refused) in cases {
            let token = signed(claims.clone())?;
            assert_eq!(s.verify(&token).err(), refused, "{claims}");
        }
        // --jwt-allow-no-exp: a token without exp is accepted, a malformed one still is not.
        let lenient = JwtSettings {
            require_exp: false,
            ..settings()?
        };
        assert!(lenient.verify(&signed(json!({"sub": "a"}))?).is_ok());
        assert_eq!(
            lenient.verify(&signed(json!({"sub": "a", "exp": "x"}))?).err(),
            bad("exp")
        );
        // `switchboard token` always writes exp.
        assert!(s.verify(&s.sign("a", Duration::from_secs(60), Map::new())?).is_ok());
        Ok(())
    }

    /// Issue 12, item 9: the user claim follows the id rule (a 600 kB `sub` is refused), and
    /// the `conversations` claim is bounded.
    #[test]
    fn user_claim_follows_the_id_rule() -> Result<(), String> {
        use serde_json::json;
        let s = settings()?;
        let exp = chrono::Utc::now().timestamp() + 60;
        let no_user = Some(AuthError::NoUser("sub".into()));
        for sub in [
            "x".repeat(600_000),
            "x".repeat(257),
            " alice".into(),
            "al\u{0}ice".into(),
            "a\nb".into(),
            "".into(),
        ] {
            let token = signed(json!({"sub": sub, "exp": exp}))?;
            assert_eq!(s.verify(&token).err(), no_user, "{:?}", &sub[..sub.len().min(20)]);
        }
        let token = signed(json!({"sub": "x".repeat(256), "exp": exp}))?;
        assert_eq!(s.verify(&token).map(|i| i.user_id.0.len()).ok(), Some(256));
        let many: Vec<String> = (0..=MAX_CLAIM_ENTRIES).map(|n| format!("c{n}")).collect();
        let token = signed(json!({"sub": "a", "exp": exp, "conversations": many}))?;
        assert!(matches!(s.verify(&token), Err(AuthError::BadClaim("conversations", _))));
        let token = signed(json!({"sub": "a", "exp": exp, "conversations": many.join(",")}))?;
        assert!(matches!(s.verify(&token), Err(AuthError::BadClaim("conversations", _))));
        Ok(())
    }
}
