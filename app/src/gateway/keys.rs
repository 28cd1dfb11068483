//! Virtual keys in memory: each key's limits (allowed models, budget with its reset
//! period, rpm, tpm, parallel requests, expiry) and live counters. Only a key's SHA-256 is
//! known here and in the store; the key itself is shown once, when generated.
//! Limits are checked under the key's own lock, so concurrent requests cannot slip past
//! them: rpm and parallel counts are exact; tpm and budget count a request once it ends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::store::StoredKey;

/// The SHA-256 of a key, in hex: how keys are stored and looked up (LiteLLM's `token`).
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key's token from either form a client may give: the key itself (`sk-...`), or its
/// token already (64 hex digits).
pub fn token_of(key: &str) -> String {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        key.to_ascii_lowercase()
    } else {
        hash_key(key)
    }
}

/// A fresh key: `sk-` and 32 random base62 characters (190 bits).
pub fn new_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sk-{body}")
}

/// `sk-...abcd`: the part of a key shown in listings.
pub fn display_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

/// LiteLLM's durations: `30s`, `30m`, `30h`, `30d`, `2w`, `1mo` (30 days); in seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().ok()?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "mo" => 30 * 86_400,
        _ => return None,
    };
    (n > 0).then(|| n.saturating_mul(unit_secs))
}

/// Why a key may not make a request now.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    ModelNotAllowed {
        model: String,
    },
    BudgetExceeded {
        spend: f64,
        max_budget: f64,
        retry_after: Option<u64>,
    },
    Rpm {
        limit: u64,
        retry_after: u64,
    },
    Tpm {
        limit: u64,
        retry_after: u64,
    },
    Parallel {
        limit: u64,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ModelNotAllowed { model } => {
                write!(f, "this key is not allowed to call model {model:?}")
            }
            Refusal::BudgetExceeded {
                spend, max_budget, ..
            } => write!(
                f,
                "budget exceeded: this key has spent ${spend:.6} of its max_budget ${max_budget:.6}"
            ),
            Refusal::Rpm { limit, .. } => {
                write!(f, "rate limit reached: this key's rpm_limit is {limit}")
            }
            Refusal::Tpm { limit, .. } => {
                write!(f, "rate limit reached: this key's tpm_limit is {limit}")
            }
            Refusal::Parallel { limit } => write!(
                f,
                "too many parallel requests: this key's max_parallel_requests is {limit}"
            ),
        }
    }
}

pub struct VirtualKey {
    pub token: String,
    state: Mutex<KeyState>,
}

struct KeyState {
    stored: StoredKey,
    /// The current minute (Unix seconds / 60) and what the key used in it.
    minute: i64,
    requests: u64,
    tokens: u64,
    in_flight: u64,
}

impl KeyState {
    /// Starts a new rate window, and a new budget period once the reset time has passed.
    fn roll(&mut self, now: i64) {
        if now.div_euclid(60) != self.minute {
            self.minute = now.div_euclid(60);
            self.requests = 0;
            self.tokens = 0;
        }
        let period = self
            .stored
            .budget_duration
            .as_deref()
            .and_then(parse_duration);
        if let (Some(period), Some(reset_at)) = (period, self.stored.budget_reset_at)
            && now >= reset_at
        {
            self.stored.spend = 0.0;
            self.stored.budget_reset_at = Some(now + period);
        }
    }
}

impl VirtualKey {
    pub fn new(stored: StoredKey) -> Self {
        Self {
            token: stored.token.clone(),
            state: Mutex::new(KeyState {
                stored,
                minute: 0,
                requests: 0,
                tokens: 0,
                in_flight: 0,
            }),
        }
    }

    /// Whether the key's metadata asks that its calls' bodies stay out of traces
    /// (`{"redact_bodies": true}`).
    pub fn redacts_bodies(&self) -> bool {
        self.state.lock().stored.metadata["redact_bodies"] == serde_json::Value::Bool(true)
    }

    pub fn alias(&self) -> Option<String> {
        self.state.lock().stored.key_alias.clone()
    }

    /// The key as stored, with its spend as of now.
    pub fn snapshot(&self, now: i64) -> StoredKey {
        let mut state = self.state.lock();
        state.roll(now);
        state.stored.clone()
    }

    pub fn expired(&self, now: i64) -> bool {
        self.state
            .lock()
            .stored
            .expires_at
            .is_some_and(|at| now >= at)
    }

    /// Replaces the key's settings (from `/key/update`), keeping its live counters.
    pub fn replace(&self, stored: StoredKey) {
        self.state.lock().stored = stored;
    }

    /// Counts a request against the key's limits, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, model: &str, now: i64) -> Result<KeyPermit, Refusal> {
        let mut state = self.state.lock();
        state.roll(now);
        let stored = &state.stored;
        let any_model = stored.models.is_empty()
            || stored
                .models
                .iter()
                .any(|m| m == model || m == "*" || m == "all-proxy-models");
        if !any_model {
            return Err(Refusal::ModelNotAllowed {
                model: model.to_string(),
            });
        }
        let next_minute = (60 - now.rem_euclid(60)).max(1) as u64;
        if let Some(max_budget) = stored.max_budget
            && stored.spend >= max_budget
        {
            return Err(Refusal::BudgetExceeded {
                spend: stored.spend,
                max_budget,
                retry_after: stored.budget_reset_at.map(|at| (at - now).max(1) as u64),
            });
        }
        if let Some(limit) = stored.rpm_limit
            && state.requests >= limit
        {
            return Err(Refusal::Rpm {
                limit,
                retry_after: next_minute,
            });
        }
        if let Some(limit) = stored.tpm_limit
            && state.tokens >= limit
        {
            return Err(Refusal::Tpm {
                limit,
                retry_after: next_minute,
            });
        }
        if let Some(limit) = stored.max_parallel_requests
            && state.in_flight >= limit
        {
            return Err(Refusal::Parallel { limit });
        }
        state.requests += 1;
        state.in_flight += 1;
        Ok(KeyPermit { key: self.clone() })
    }
}

/// A request admitted on a key: counts as in flight until dropped.
pub struct KeyPermit {
    key: Arc<VirtualKey>,
}

impl KeyPermit {
    pub fn key(&self) -> &Arc<VirtualKey> {
        &self.key
    }

    /// Adds a finished request's tokens and cost; returns the key's spend and reset time.
    pub fn record(&self, tokens: u64, cost: f64, now: i64) -> (f64, Option<i64>) {
        let mut state = self.key.state.lock();
        state.roll(now);
        state.tokens += tokens;
        state.stored.spend += cost;
        (state.stored.spend, state.stored.budget_reset_at)
    }
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        let mut state = self.key.state.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
    }
}

/// Every virtual key, by token.
#[derive(Default)]
pub struct KeyRegistry {
    keys: RwLock<HashMap<String, Arc<VirtualKey>>>,
}

impl KeyRegistry {
    pub fn new(stored: Vec<StoredKey>) -> Self {
        let keys = stored
            .into_iter()
            .map(|k| (k.token.clone(), Arc::new(VirtualKey::new(k))))
            .collect();
        Self {
            keys: RwLock::new(keys),
        }
    }

    /// The key with this token (a key's SHA-256).
    pub fn get(&self, token: &str) -> Option<Arc<VirtualKey>> {
        self.keys.read().get(token).cloned()
    }

    pub fn insert(&self, key: StoredKey) {
        self.keys
            .write()
            .insert(key.token.clone(), Arc::new(VirtualKey::new(key)));
    }

    pub fn remove(&self, token: &str) {
        self.keys.write().remove(token);
    }

    /// The token of the key with this alias.
    pub fn token_for_alias(&self, alias: &str) -> Option<String> {
        self.keys
            .read()
            .values()
            .find(|k| k.alias().as_deref() == Some(alias))
            .map(|k| k.token.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stored(edit: impl FnOnce(&mut StoredKey)) -> Arc<VirtualKey> {
        let mut key = StoredKey {
            token: hash_key("sk-test"),
            key_name: display_name("sk-test"),
            key_alias: None,
            models: vec![],
            max_budget: None,
            budget_duration: None,
            budget_reset_at: None,
            rpm_limit: None,
            tpm_limit: None,
            max_parallel_requests: None,
            expires_at: None,
            metadata: serde_json::Value::Null,
            spend: 0.0,
            created_at: 0,
            updated_at: 0,
        };
        edit(&mut key);
        Arc::new(VirtualKey::new(key))
    }

    #[test]
    fn keys_hash_and_display_as_litellm_does() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(display_name("sk-abcdefgh"), "sk-...efgh");
        let key = new_key();
        assert!(key.starts_with("sk-") && key.len() == 35, "{key}");
        assert_ne!(new_key(), key);
    }

    #[test]
    fn durations_read_litellm_units() {
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("1mo"), Some(30 * 86_400));
        assert_eq!(parse_duration("7x"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(parse_duration("0d"), None);
    }

    #[test]
    fn rpm_and_parallel_limits_count_exactly() {
        let key = stored(|k| {
            k.rpm_limit = Some(3);
            k.max_parallel_requests = Some(2);
        });
        let a = key.admit("m", 120).unwrap();
        let b = key.admit("m", 121).unwrap();
        assert_eq!(
            key.admit("m", 122).err(),
            Some(Refusal::Parallel { limit: 2 })
        );
        drop(a);
        let _c = key.admit("m", 122).unwrap();
        drop(b);
        assert_eq!(
            key.admit("m", 150).err(),
            Some(Refusal::Rpm {
                limit: 3,
                retry_after: 30
            })
        );
        // A new minute, a new window.
        assert!(key.admit("m", 180).is_ok());
    }

    #[test]
    fn budgets_refuse_once_spent_and_reset_after_their_period() {
        let key = stored(|k| {
            k.max_budget = Some(0.01);
            k.budget_duration = Some("1h".into());
            k.budget_reset_at = Some(3_600);
            k.tpm_limit = Some(100);
        });
        let permit = key.admit("m", 10).unwrap();
        assert_eq!(permit.record(150, 0.02, 11), (0.02, Some(3_600)));
        drop(permit);
        match key.admit("m", 20) {
            Err(Refusal::BudgetExceeded { retry_after, .. }) => {
                assert_eq!(retry_after, Some(3_580))
            }
            other => panic!("{:?}", other.err()),
        }
        // After the reset the budget is whole again; the tpm window moved on too.
        assert!(key.admit("m", 3_600).is_ok());
        assert_eq!(key.snapshot(3_600).budget_reset_at, Some(7_200));
        assert_eq!(key.snapshot(3_600).spend, 0.0);
    }

    #[test]
    fn tpm_counts_tokens_of_finished_requests() {
        let key = stored(|k| k.tpm_limit = Some(100));
        key.admit("m", 0).unwrap().record(100, 0.0, 1);
        assert!(matches!(key.admit("m", 2), Err(Refusal::Tpm { .. })));
    }

    #[test]
    fn allowed_models_and_expiry() {
        let key = stored(|k| {
            k.models = vec!["gpt-4".into()];
            k.expires_at = Some(100);
        });
        assert!(key.admit("gpt-4", 0).is_ok());
        assert!(matches!(
            key.admit("claude-3", 0),
            Err(Refusal::ModelNotAllowed { .. })
        ));
        assert!(!key.expired(99));
        assert!(key.expired(100));
    }
}
