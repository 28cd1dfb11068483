//! Talking to AWS Bedrock's Converse API on behalf of an OpenAI-format client: the chat
//! request to Converse's shape (`request.rs`), the answer back whole (`response.rs`) or
//! as a binary event stream (`event_stream.rs`) turned into OpenAI chunks (`stream.rs`),
//! and the SigV4 signature every call carries (`sigv4.rs`). No I/O here: the caller
//! sends the bytes it signed to `converse_path` under the runtime's base URL.

mod event_stream;
mod request;
mod response;
mod sigv4;
mod stream;

pub use self::event_stream::EventStreamDecoder;
pub use self::request::to_converse_request;
pub use self::response::to_openai_completion;
pub use self::sigv4::{AwsCredentials, sign};
pub use self::stream::StreamTranslator;

/// The name Bedrock runtime signs under (its endpoint is `bedrock-runtime`).
pub const SIGNING_SERVICE: &str = "bedrock";

/// The path of a Converse call for `model_id`, the id percent-encoded as one segment
/// (`anthropic.claude-3-sonnet-20240229-v1:0` → `…-v1%3A0`), as the AWS SDKs send it.
pub fn converse_path(model_id: &str, streaming: bool) -> String {
    let encoded = sigv4::uri_encode(model_id, "");
    let action = if streaming {
        "converse-stream"
    } else {
        "converse"
    };
    format!("/model/{encoded}/{action}")
}

/// The runtime endpoint of a region, for deployments without an `api_base`.
pub fn default_endpoint(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn model_ids_are_one_encoded_path_segment() {
        assert_eq!(
            converse_path("anthropic.claude-3-sonnet-20240229-v1:0", false),
            "/model/anthropic.claude-3-sonnet-20240229-v1%3A0/converse"
        );
        assert_eq!(
            converse_path("arn:aws:bedrock:us-east-1:1:inference-profile/x", true),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse-stream"
        );
        assert_eq!(
            default_endpoint("eu-west-1"),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
    }
}
