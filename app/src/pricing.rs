//! The one price table: `{model regex, start date, input and output price per token}`,
//! built-in prices for common hosted models, overridden by the config's `pricing:` entries
//! and, per gateway deployment, by LiteLLM's `model_info.input_cost_per_token` /
//! `output_cost_per_token`. The gateway's spend and (later) the traces' cost read it.
//! Local models cost nothing unless a configured entry names them.

use std::collections::HashMap;

use anyhow::{Context, bail};
use parking_lot::Mutex;
use regex::Regex;
use serde::Deserialize;

pub use crate::clock::{parse_day, today};

/// (model, local, day): what a price depends on.
type MemoKey = (Box<str>, bool, i64);

/// Remembered answers at most; the memo starts over when full.
const MEMO_ENTRIES: usize = 4096;

/// Prices in US dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    pub input_per_token: f64,
    pub output_per_token: f64,
}

impl Price {
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.input_per_token * input_tokens as f64 + self.output_per_token * output_tokens as f64
    }

    /// What a token of either kind costs on average, for cost-based routing.
    pub fn per_token(&self) -> f64 {
        self.input_per_token + self.output_per_token
    }
}

/// One price entry as the config writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// A regular expression matched against the whole model name (case-insensitive).
    pub model: String,
    /// `YYYY-MM-DD`: the price applies to calls on or after this day (UTC).
    pub start_date: Option<String>,
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
}

#[derive(Debug)]
struct Entry {
    pattern: Regex,
    /// Days since 1970-01-01 from which the entry applies.
    start_day: i64,
    price: Price,
    /// Configured entries also price local models; built-in ones only hosted models.
    configured: bool,
}

#[derive(Debug)]
pub struct PriceTable {
    entries: Vec<Entry>,
    /// Answers already worked out, by (model, local, day): every metered request and
    /// every stored observation asks, and most ask about the same few models.
    memo: Mutex<HashMap<MemoKey, Price>>,
}

/// Built-in prices per million tokens (input, output), as the providers list them.
const BUILT_IN: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.0),
    ("gpt-4\\.1-nano", 0.10, 0.40),
    ("gpt-4\\.1-mini", 0.40, 1.60),
    ("gpt-4\\.1", 2.0, 8.0),
    ("gpt-4-turbo(-preview)?", 10.0, 30.0),
    ("gpt-4", 30.0, 60.0),
    ("gpt-3\\.5-turbo", 0.50, 1.50),
    ("o1", 15.0, 60.0),
    ("o3-mini", 1.10, 4.40),
    ("o4-mini", 1.10, 4.40),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("text-embedding-ada-002", 0.10, 0.0),
    ("claude-3-opus", 15.0, 75.0),
    ("claude-opus-4(-\\d)?", 15.0, 75.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-sonnet-4(-\\d)?", 3.0, 15.0),
    ("claude-3-sonnet", 3.0, 15.0),
    ("claude-3-5-haiku", 0.80, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
];

/// Wraps a built-in name so it matches the ways providers spell it: an optional
/// `provider/` or Bedrock `vendor.` prefix, and dated or versioned suffixes.
fn built_in_pattern(name: &str) -> String {
    format!(r"(?i)^(.*/)?([a-z]+\.)?{name}(-\d{{4}}-?\d{{2}}-?\d{{2}})?(-v\d+(:\d+)?)?(-latest)?$")
}

impl PriceTable {
    /// The configured entries (checked first, in order), then the built-in ones.
    pub fn new(configured: &[RawPrice]) -> anyhow::Result<Self> {
        let mut entries = Vec::new();
        for (i, raw) in configured.iter().enumerate() {
            let pattern = Regex::new(&format!("(?i)^(?:{})$", raw.model))
                .with_context(|| format!("pricing[{i}].model is not a valid regex"))?;
            let start_day = match &raw.start_date {
                Some(date) => parse_day(date).with_context(|| {
                    format!("pricing[{i}].start_date {date:?} is not YYYY-MM-DD")
                })?,
                None => i64::MIN,
            };
            for (field, value) in [
                ("input_cost_per_token", raw.input_cost_per_token),
                ("output_cost_per_token", raw.output_cost_per_token),
            ] {
                if !(value >= 0.0 && value.is_finite()) {
                    bail!("pricing[{i}].{field} must be a number >= 0");
                }
            }
            entries.push(Entry {
                pattern,
                start_day,
                price: Price {
                    input_per_token: raw.input_cost_per_token,
                    output_per_token: raw.output_cost_per_token,
                },
                configured: true,
            });
        }
        for (name, input, output) in BUILT_IN {
            entries.push(Entry {
                pattern: Regex::new(&built_in_pattern(name))
                    .with_context(|| format!("built-in price pattern for {name}"))?,
                start_day: i64::MIN,
                price: Price {
                    input_per_token: input / 1e6,
                    output_per_token: output / 1e6,
                },
                configured: false,
            });
        }
        Ok(Self {
            entries,
            memo: Mutex::default(),
        })
    }

    /// The price of `model` on `day` (days since 1970-01-01): among matching entries the
    /// one with the latest start on or before that day; configured entries win ties.
    /// Local models match configured entries only; no match costs nothing.
    pub fn price(&self, model: &str, local: bool, day: i64) -> Price {
        let key = (Box::<str>::from(model), local, day);
        if let Some(price) = self.memo.lock().get(&key) {
            return *price;
        }
        let price = self.look_up(model, local, day);
        let mut memo = self.memo.lock();
        if memo.len() >= MEMO_ENTRIES {
            memo.clear();
        }
        memo.insert(key, price);
        price
    }

    fn look_up(&self, model: &str, local: bool, day: i64) -> Price {
        let mut best: Option<&Entry> = None;
        for entry in &self.entries {
            if (local && !entry.configured) || entry.start_day > day {
                continue;
            }
            if best.is_some_and(|b| b.start_day >= entry.start_day) {
                continue;
            }
            if entry.pattern.is_match(model) {
                best = Some(entry);
            }
        }
        best.map(|e| e.price).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn per_million(price: Price) -> (f64, f64) {
        let round = |x: f64| (x * 1e6 * 1000.0).round() / 1000.0;
        (round(price.input_per_token), round(price.output_per_token))
    }

    #[test]
    fn built_in_prices_match_the_ways_providers_name_models() {
        let table = PriceTable::new(&[]).unwrap();
        let day = parse_day("2026-01-01").unwrap();
        for (model, expected) in [
            ("gpt-4o", (2.5, 10.0)),
            ("openai/gpt-4o-2024-08-06", (2.5, 10.0)),
            ("gpt-4o-mini", (0.15, 0.6)),
            ("gpt-4", (30.0, 60.0)),
            ("claude-3-opus-20240229", (15.0, 75.0)),
            ("anthropic.claude-3-sonnet-20240229-v1:0", (3.0, 15.0)),
            ("claude-3-5-sonnet-latest", (3.0, 15.0)),
            ("my-finetune", (0.0, 0.0)),
        ] {
            assert_eq!(
                per_million(table.price(model, false, day)),
                expected,
                "{model}"
            );
        }
        // A local model named like a hosted one is still free.
        assert_eq!(table.price("gpt-4o", true, day), Price::default());
    }

    #[test]
    fn configured_prices_win_and_start_dates_choose_the_period() {
        let raw = |model: &str, start: Option<&str>, input: f64| RawPrice {
            model: model.into(),
            start_date: start.map(str::to_string),
            input_cost_per_token: input,
            output_cost_per_token: 2.0 * input,
        };
        let table = PriceTable::new(&[
            raw("gpt-4o", Some("2026-06-01"), 1e-6),
            raw("smollm2.*", None, 1e-7),
        ])
        .unwrap();
        let before = parse_day("2026-05-31").unwrap();
        let after = parse_day("2026-06-01").unwrap();
        assert_eq!(per_million(table.price("gpt-4o", false, before)).0, 2.5);
        assert_eq!(per_million(table.price("gpt-4o", false, after)).0, 1.0);
        assert_eq!(
            per_million(table.price("SmolLM2-135M-Instruct", true, after)),
            (0.1, 0.2)
        );
        let cost = table.price("smollm2", true, after).cost(1000, 10);
        assert!((cost - (1000.0 * 1e-7 + 10.0 * 2e-7)).abs() < 1e-12);
        assert!(PriceTable::new(&[raw("(", None, 1.0)]).is_err());
        assert!(PriceTable::new(&[raw("x", Some("2026-13-01"), 1.0)]).is_err());
        assert!(PriceTable::new(&[raw("x", None, -1.0)]).is_err());
    }
}
