"""A scripted AWS Bedrock runtime for the gateway tests: `POST /model/{modelId}/converse`
and `/converse-stream`.

Every request's SigV4 signature is recomputed with botocore (the AWS SDK's own signer)
over the headers the request says it signed, its `x-amz-date` and its body; a mismatch,
an unknown access key, a wrong region or service, a body that does not hash to
`x-amz-content-sha256`, or a date more than five minutes off is a 403 as AWS answers it.
Requests are kept (path, model id, headers, body, whether the signature held).

Answers: a Converse JSON message (a `toolUse` when the request offers tools and does not
already carry a tool result, text otherwise), or the same as binary event-stream frames
(`application/vnd.amazon.eventstream`, CRC32s by zlib) sent in HTTP chunks that split
frames. A user message containing `THROTTLE` gets a stream that fails with a
`throttlingException` after `messageStart`.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import re
import struct
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY_ID = "AKIDBEDROCKTEST"
SECRET_ACCESS_KEY = "bedrock-test-secret/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "bedrock"

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)

AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


# --- event-stream framing ------------------------------------------------------------

def _header(name: str, value: str) -> bytes:
    name_bytes, value_bytes = name.encode(), value.encode()
    return bytes([len(name_bytes)]) + name_bytes + b"\x07" + struct.pack(">H", len(value_bytes)) + value_bytes


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude with its CRC, headers (all strings), payload, CRC."""
    encoded = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, body: dict) -> bytes:
    # Bedrock pads events with a `p` field so their sizes leak nothing.
    payload = json.dumps({**body, "p": "abcdefghij"}).encode()
    return frame({":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}, payload)


def exception(exception_type: str, message: str) -> bytes:
    return frame({":exception-type": exception_type, ":content-type": "application/json",
                  ":message-type": "exception"}, json.dumps({"message": message}).encode())


def decode_frames(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The frames of a whole event stream (string headers only), CRCs checked."""
    out = []
    while data:
        total, headers_len = struct.unpack(">II", data[:8])
        assert struct.unpack(">I", data[8:12])[0] == zlib.crc32(data[:8])
        message = data[:total]
        assert struct.unpack(">I", message[-4:])[0] == zlib.crc32(message[:-4])
        headers, at, raw = {}, 0, message[12:12 + headers_len]
        while at < len(raw):
            name_len = raw[at]
            name = raw[at + 1:at + 1 + name_len].decode()
            at += 1 + name_len
            assert raw[at] == 7, "only string headers here"
            (value_len,) = struct.unpack(">H", raw[at + 1:at + 3])
            headers[name] = raw[at + 3:at + 3 + value_len].decode()
            at += 3 + value_len
        out.append((headers, message[12 + headers_len:-4]))
        data = data[total:]
    return out


# --- signature check -------------------------------------------------------------------

def check_signature(method: str, path: str, headers, body: bytes, secrets: dict[str, str]) -> str | None:
    """Why the request's SigV4 signature does not hold, or None when it does."""
    match = AUTHORIZATION.match(headers.get("authorization", ""))
    if not match:
        return "missing or malformed Authorization header"
    if match["key"] not in secrets:
        return "The security token included in the request is invalid."
    if (match["region"], match["service"]) != (REGION, SERVICE):
        return f"Credential should be scoped to a valid region and service {SERVICE}"
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "missing or malformed x-amz-date"
    if abs(time.time() - signed_at.timestamp()) > 300 or match["date"] != amz_date[:8]:
        return "Signature expired or not yet current"
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
        return "The provided x-amz-content-sha256 header does not match what was computed."
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed:
        return "host and x-amz-date must be signed"
    missing = [name for name in signed if headers.get(name) is None]
    if missing:
        return f"signed headers missing from the request: {missing}"
    request = AWSRequest(method=method, url=f"http://{headers['host']}{path}",
                         headers={name: headers[name] for name in signed}, data=body)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(match["key"], secrets[match["key"]]), SERVICE, REGION)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return None if hmac.compare_digest(expected, match["signature"]) else SIGNATURE_MISMATCH


# --- the server ------------------------------------------------------------------------

PATH = re.compile(r"^/model/(?P<model>[^/]+)/(?P<action>converse|converse-stream)$")


def _user_texts(body: dict) -> str:
    return " ".join(block.get("text", "") for m in body.get("messages", []) if m.get("role") == "user"
                    for block in m.get("content", []))


def _has_tool_result(body: dict) -> bool:
    messages = body.get("messages") or [{}]
    return any("toolResult" in block for block in messages[-1].get("content", []))


class BedrockUpstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: list = []
    secrets: dict = {ACCESS_KEY_ID: SECRET_ACCESS_KEY}

    def log_message(self, *args):
        pass

    def reply(self, status: int, payload: dict, error_type: str | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-amzn-requestid", "fake-request-id")
        if error_type:
            self.send_header("x-amzn-errortype", f"{error_type}:http://internal.amazon.com/coral/com.amazon.coral.service/")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body_bytes = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        route = PATH.match(self.path)
        problem = check_signature("POST", self.path, headers, body_bytes, BedrockUpstream.secrets)
        try:
            body = json.loads(body_bytes)
        except ValueError:
            body = None
        BedrockUpstream.received.append({
            "path": self.path, "model_id": urllib.parse.unquote(route["model"]) if route else None,
            "stream": bool(route and route["action"] == "converse-stream"),
            "headers": headers, "body": body, "signature_problem": problem})
        if problem:
            self.reply(403, {"message": problem}, "InvalidSignatureException"
                       if problem == SIGNATURE_MISMATCH else "UnrecognizedClientException")
            return
        if not route:
            self.reply(404, {"message": f"no route for {self.path}"}, "UnknownOperationException")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self.reply(400, {"message": "Malformed input request, please reformat your input and try again."},
                       "ValidationException")
            return
        wants_tool = bool(body.get("toolConfig")) and not _has_tool_result(body)
        if route["action"] == "converse-stream":
            self.stream(wants_tool, throttle="THROTTLE" in _user_texts(body))
            return
        content = ([{"toolUse": {"toolUseId": "tooluse_w1", "name": "get_weather", "input": {"city": "Lyon"}}}]
                   if wants_tool else [{"text": "Bonjour !"}])
        self.reply(200, {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": "tool_use" if wants_tool else "end_turn",
            "usage": {"inputTokens": 11, "outputTokens": 3, "totalTokens": 14},
            "metrics": {"latencyMs": 42}})

    def stream(self, wants_tool: bool, throttle: bool):
        frames = [event("messageStart", {"role": "assistant"})]
        if throttle:
            frames.append(exception("throttlingException", "Too many tokens, please wait before trying again."))
        elif wants_tool:
            frames += [
                event("contentBlockStart", {"contentBlockIndex": 0, "start": {
                    "toolUse": {"toolUseId": "tooluse_s1", "name": "get_weather"}}}),
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"city":'}}}),
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": ' "Lyon"}'}}}),
                event("contentBlockStop", {"contentBlockIndex": 0}),
                event("messageStop", {"stopReason": "tool_use"}),
            ]
        else:
            frames += [
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Bonjour"}}),
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " !"}}),
                event("contentBlockStop", {"contentBlockIndex": 0}),
                event("messageStop", {"stopReason": "end_turn"}),
            ]
        if not throttle:
            frames.append(event("metadata", {"usage": {"inputTokens": 11, "outputTokens": 3, "totalTokens": 14},
                                             "metrics": {"latencyMs": 42}}))
        self.send_response(200)
        self.send_header("content-type", "application/vnd.amazon.eventstream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-amzn-requestid", "fake-request-id")
        self.end_headers()
        # HTTP chunks that cut frames in two (prelude split too), so the client must reassemble.
        for data in frames:
            for piece in (data[:7], data[7:len(data) // 2], data[len(data) // 2:]):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.flush()
                time.sleep(0.002)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def start() -> tuple[ThreadingHTTPServer, str]:
    """A running fake on a free port, and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BedrockUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"
