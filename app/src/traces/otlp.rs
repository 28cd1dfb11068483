//! OTLP/HTTP trace export requests, in protobuf (`application/x-protobuf`) or JSON
//! (`application/json`, OTLP's JSON mapping: camelCase, hex ids, 64-bit numbers as
//! strings), decoded into one plain `OtelSpan` list. The protobuf messages are the subset
//! of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1` that traces use.

use serde::Deserialize;
use serde_json::{Map, Value};

/// One span, with attribute values as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Map<String, Value>,
    pub resource: Map<String, Value>,
    pub scope_name: String,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// Span events: (name, time, attributes).
    pub events: Vec<(String, u64, Map<String, Value>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("not a valid OTLP protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not a valid OTLP JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("span {index}: {message}")]
    Span { index: usize, message: String },
}

mod proto {
    //! The protobuf messages, field numbers as in opentelemetry-proto.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6, 7")]
        pub value: Option<Kind>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
        #[prost(message, tag = "5")]
        Array(ArrayValue),
        #[prost(message, tag = "6")]
        KvList(KeyValueList),
        #[prost(bytes, tag = "7")]
        Bytes(Vec<u8>),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {
        #[prost(message, optional, tag = "1")]
        pub partial_success: Option<PartialSuccess>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PartialSuccess {
        #[prost(int64, tag = "1")]
        pub rejected_spans: i64,
        #[prost(string, tag = "2")]
        pub error_message: String,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value(value: proto::AnyValue) -> Value {
    match value.value {
        None => Value::Null,
        Some(proto::Kind::String(s)) => Value::String(s),
        Some(proto::Kind::Bool(b)) => Value::Bool(b),
        Some(proto::Kind::Int(i)) => Value::from(i),
        Some(proto::Kind::Double(d)) => {
            serde_json::Number::from_f64(d).map_or(Value::Null, Value::Number)
        }
        Some(proto::Kind::Array(a)) => Value::Array(a.values.into_iter().map(any_value).collect()),
        Some(proto::Kind::KvList(kv)) => Value::Object(attributes(kv.values)),
        Some(proto::Kind::Bytes(b)) => Value::String(hex(&b)),
    }
}

fn attributes(list: Vec<proto::KeyValue>) -> Map<String, Value> {
    list.into_iter()
        .map(|kv| (kv.key, kv.value.map_or(Value::Null, any_value)))
        .collect()
}

/// Decodes a protobuf export request.
pub fn decode_protobuf(body: &[u8]) -> Result<Vec<OtelSpan>, OtlpError> {
    let request = <proto::ExportTraceServiceRequest as prost::Message>::decode(body)?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = attributes(
            resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let status = span.status.unwrap_or_default();
                spans.push(OtelSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    name: span.name,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: attributes(span.attributes),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    status_code: status.code,
                    status_message: status.message,
                    events: span
                        .events
                        .into_iter()
                        .map(|e| (e.name, e.time_unix_nano, attributes(e.attributes)))
                        .collect(),
                });
            }
        }
    }
    Ok(spans)
}

/// The protobuf answer to an export: empty on full success, else the rejected count.
pub fn encode_response(rejected: usize, message: &str) -> Vec<u8> {
    let response = proto::ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| proto::PartialSuccess {
            rejected_spans: rejected as i64,
            error_message: message.to_string(),
        }),
    };
    prost::Message::encode_to_vec(&response)
}

// OTLP's JSON mapping.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonRequest {
    #[serde(default)]
    resource_spans: Vec<JsonResourceSpans>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonResourceSpans {
    #[serde(default)]
    resource: Option<JsonAttributes>,
    #[serde(default)]
    scope_spans: Vec<JsonScopeSpans>,
}
#[derive(Deserialize, Default)]
struct JsonAttributes {
    #[serde(default)]
    attributes: Vec<JsonKeyValue>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonScopeSpans {
    #[serde(default)]
    scope: Option<JsonScope>,
    #[serde(default)]
    spans: Vec<JsonSpan>,
}
#[derive(Deserialize)]
struct JsonScope {
    #[serde(default)]
    name: String,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonSpan {
    trace_id: String,
    span_id: String,
    #[serde(default)]
    parent_span_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    start_time_unix_nano: JsonU64,
    #[serde(default)]
    end_time_unix_nano: JsonU64,
    #[serde(default)]
    attributes: Vec<JsonKeyValue>,
    #[serde(default)]
    events: Vec<JsonEvent>,
    #[serde(default)]
    status: Option<JsonStatus>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonEvent {
    #[serde(default)]
    time_unix_nano: JsonU64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    attributes: Vec<JsonKeyValue>,
}
#[derive(Deserialize, Default)]
struct JsonStatus {
    #[serde(default)]
    code: i32,
    #[serde(default)]
    message: String,
}
#[derive(Deserialize)]
struct JsonKeyValue {
    key: String,
    #[serde(default)]
    value: Value,
}
/// A 64-bit number, which OTLP JSON may write as a string.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum JsonU64 {
    #[default]
    Missing,
    Number(u64),
    Text(String),
}

impl JsonU64 {
    fn get(&self) -> Option<u64> {
        match self {
            JsonU64::Missing => Some(0),
            JsonU64::Number(n) => Some(*n),
            JsonU64::Text(t) => t.parse().ok(),
        }
    }
}

/// An OTLP JSON `AnyValue` (`{"stringValue": ...}`, ...) as plain JSON.
fn json_any_value(value: &Value) -> Value {
    let Some(object) = value.as_object() else {
        return Value::Null;
    };
    if let Some(v) = object.get("stringValue") {
        return v.clone();
    }
    if let Some(v) = object.get("boolValue") {
        return v.clone();
    }
    if let Some(v) = object.get("intValue") {
        return match v {
            Value::String(s) => s.parse::<i64>().map_or(Value::Null, Value::from),
            other => other.clone(),
        };
    }
    if let Some(v) = object.get("doubleValue") {
        return v.clone();
    }
    if let Some(values) = object
        .get("arrayValue")
        .and_then(|a| a.get("values"))
        .and_then(Value::as_array)
    {
        return Value::Array(values.iter().map(json_any_value).collect());
    }
    if let Some(values) = object
        .get("kvlistValue")
        .and_then(|a| a.get("values"))
        .and_then(Value::as_array)
    {
        return Value::Object(
            values
                .iter()
                .filter_map(|kv| {
                    Some((
                        kv.get("key")?.as_str()?.to_string(),
                        json_any_value(kv.get("value")?),
                    ))
                })
                .collect(),
        );
    }
    if let Some(v) = object.get("bytesValue") {
        return v.clone();
    }
    Value::Null
}

fn json_attributes(list: &[JsonKeyValue]) -> Map<String, Value> {
    list.iter()
        .map(|kv| (kv.key.clone(), json_any_value(&kv.value)))
        .collect()
}

/// Decodes a JSON export request.
pub fn decode_json(body: &[u8]) -> Result<Vec<OtelSpan>, OtlpError> {
    let request: JsonRequest = serde_json::from_slice(body)?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = json_attributes(&resource_spans.resource.unwrap_or_default().attributes);
        for scope_spans in resource_spans.scope_spans {
            let scope_name = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                let index = spans.len();
                let time = |value: &JsonU64, field: &str| {
                    value.get().ok_or_else(|| OtlpError::Span {
                        index,
                        message: format!("{field} is not a number"),
                    })
                };
                let status = span.status.unwrap_or_default();
                spans.push(OtelSpan {
                    trace_id: span.trace_id.to_ascii_lowercase(),
                    span_id: span.span_id.to_ascii_lowercase(),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| span.parent_span_id.to_ascii_lowercase()),
                    name: span.name,
                    start_unix_nano: time(&span.start_time_unix_nano, "startTimeUnixNano")?,
                    end_unix_nano: time(&span.end_time_unix_nano, "endTimeUnixNano")?,
                    attributes: json_attributes(&span.attributes),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    status_code: status.code,
                    status_message: status.message,
                    events: span
                        .events
                        .iter()
                        .map(|e| {
                            (
                                e.name.clone(),
                                e.time_unix_nano.get().unwrap_or(0),
                                json_attributes(&e.attributes),
                            )
                        })
                        .collect(),
                });
            }
        }
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn protobuf_and_json_decode_to_the_same_spans() {
        let span = proto::Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            parent_span_id: vec![],
            name: "chat".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            attributes: vec![
                proto::KeyValue {
                    key: "gen_ai.request.model".into(),
                    value: Some(proto::AnyValue {
                        value: Some(proto::Kind::String("gpt-4o".into())),
                    }),
                },
                proto::KeyValue {
                    key: "gen_ai.usage.input_tokens".into(),
                    value: Some(proto::AnyValue {
                        value: Some(proto::Kind::Int(12)),
                    }),
                },
            ],
            events: vec![],
            status: Some(proto::Status {
                message: String::new(),
                code: 1,
            }),
        };
        let request = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(proto::Resource {
                    attributes: vec![proto::KeyValue {
                        key: "service.name".into(),
                        value: Some(proto::AnyValue {
                            value: Some(proto::Kind::String("svc".into())),
                        }),
                    }],
                }),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "s".into(),
                        version: String::new(),
                    }),
                    spans: vec![span],
                }],
            }],
        };
        let from_proto = decode_protobuf(&prost::Message::encode_to_vec(&request)).unwrap();
        let json = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
            "scopeSpans": [{"scope": {"name": "s"}, "spans": [{
                "traceId": "ABABABABABABABABABABABABABABABAB", "spanId": "0101010101010101",
                "name": "chat", "kind": 3,
                "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000000500000000u64,
                "attributes": [
                    {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}}],
                "status": {"code": 1}}]}]}]});
        let from_json = decode_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(from_proto, from_json);
        assert_eq!(from_proto[0].attributes["gen_ai.usage.input_tokens"], 12);
        assert_eq!(from_proto[0].trace_id, "ab".repeat(16));
        assert!(decode_protobuf(b"\xff\xff\xff").is_err());
        assert!(decode_json(b"{\"resourceSpans\": 3}").is_err());
    }
}
