//! AWS Signature Version 4 for one request, computed as botocore does: the canonical
//! request (path URI-encoded once more on top of its wire encoding, as every non-S3
//! service expects; sorted query; lower-cased, whitespace-folded headers; hashed body),
//! the string to sign, and the HMAC-SHA256 key chain date → region → service.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// What signs requests for one deployment.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub region: String,
}

/// Never prints the secret or the session token.
impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The headers to add to the request so that AWS accepts it: `x-amz-date`,
/// `x-amz-content-sha256`, `x-amz-security-token` (temporary credentials) and
/// `authorization`. `headers_to_sign` are headers the request will carry as given (say
/// `content-type`); `host` is taken from `url`. `body` must be the exact bytes sent.
pub fn sign(
    method: &str,
    url: &reqwest::Url,
    headers_to_sign: &[(&str, &str)],
    body: &[u8],
    credentials: &AwsCredentials,
    service: &str,
    now: SystemTime,
) -> Vec<(String, String)> {
    let amz_date = amz_date(now);
    let payload_hash = hex(&Sha256::digest(body));
    let mut added = vec![
        ("x-amz-date".to_string(), amz_date.clone()),
        ("x-amz-content-sha256".to_string(), payload_hash.clone()),
    ];
    if let Some(token) = &credentials.session_token {
        added.push(("x-amz-security-token".to_string(), token.clone()));
    }
    let mut signed: Vec<(String, String)> = headers_to_sign
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .chain(added.iter().cloned())
        .collect();
    signed.push(("host".to_string(), host(url)));
    let request = CanonicalParts {
        method,
        path: url.path(),
        query: url.query().unwrap_or(""),
        headers: &signed,
        payload_hash: &payload_hash,
    };
    added.push((
        "authorization".to_string(),
        authorization(&request, credentials, service, &amz_date),
    ));
    added
}

/// The `Host` header reqwest sends: the port only when it is not the scheme's default.
fn host(url: &reqwest::Url) -> String {
    let name = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_string(),
    }
}

struct CanonicalParts<'a> {
    method: &'a str,
    /// As on the wire (already percent-encoded).
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    payload_hash: &'a str,
}

/// `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
fn authorization(
    request: &CanonicalParts,
    credentials: &AwsCredentials,
    service: &str,
    amz_date: &str,
) -> String {
    let (canonical, signed_headers) = canonical_request(request);
    let date = &amz_date[..amz_date.len().min(8)];
    let scope = format!("{date}/{}/{service}/aws4_request", credentials.region);
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [credentials.region.as_str(), service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

/// The canonical request and its signed-headers list.
fn canonical_request(request: &CanonicalParts) -> (String, String) {
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| {
            let folded = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (name.to_ascii_lowercase(), folded)
        })
        .collect();
    headers.sort();
    // Repeated names are one line with comma-joined values.
    let mut lines: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        match lines.last_mut() {
            Some((last, joined)) if *last == name => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => lines.push((name, value)),
        }
    }
    let canonical_headers: String = lines
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = lines
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method.to_ascii_uppercase(),
        canonical_uri(request.path),
        canonical_query(request.query),
        request.payload_hash
    );
    (canonical, signed_headers)
}

/// The wire path without empty and dot segments, URI-encoded again: a model id's `:` is
/// `%3A` on the wire and `%253A` here, as botocore and the services compute it.
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let trailing = if path.ends_with('/') && !segments.is_empty() {
        "/"
    } else {
        ""
    };
    let normalized = format!("/{}{trailing}", segments.join("/"));
    uri_encode(&normalized, "/")
}

/// `key=value` pairs sorted by key, then value, as sent (botocore's URL-query rule).
fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes every byte but the unreserved ones and those in `keep`.
pub(super) fn uri_encode(text: &str, keep: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || b"-_.~".contains(&byte)
            || keep.as_bytes().contains(&byte)
        {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner_pad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer_pad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
fn amz_date(now: SystemTime) -> String {
    let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn example_credentials(session_token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: session_token.map(str::to_string),
            region: "us-east-1".into(),
        }
    }

    #[test]
    fn the_aws_get_vanilla_vector_signs_as_published() {
        let headers = [
            ("Host".to_string(), "example.amazonaws.com".to_string()),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ];
        let empty_hash = hex(&Sha256::digest(b""));
        let request = CanonicalParts {
            method: "GET",
            path: "/",
            query: "",
            headers: &headers,
            payload_hash: &empty_hash,
        };
        let authorization = authorization(
            &request,
            &example_credentials(None),
            "service",
            "20150830T123600Z",
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// The expected values are botocore 1.44.5's `SigV4Auth` over the same request.
    #[test]
    fn a_bedrock_call_signs_as_botocore_does_with_the_model_id_encoded_twice() {
        let url = reqwest::Url::parse(
            "http://127.0.0.1:8123/model/anthropic.claude-3-sonnet-20240229-v1%3A0/converse",
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_709_194_150); // 2024-02-29 08:09:10
        let headers = sign(
            "POST",
            &url,
            &[("content-type", "application/json")],
            br#"{"messages":[]}"#,
            &example_credentials(Some("session-token-123")),
            "bedrock",
            now,
        );
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap()
        };
        assert_eq!(get("x-amz-date"), "20240229T080910Z");
        assert_eq!(
            get("x-amz-content-sha256"),
            "5e4ce7b36ba37b78a5d5f9fd08e6b7b54ba6879d651aa46ec9e1d6fa24ebe30a"
        );
        assert_eq!(get("x-amz-security-token"), "session-token-123");
        assert_eq!(
            get("authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240229/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, \
             Signature=1b20373d732c12cc756a07d899770ed0b18b795f8ba586f80f6eed91f9e9fbfa"
        );
    }

    #[test]
    fn paths_queries_and_dates_are_canonical() {
        assert_eq!(
            canonical_uri("/model/a%3A0/converse"),
            "/model/a%253A0/converse"
        );
        assert_eq!(canonical_uri("//a/./b/../c/"), "/a/c/");
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(
            amz_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let secret = example_credentials(Some("tok"));
        assert!(!format!("{secret:?}").contains("EXAMPLEKEY"));
    }
}
