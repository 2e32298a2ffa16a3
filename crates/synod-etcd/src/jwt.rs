//! etcd's `--auth-token jwt,...` tokens: signed claims `{username, revision,
//! exp}` that any member holding the public key can check. As in etcd, a
//! token names the auth revision it was made at, and once users, roles or
//! permissions change it is refused with "revision of auth store is old"
//! (clients then authenticate again).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// etcd's default lifetime of a JWT token.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The keys and settings of `--auth-token jwt,...`.
pub struct JwtKeys {
    alg: Algorithm,
    /// Absent with only a public key: this member checks tokens, makes none.
    sign: Option<EncodingKey>,
    check: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("alg", &self.alg)
            .field("signs", &self.sign.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub username: String,
    pub revision: u64,
    exp: u64,
}

/// A Go duration as etcd's `ttl=` option takes it: `300s`, `5m`, `1h30m`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (n, tail) = rest.split_at(digits);
        let n: f64 = n.parse().ok()?;
        let unit = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit);
        total += n * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        rest = tail;
    }
    (total > 0.0).then(|| Duration::from_secs_f64(total))
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

impl JwtKeys {
    /// From etcd's option string: `jwt,pub-key=PATH,priv-key=PATH,
    /// sign-method=RS256,ttl=5m` (RS*, PS*, ES256/ES384, EdDSA with PEM
    /// keys; HS* with the secret in `priv-key`).
    pub fn from_options(options: &str) -> Result<JwtKeys, String> {
        let mut parts = options.split(',');
        if parts.next() != Some("jwt") {
            return Err(format!("{options:?} does not start with jwt"));
        }
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_TTL);
        for opt in parts {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("{opt:?} is not KEY=VALUE"))?;
            match k {
                "pub-key" => public = Some(v.to_string()),
                "priv-key" => private = Some(v.to_string()),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => {
                    ttl = go_duration(v).ok_or_else(|| format!("ttl {v:?} is not a duration"))?
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        let method = method.ok_or("sign-method is missing")?;
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("sign-method {method:?} is not one etcd knows"))?;
        let (sign, check) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = read(private.as_deref().ok_or("an HMAC method needs priv-key")?)?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let public = read(public.as_deref().ok_or("pub-key is missing")?)?;
                let private = private.as_deref().map(read).transpose()?;
                let bad = |e: jsonwebtoken::errors::Error| format!("{method} key: {e}");
                let (sign, check) = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => (
                        private.map(|p| EncodingKey::from_ec_pem(&p)).transpose(),
                        DecodingKey::from_ec_pem(&public),
                    ),
                    Algorithm::EdDSA => (
                        private.map(|p| EncodingKey::from_ed_pem(&p)).transpose(),
                        DecodingKey::from_ed_pem(&public),
                    ),
                    _ => (
                        private.map(|p| EncodingKey::from_rsa_pem(&p)).transpose(),
                        DecodingKey::from_rsa_pem(&public),
                    ),
                };
                (sign.map_err(bad)?, check.map_err(bad)?)
            }
        };
        Ok(JwtKeys {
            alg,
            sign,
            check,
            ttl,
        })
    }

    /// A token for `username` at auth revision `revision`; `None` for a
    /// member that has only the public key.
    pub(crate) fn issue(&self, username: &str, revision: u64) -> Option<String> {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + self.ttl.as_secs();
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, self.sign.as_ref()?).ok()
    }

    /// The claims of a token this cluster signed and that has not expired.
    pub(crate) fn verify(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.required_spec_claims = ["exp"].iter().map(|s| s.to_string()).collect();
        jsonwebtoken::decode::<Claims>(token, &self.check, &v)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_etcd_writes_them() {
        assert_eq!(go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("0s"), None);
    }

    #[test]
    fn options_are_checked() {
        assert!(JwtKeys::from_options("simple").is_err());
        assert!(JwtKeys::from_options("jwt,sign-method=RS256").is_err());
        assert!(JwtKeys::from_options("jwt,pub-key=/nonexistent,sign-method=RS256").is_err());
        assert!(JwtKeys::from_options("jwt,pub-key=x,sign-method=XX999").is_err());
        assert!(JwtKeys::from_options("jwt,color=blue").is_err());
    }
}
