//! LiteLLM's exact-match response cache, in memory: a whole (non-streamed) successful
//! answer is kept under a hash of the route and the request body, bounded by entries and
//! bytes (least recently used out first) and by a time to live. A request may steer it
//! with LiteLLM's `cache` field: `no-cache` (do not read), `no-store` (do not write),
//! `ttl` (seconds to keep this answer) and `s-maxage` (oldest answer it accepts).

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use parking_lot::Mutex;
use serde_json::Value;

const MAX_ENTRIES: usize = 10_000;
const MAX_BYTES: usize = 64 * 1024 * 1024;

pub struct ResponseCache {
    entries: Mutex<(lru::LruCache<u64, Entry>, usize)>,
    ttl: Duration,
}

#[derive(Clone)]
pub struct Entry {
    pub body: Bytes,
    pub content_type: String,
    stored: Instant,
    ttl: Duration,
}

/// A request's `cache` controls.
#[derive(Debug, Default, PartialEq)]
pub struct Controls {
    pub no_cache: bool,
    pub no_store: bool,
    pub ttl: Option<Duration>,
    pub max_age: Option<Duration>,
}

impl Controls {
    /// Reads and removes the `cache` field, so it never reaches the upstream.
    pub fn take(body: &mut Value) -> Self {
        let Some(cache) = body.as_object_mut().and_then(|b| b.remove("cache")) else {
            return Self::default();
        };
        let flag = |name: &str| cache.get(name).and_then(Value::as_bool) == Some(true);
        let secs = |name: &str| {
            cache
                .get(name)
                .and_then(Value::as_f64)
                .filter(|s| *s >= 0.0 && s.is_finite())
                .map(Duration::from_secs_f64)
        };
        Self {
            no_cache: flag("no-cache"),
            no_store: flag("no-store"),
            ttl: secs("ttl"),
            max_age: secs("s-maxage"),
        }
    }
}

/// The cache key of a request: the route and the body (serde_json keeps object keys
/// sorted, so equal requests hash equally whatever their key order).
pub fn key(path: &str, body: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    body.to_string().hash(&mut hasher);
    hasher.finish()
}

impl ResponseCache {
    pub fn new(ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(MAX_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: Mutex::new((lru::LruCache::new(capacity), 0)),
            ttl,
        }
    }

    /// The stored answer for `key`, if it is fresh for the cache and for `max_age`.
    pub fn get(&self, key: u64, max_age: Option<Duration>) -> Option<Entry> {
        let mut guard = self.entries.lock();
        let (entries, bytes) = &mut *guard;
        let entry = entries.get(&key)?.clone();
        let age = entry.stored.elapsed();
        if age > entry.ttl {
            if let Some(old) = entries.pop(&key) {
                *bytes -= old.body.len();
            }
            return None;
        }
        (max_age.is_none_or(|max| age <= max)).then_some(entry)
    }

    pub fn put(&self, key: u64, body: Bytes, content_type: String, ttl: Option<Duration>) {
        if body.len() > MAX_BYTES / 16 {
            return;
        }
        let mut guard = self.entries.lock();
        let (entries, bytes) = &mut *guard;
        *bytes += body.len();
        let entry = Entry {
            body,
            content_type,
            stored: Instant::now(),
            ttl: ttl.unwrap_or(self.ttl),
        };
        if let Some((_, old)) = entries.push(key, entry) {
            *bytes -= old.body.len();
        }
        while *bytes > MAX_BYTES {
            match entries.pop_lru() {
                Some((_, old)) => *bytes -= old.body.len(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn controls_are_read_and_removed() {
        let mut body = json!({"model": "m", "cache": {"no-store": true, "ttl": 30, "s-maxage": 5}});
        let controls = Controls::take(&mut body);
        assert_eq!(
            controls,
            Controls {
                no_cache: false,
                no_store: true,
                ttl: Some(Duration::from_secs(30)),
                max_age: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(body, json!({"model": "m"}));
    }

    #[test]
    fn equal_requests_share_a_key_and_answers_expire() {
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let b: Value =
            serde_json::from_str(r#"{"messages":[{"content":"hi","role":"user"}],"model":"m"}"#)
                .unwrap();
        assert_eq!(key("/chat/completions", &a), key("/chat/completions", &b));
        assert_ne!(key("/chat/completions", &a), key("/completions", &a));
        let cache = ResponseCache::new(Duration::from_secs(60));
        cache.put(
            1,
            Bytes::from_static(b"{}"),
            "application/json".into(),
            None,
        );
        assert!(cache.get(1, None).is_some());
        assert!(
            cache.get(1, Some(Duration::ZERO)).is_none(),
            "older than s-maxage 0"
        );
        cache.put(
            2,
            Bytes::from_static(b"{}"),
            "application/json".into(),
            Some(Duration::ZERO),
        );
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get(2, None).is_none(), "past its own ttl");
    }
}
