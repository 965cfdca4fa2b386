//! The agent's credential: its ServiceAccount token, kept in `<state-dir>/token` (the client
//! reads it through the kubeconfig's `tokenFile`, re-read every minute), renewed with a
//! TokenRequest for its own ServiceAccount before it expires, and written atomically.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use tracing::{error, info, warn};

/// A ServiceAccount token and what its claims say (not verified: the API server does that).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub value: String,
    pub issued: Option<Timestamp>,
    pub expires: Option<Timestamp>,
    /// `system:serviceaccount:<namespace>:<name>`, split.
    pub service_account: Option<(String, String)>,
}

impl Token {
    pub fn parse(value: &str) -> Token {
        let value = value.trim().to_string();
        let claims: Option<serde_json::Value> = value
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p.trim_end_matches('='))
                    .ok()
            })
            .and_then(|b| serde_json::from_slice(&b).ok());
        let time = |k: &str| {
            claims
                .as_ref()
                .and_then(|c| c.get(k))
                .and_then(|v| v.as_i64())
                .and_then(|s| Timestamp::from_second(s).ok())
        };
        let service_account = claims
            .as_ref()
            .and_then(|c| c.get("sub"))
            .and_then(|s| s.as_str())
            .and_then(|s| s.strip_prefix("system:serviceaccount:"))
            .and_then(|s| s.split_once(':'))
            .map(|(ns, name)| (ns.to_string(), name.to_string()));
        Token {
            issued: time("iat"),
            expires: time("exp"),
            service_account,
            value,
        }
    }

    pub fn read(path: &Path) -> Option<Token> {
        std::fs::read_to_string(path)
            .ok()
            .map(|t| Token::parse(&t))
            .filter(|t| !t.value.is_empty())
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

/// Of two tokens, the one that lives longer (a kubeconfig handed over again by an operator
/// wins over an older renewed token, and the other way round).
pub fn newest(a: Option<Token>, b: Option<Token>) -> Option<Token> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.expires > a.expires { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// How long until the token is renewed: `every` when given (tests), else when 80% of its
/// lifetime has passed (as the kubelet does), at least 10 seconds from now.
pub fn renew_in(token: &Token, every: Option<Duration>, now: Timestamp) -> Duration {
    if let Some(every) = every {
        return every;
    }
    let at = match (token.issued, token.expires) {
        (Some(i), Some(e)) if e > i => {
            let life = crate::logic::duration::until(i, e);
            crate::logic::duration::add(i, life.mul_f64(0.8))
        }
        (_, Some(e)) => e,
        _ => return Duration::from_secs(3600),
    };
    crate::logic::duration::until(now, at).max(Duration::from_secs(10))
}

/// The token file beside the state.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("token")
}

/// Renew the token until `stop`; returns only when the credential expired and renewal cannot
/// continue (then the machine must be enrolled again).
pub async fn renew_loop(
    client: Client,
    namespace: String,
    vm: String,
    path: PathBuf,
    lifetime: Duration,
    every: Option<Duration>,
    expiry: tokio::sync::watch::Sender<Option<Time>>,
) -> anyhow::Error {
    let mut current = match Token::read(&path) {
        Some(t) => t,
        None => return anyhow::anyhow!("no token at {}", path.display()),
    };
    let _ = expiry.send(current.expires.map(Time));
    let mut backoff = Duration::from_secs(5);
    loop {
        tokio::time::sleep(renew_in(&current, every, Timestamp::now())).await;
        loop {
            match crate::guest::sim::request_token(&client, &namespace, &vm, lifetime).await {
                Ok(value) if !value.is_empty() => {
                    let token = Token::parse(&value);
                    if let Err(e) = crate::sealed::write_private(&path, value.as_bytes()) {
                        warn!(error = %e, "keeping the renewed token");
                    } else {
                        info!(expires = ?token.expires.map(|t| t.to_string()), "credential renewed");
                        let _ = expiry.send(token.expires.map(Time));
                        current = token;
                    }
                    backoff = Duration::from_secs(5);
                    break;
                }
                Ok(_) => warn!("the TokenRequest answered without a token"),
                Err(e) => {
                    if current.expired(Timestamp::now()) {
                        let at = current.expires.map(|t| t.to_string()).unwrap_or_default();
                        error!(error = %e, "credential expired at {at}; re-enroll the machine (automend enroll create, then put the token in the enrollment token file)");
                        return anyhow::anyhow!(
                            "credential expired at {at}; re-enroll the machine"
                        );
                    }
                    warn!(error = %e, retry_in = ?backoff, "renewing the credential");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.sig",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes())
        )
    }

    #[test]
    fn claims_give_lifetime_and_service_account() {
        let t = Token::parse(&jwt(serde_json::json!({
            "iat": 1_700_000_000, "exp": 1_700_001_000,
            "sub": "system:serviceaccount:prod:automend-enroll-fleet"
        })));
        assert_eq!(
            t.service_account,
            Some(("prod".into(), "automend-enroll-fleet".into()))
        );
        let now = Timestamp::from_second(1_700_000_000).expect("ts");
        assert_eq!(renew_in(&t, None, now), Duration::from_secs(800));
        assert_eq!(
            renew_in(&t, Some(Duration::from_secs(3)), now),
            Duration::from_secs(3)
        );
        let late = Timestamp::from_second(1_700_000_990).expect("ts");
        assert_eq!(renew_in(&t, None, late), Duration::from_secs(10));
        assert!(!t.expired(late));
        assert!(t.expired(Timestamp::from_second(1_700_001_000).expect("ts")));
        let garbage = Token::parse("not a jwt");
        assert_eq!((garbage.expires, garbage.service_account), (None, None));
    }

    #[test]
    fn the_longer_lived_token_wins() {
        let a = Token::parse(&jwt(serde_json::json!({"exp": 10})));
        let b = Token::parse(&jwt(serde_json::json!({"exp": 20})));
        assert_eq!(newest(Some(a.clone()), Some(b.clone())), Some(b.clone()));
        assert_eq!(newest(Some(b.clone()), Some(a.clone())), Some(b));
        assert_eq!(newest(None, Some(a.clone())), Some(a));
    }
}
