//! LiteLLM's proxy `config.yaml`, read as users already have it: `model_list` with
//! `litellm_params`, `router_settings`, `litellm_settings` and `general_settings`, and
//! `os.environ/NAME` values. Unknown keys and keys not supported yet are collected as
//! warnings, never fatal; only what would make the server unsafe or unusable fails.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_yaml::{Mapping, Value};

use super::bedrock::AwsCredentials;
use super::routing::Strategy;
use crate::pricing::Price;

/// One upstream deployment of a `model_name` group.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Deployment {
    /// Its position in `model_list`: identifies it for cooldowns.
    pub id: usize,
    pub model_name: String,
    /// `openai`, `hosted_vllm`, `anthropic`, ... (the part of `model` before the `/`).
    pub provider: String,
    /// The model name the upstream knows.
    pub upstream_model: String,
    pub api_base: Option<String>,
    pub api_key: Option<String>,
    pub weight: f64,
    pub timeout: Option<Duration>,
    /// Longest wait for the next piece of a stream (`stream_timeout`).
    pub stream_timeout: Option<Duration>,
    /// The deployment's own limits per minute, respected by every routing strategy.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// `model_info.input_cost_per_token` / `output_cost_per_token`, over the price table.
    pub price: Option<Price>,
    /// Bedrock: the `aws_*` params, else the `AWS_*` environment variables.
    pub aws: Option<AwsCredentials>,
}

#[derive(Debug, Default)]
pub struct LiteLlmConfig {
    pub deployments: Vec<Deployment>,
    pub master_key: Option<String>,
    pub num_retries: u32,
    pub timeout: Option<Duration>,
    /// `router_settings.fallbacks`: groups tried, in order, when a group fails.
    pub fallbacks: Vec<(String, Vec<String>)>,
    /// `router_settings.context_window_fallbacks`: groups tried when the prompt is too long.
    pub context_window_fallbacks: Vec<(String, Vec<String>)>,
    /// A deployment failing more than `allowed_fails` times in a minute rests for
    /// `cooldown` (LiteLLM's defaults: 3 and 5 s).
    pub allowed_fails: u32,
    pub cooldown: Duration,
    pub routing_strategy: Strategy,
    /// `router_settings.stream_timeout`, for deployments without their own.
    pub stream_timeout: Option<Duration>,
    /// `litellm_settings.cache`: keep whole answers for this long (in memory).
    pub cache_ttl: Option<Duration>,
    /// Things the file asks for that agentbox ignores, one line each.
    pub warnings: Vec<String>,
}

const TOP_LEVEL: &[&str] = &[
    "model_list",
    "router_settings",
    "litellm_settings",
    "general_settings",
    "environment_variables",
];
const PARAMS_SUPPORTED: &[&str] = &[
    "model",
    "api_base",
    "api_key",
    "weight",
    "timeout",
    "stream_timeout",
    "rpm",
    "tpm",
    "input_cost_per_token",
    "output_cost_per_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
];

/// Resolves `os.environ/NAME` from the environment; other strings are themselves.
fn resolve(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    match value.strip_prefix("os.environ/") {
        Some(name) => env(name).ok_or_else(|| format!("environment variable {name} is not set")),
        None => Ok(value.to_string()),
    }
}

fn string(map: &Mapping, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn seconds(value: Option<&Value>) -> Option<Duration> {
    let secs = match value? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
}

/// `[{model: [fallback, ...]}, ...]`, LiteLLM's shape for fallbacks.
fn fallback_list(field: &str, value: &Value) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let Value::Sequence(items) = value else {
        bail!("router_settings.{field} must be a list of {{model: [fallbacks]}}");
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Mapping(map) = item else {
            bail!("router_settings.{field}: each entry must be {{model: [fallbacks]}}");
        };
        for (model, targets) in map {
            let (Some(model), Value::Sequence(targets)) = (model.as_str(), targets) else {
                bail!("router_settings.{field}: each entry must be {{model: [fallbacks]}}");
            };
            let targets = targets
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            out.push((model.to_string(), targets));
        }
    }
    Ok(out)
}

impl LiteLlmConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading LiteLLM config {}", path.display()))?;
        Self::parse(&text, &|name| std::env::var(name).ok())
            .with_context(|| format!("LiteLLM config {}", path.display()))
    }

    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let root: Value = serde_yaml::from_str(text).context("not valid YAML")?;
        let Value::Mapping(root) = root else {
            bail!("the top level must be a mapping with model_list");
        };
        let mut config = LiteLlmConfig {
            num_retries: 2,
            allowed_fails: 3,
            cooldown: Duration::from_secs(5),
            ..LiteLlmConfig::default()
        };
        for key in root.keys().filter_map(Value::as_str) {
            if !TOP_LEVEL.contains(&key) {
                config
                    .warnings
                    .push(format!("unknown top-level key `{key}` is ignored"));
            }
        }
        if let Some(list) = root.get("model_list") {
            let Value::Sequence(list) = list else {
                bail!("model_list must be a list");
            };
            for (i, item) in list.iter().enumerate() {
                config.read_deployment(i, item, env)?;
            }
        }
        if let Some(Value::Mapping(router)) = root.get("router_settings") {
            for (key, value) in router {
                let Some(key) = key.as_str() else { continue };
                match key {
                    "num_retries" => {
                        config.num_retries = value.as_u64().map_or(config.num_retries, |n| n.min(10) as u32)
                    }
                    "timeout" => config.timeout = seconds(Some(value)),
                    "fallbacks" => config.fallbacks = fallback_list("fallbacks", value)?,
                    "context_window_fallbacks" => {
                        config.context_window_fallbacks =
                            fallback_list("context_window_fallbacks", value)?
                    }
                    "allowed_fails" => {
                        config.allowed_fails = value.as_u64().map_or(config.allowed_fails, |n| n.min(1000) as u32)
                    }
                    "cooldown_time" => {
                        config.cooldown = seconds(Some(value)).unwrap_or(config.cooldown)
                    }
                    "enable_fallbacks" if value.as_bool() == Some(true) => {}
                    "stream_timeout" => config.stream_timeout = seconds(Some(value)),
                    "routing_strategy" => match value.as_str().and_then(Strategy::parse) {
                        Some(strategy) => config.routing_strategy = strategy,
                        None => config.warnings.push(format!(
                            "router_settings.routing_strategy {value:?} is not supported; using simple-shuffle"
                        )),
                    },
                    _ => config.warnings.push(format!(
                        "router_settings.{key} is not supported yet and is ignored"
                    )),
                }
            }
        }
        if let Some(Value::Mapping(general)) = root.get("general_settings") {
            for (key, value) in general {
                let Some(key) = key.as_str() else { continue };
                if key == "master_key" {
                    let Some(raw) = value.as_str() else {
                        bail!("general_settings.master_key must be a string");
                    };
                    let key = resolve(raw, env)
                        .map_err(|e| anyhow::anyhow!("general_settings.master_key: {e}"))?;
                    if key.is_empty() {
                        bail!("general_settings.master_key is empty");
                    }
                    config.master_key = Some(key);
                } else {
                    config.warnings.push(format!(
                        "general_settings.{key} is not supported yet and is ignored"
                    ));
                }
            }
        }
        if let Some(Value::Mapping(settings)) = root.get("litellm_settings") {
            config.read_litellm_settings(settings);
        }
        Ok(config)
    }

    fn read_litellm_settings(&mut self, settings: &Mapping) {
        let mut ttl = Duration::from_secs(600);
        if let Some(Value::Mapping(params)) = settings.get("cache_params") {
            for (key, value) in params {
                match (key.as_str(), value) {
                    (Some("type"), Value::String(kind)) if kind == "local" => {}
                    (Some("type"), other) => self.warnings.push(format!(
                        "litellm_settings.cache_params.type {other:?} is not supported yet; the cache stays in memory"
                    )),
                    (Some("ttl"), value) => ttl = seconds(Some(value)).unwrap_or(ttl),
                    (key, _) => self.warnings.push(format!(
                        "litellm_settings.cache_params.{} is not supported yet and is ignored",
                        key.unwrap_or("?")
                    )),
                }
            }
        }
        for key in settings.keys().filter_map(Value::as_str) {
            match key {
                "cache" => {
                    if settings.get("cache").and_then(Value::as_bool) == Some(true) {
                        self.cache_ttl = Some(ttl);
                    }
                }
                "cache_params" => {}
                _ => self.warnings.push(format!(
                    "litellm_settings.{key} is not supported yet and is ignored"
                )),
            }
        }
    }

    fn read_deployment(
        &mut self,
        i: usize,
        item: &Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        let Value::Mapping(item) = item else {
            bail!("model_list[{i}] must be a mapping");
        };
        let Some(model_name) = string(item, "model_name") else {
            bail!("model_list[{i}].model_name is required");
        };
        let Some(Value::Mapping(params)) = item.get("litellm_params") else {
            bail!("model_list[{i}].litellm_params is required");
        };
        let Some(model) = string(params, "model") else {
            bail!("model_list[{i}].litellm_params.model is required");
        };
        let (provider, upstream_model) = match model.split_once('/') {
            Some((provider, name)) => (provider.to_string(), name.to_string()),
            // LiteLLM infers OpenAI for bare names like gpt-4.
            None => ("openai".to_string(), model.clone()),
        };
        for key in params.keys().filter_map(Value::as_str) {
            if !PARAMS_SUPPORTED.contains(&key) {
                self.warnings.push(format!(
                    "model_list[{i}].litellm_params.{key} is not supported yet and is ignored"
                ));
            }
        }
        let mut resolved = |key: &str| -> Option<String> {
            let raw = string(params, key)?;
            match resolve(&raw, env) {
                Ok(value) => Some(value),
                Err(e) => {
                    self.warnings
                        .push(format!("model_list[{i}].litellm_params.{key}: {e}"));
                    None
                }
            }
        };
        // As LiteLLM: without an `api_base`, the provider's base-URL variable, if set.
        let base_variables: &[&str] = match provider.as_str() {
            "openai" => &["OPENAI_API_BASE", "OPENAI_BASE_URL"],
            "anthropic" => &["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
            _ => &[],
        };
        let api_base = resolved("api_base")
            .or_else(|| base_variables.iter().find_map(|name| env(name)))
            .map(|b| b.trim_end_matches('/').to_string());
        let api_key = resolved("api_key");
        let weight = params
            .get("weight")
            .and_then(Value::as_f64)
            .filter(|w| *w > 0.0 && w.is_finite())
            .unwrap_or(1.0);
        let count = |key: &str| params.get(key).and_then(Value::as_u64);
        let aws = if provider == "bedrock" {
            // As boto3: the params' keys with their own token, else the environment's set.
            let from_params = (
                resolved("aws_access_key_id"),
                resolved("aws_secret_access_key"),
            );
            let (access, secret, token) = match from_params {
                (Some(access), Some(secret)) => {
                    (Some(access), Some(secret), resolved("aws_session_token"))
                }
                _ => (
                    env("AWS_ACCESS_KEY_ID"),
                    env("AWS_SECRET_ACCESS_KEY"),
                    env("AWS_SESSION_TOKEN"),
                ),
            };
            let region = resolved("aws_region_name")
                .or_else(|| env("AWS_REGION_NAME"))
                .or_else(|| env("AWS_REGION"));
            match (access, secret) {
                (Some(access_key_id), Some(secret_access_key)) => Some(AwsCredentials {
                    access_key_id,
                    secret_access_key,
                    session_token: token,
                    region: region.unwrap_or_else(|| "us-east-1".to_string()),
                }),
                _ => {
                    self.warnings.push(format!(
                        "model_list[{i}]: Bedrock needs aws_access_key_id and aws_secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); this deployment is not served"
                    ));
                    return Ok(());
                }
            }
        } else {
            None
        };
        // Prices may sit in `model_info` (LiteLLM's documented place) or `litellm_params`.
        let info = match item.get("model_info") {
            Some(Value::Mapping(info)) => Some(info),
            _ => None,
        };
        let cost = |key: &str| {
            info.and_then(|i| i.get(key))
                .or_else(|| params.get(key))
                .and_then(Value::as_f64)
                .filter(|c| *c >= 0.0 && c.is_finite())
        };
        let price = match (cost("input_cost_per_token"), cost("output_cost_per_token")) {
            (None, None) => None,
            (input, output) => Some(Price {
                input_per_token: input.unwrap_or(0.0),
                output_per_token: output.unwrap_or(0.0),
            }),
        };
        self.deployments.push(Deployment {
            id: i,
            model_name,
            provider,
            upstream_model,
            api_base,
            api_key,
            weight,
            timeout: seconds(params.get("timeout")),
            stream_timeout: seconds(params.get("stream_timeout")),
            rpm: count("rpm"),
            tpm: count("tpm"),
            price,
            aws,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The seed platform's example, verbatim.
    const SEED: &str = "model_list:
  - model_name: gpt-4
    litellm_params: {model: openai/gpt-4, api_key: os.environ/OPENAI_API_KEY}
  - model_name: claude-3
    litellm_params: {model: anthropic/claude-3-opus, api_key: os.environ/ANTHROPIC_API_KEY}
  - model_name: llama-70b
    litellm_params: {model: openai/llama-70b, api_base: http://vllm-llama:8000/v1}
router_settings: {routing_strategy: least-busy, enable_fallbacks: true}
general_settings: {master_key: os.environ/LITELLM_MASTER_KEY}
";

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-openai".into()),
            "LITELLM_MASTER_KEY" => Some("sk-master".into()),
            _ => None,
        }
    }

    #[test]
    fn the_seed_example_loads_with_warnings_for_what_is_not_supported() {
        let config = LiteLlmConfig::parse(SEED, &env).unwrap();
        assert_eq!(config.master_key.as_deref(), Some("sk-master"));
        let names: Vec<(&str, &str, &str)> = config
            .deployments
            .iter()
            .map(|d| {
                (
                    d.model_name.as_str(),
                    d.provider.as_str(),
                    d.upstream_model.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("gpt-4", "openai", "gpt-4"),
                ("claude-3", "anthropic", "claude-3-opus"),
                ("llama-70b", "openai", "llama-70b")
            ]
        );
        assert_eq!(config.deployments[0].api_key.as_deref(), Some("sk-openai"));
        assert_eq!(
            config.deployments[2].api_base.as_deref(),
            Some("http://vllm-llama:8000/v1")
        );
        let warnings = config.warnings.join("\n");
        assert!(
            warnings.contains("ANTHROPIC_API_KEY is not set"),
            "{warnings}"
        );
        assert_eq!(config.routing_strategy, Strategy::LeastBusy);
        assert!(!warnings.contains("routing_strategy"), "{warnings}");
        assert!(!warnings.contains("enable_fallbacks"), "{warnings}");
    }

    #[test]
    fn a_master_key_from_an_unset_variable_stops_start_up() {
        let err = LiteLlmConfig::parse(SEED, &|_| None).unwrap_err();
        assert!(
            format!("{err:#}").contains("LITELLM_MASTER_KEY is not set"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_keys_warn_and_bad_shapes_fail_naming_the_place() {
        let config = LiteLlmConfig::parse(
            "model_list: []\nsurprise: 1\nlitellm_settings: {cache: true, drop_params: true, cache_params: {type: redis, ttl: 30}}\n",
            &env,
        )
        .unwrap();
        let warnings = config.warnings.join("\n");
        assert!(warnings.contains("`surprise`"), "{warnings}");
        assert!(
            warnings.contains("litellm_settings.drop_params"),
            "{warnings}"
        );
        assert!(warnings.contains("cache_params.type"), "{warnings}");
        assert_eq!(config.cache_ttl, Some(Duration::from_secs(30)));
        let err = LiteLlmConfig::parse("model_list:\n  - model_name: x\n", &env).unwrap_err();
        assert!(
            format!("{err:#}").contains("model_list[0].litellm_params"),
            "{err:#}"
        );
        assert!(LiteLlmConfig::parse("[1, 2]", &env).is_err());
    }

    #[test]
    fn weights_timeouts_and_bare_model_names() {
        let config = LiteLlmConfig::parse(
            "model_list:\n  - model_name: m\n    litellm_params: {model: gpt-4o, weight: 3, timeout: 2.5, api_base: 'http://h/v1/', rpm: 60, stream_timeout: 4}\n    model_info: {input_cost_per_token: 0.000001, output_cost_per_token: 0.000002, mode: chat}\nrouter_settings: {num_retries: 4, timeout: 30, routing_strategy: cost-based-routing}\n",
            &env,
        )
        .unwrap();
        let d = &config.deployments[0];
        assert_eq!(
            (d.provider.as_str(), d.upstream_model.as_str()),
            ("openai", "gpt-4o")
        );
        assert_eq!(d.weight, 3.0);
        assert_eq!(d.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(d.api_base.as_deref(), Some("http://h/v1"));
        assert_eq!((d.rpm, d.tpm), (Some(60), None));
        assert_eq!(d.stream_timeout, Some(Duration::from_secs(4)));
        assert_eq!(
            d.price,
            Some(Price {
                input_per_token: 1e-6,
                output_per_token: 2e-6
            })
        );
        assert_eq!(config.routing_strategy, Strategy::CostBased);
        assert_eq!(config.num_retries, 4);
        assert_eq!(config.timeout, Some(Duration::from_secs(30)));
        assert_eq!(
            (config.allowed_fails, config.cooldown),
            (3, Duration::from_secs(5))
        );
    }

    #[test]
    fn bedrock_keys_come_from_the_params_or_else_the_environment() {
        let yaml = |params: &str| {
            format!(
                "model_list:\n  - model_name: b\n    litellm_params: {{model: bedrock/anthropic.claude-3-haiku-20240307-v1:0{params}}}\n"
            )
        };
        let aws_env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKENV".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret-env".to_string()),
            "AWS_SESSION_TOKEN" => Some("token-env".to_string()),
            _ => None,
        };
        let config = LiteLlmConfig::parse(&yaml(""), &aws_env).unwrap();
        let aws = config.deployments[0].aws.clone().unwrap();
        assert_eq!(
            (aws.access_key_id.as_str(), aws.session_token.as_deref()),
            ("AKENV", Some("token-env"))
        );
        assert_eq!(aws.region, "us-east-1");
        let config = LiteLlmConfig::parse(
            &yaml(
                ", aws_access_key_id: AKP, aws_secret_access_key: sp, aws_region_name: eu-west-1",
            ),
            &aws_env,
        )
        .unwrap();
        let aws = config.deployments[0].aws.clone().unwrap();
        assert_eq!(
            (
                aws.access_key_id.as_str(),
                aws.session_token,
                aws.region.as_str()
            ),
            ("AKP", None, "eu-west-1")
        );
        let config = LiteLlmConfig::parse(&yaml(""), &|_| None).unwrap();
        assert!(config.deployments.is_empty());
        assert!(config.warnings.join("\n").contains("Bedrock needs"));
    }

    #[test]
    fn fallbacks_and_cooldowns_are_read() {
        let config = LiteLlmConfig::parse(
            "model_list: []\nrouter_settings:\n  fallbacks: [{gpt-4: [claude-3, llama]}]\n  context_window_fallbacks: [{small: [big]}]\n  allowed_fails: 1\n  cooldown_time: 30\n",
            &env,
        )
        .unwrap();
        assert_eq!(
            config.fallbacks,
            [(
                "gpt-4".to_string(),
                vec!["claude-3".to_string(), "llama".to_string()]
            )]
        );
        assert_eq!(
            config.context_window_fallbacks,
            [("small".to_string(), vec!["big".to_string()])]
        );
        assert_eq!(
            (config.allowed_fails, config.cooldown),
            (1, Duration::from_secs(30))
        );
        assert!(LiteLlmConfig::parse("router_settings: {fallbacks: oops}\n", &env).is_err());
    }
}
