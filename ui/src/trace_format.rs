//! How the tracing pages write times, latencies, costs, token counts and JSON: one place,
//! so the list, the trace view, the sessions and the dashboard agree.

use serde_json::Value;

use crate::gpu_page::group_thousands;

/// Milliseconds since the epoch of an RFC 3339 time; `None` when it does not parse.
pub fn time_ms(rfc3339: &str) -> Option<f64> {
    let ms = js_sys::Date::parse(rfc3339);
    ms.is_finite().then_some(ms)
}

/// `2025-11-23 07:40:12` in the browser's time zone; the raw text when it does not parse.
pub fn local_time(rfc3339: &str) -> String {
    let Some(ms) = time_ms(rfc3339) else {
        return rfc3339.to_owned();
    };
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms));
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        date.get_full_year(),
        date.get_month() + 1,
        date.get_date(),
        date.get_hours(),
        date.get_minutes(),
        date.get_seconds(),
    )
}

/// `"—"`, `"850 ms"`, `"1.23 s"`, `"2 min 5 s"`.
pub fn latency(seconds: Option<f64>) -> String {
    match seconds.filter(|s| s.is_finite() && *s >= 0.0) {
        None => "—".to_owned(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) if s < 60.0 => format!("{s:.2} s"),
        Some(s) => format!("{} min {:.0} s", (s / 60.0).floor(), s % 60.0),
    }
}

/// US dollars with the decimals a price needs: `"$0.00"`, `"$0.000123"`, `"$12.50"`.
pub fn cost(dollars: Option<f64>) -> String {
    match dollars.filter(|d| d.is_finite()) {
        None => "—".to_owned(),
        Some(0.0) => "$0.00".to_owned(),
        Some(d) if d.abs() >= 1.0 => format!("${d:.2}"),
        Some(d) if d.abs() >= 0.01 => format!("${d:.4}"),
        Some(d) => format!("${d:.6}"),
    }
}

/// `12,345` (token counts arrive as floats from some SDKs).
pub fn tokens(count: f64) -> String {
    if !count.is_finite() || count <= 0.0 {
        return "0".to_owned();
    }
    group_thousands(count.round() as u64)
}

/// Indented JSON for the input, output and metadata panes.
pub fn pretty_json(value: &Value) -> String {
    match value {
        // A plain string shows as text, not as one long escaped line.
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// One line of text for a table cell: a chat's last message, a string, or compact JSON,
/// cut to `max_chars`.
pub fn preview(value: &Value, max_chars: usize) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .last()
            .map(|last| preview(last, max_chars))
            .unwrap_or_default(),
        Value::Object(map) => match map.get("content").or_else(|| map.get("text")) {
            Some(Value::String(text)) => text.clone(),
            _ => value.to_string(),
        },
        other => other.to_string(),
    };
    let single_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if single_line.chars().count() <= max_chars {
        return single_line;
    }
    let mut cut: String = single_line.chars().take(max_chars).collect();
    cut.push('…');
    cut
}

/// The first characters of an id, enough to tell ids apart on screen.
pub fn short_id(id: &str) -> String {
    let cut: String = id.chars().take(8).collect();
    if cut.len() < id.len() {
        format!("{cut}…")
    } else {
        cut
    }
}
