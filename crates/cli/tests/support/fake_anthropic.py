"""A scripted stand-in for the Anthropic Messages API, over TLS.

usage: fake_anthropic.py HOST CERT KEY LOG
Prints the port it listens on. Every request is logged to LOG as one JSON
line (method, path, the x-api-key, authorization and anthropic-beta
headers, whether it offered tools). As the real API does, a bearer token
(an OAuth login) is refused with 401 unless `anthropic-beta` holds an
`oauth-` flag. $FAKE_COMMAND, when set, replaces the Bash command it asks for. POST /v1/messages answers like the real API, streaming with
SSE when asked: a conversation whose user text mentions hello.txt and that
offers the Bash tool gets one tool_use (create hello.txt and commit it);
once that tool's result is back, or for any other request, a short text.
$FAKE_API_BEFORE, when set, is a shell command the tool_use runs first.
"""
import http.server
import json
import os
import ssl
import sys

import os

host, cert, key, log = sys.argv[1:5]
COMMAND = os.environ.get("FAKE_COMMAND") or (
    os.environ.get("FAKE_API_BEFORE", "true")
    + "; echo hello > hello.txt && git add hello.txt && git commit -q -m 'add hello.txt' && echo committed")


def texts(content):
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]


def answer(req):
    msgs = req.get("messages", [])
    tools = [t.get("name") for t in req.get("tools", []) or []]
    done = any(
        isinstance(m.get("content"), list) and any(b.get("type") == "tool_result" for b in m["content"])
        for m in msgs
        if m.get("role") == "user"
    )
    asked = any("hello.txt" in t for m in msgs if m.get("role") == "user" for t in texts(m.get("content", "")))
    if asked and not done and "Bash" in tools:
        return [{"type": "tool_use", "id": "toolu_01", "name": "Bash",
                 "input": {"command": COMMAND, "description": "Create hello.txt and commit it"}}], "tool_use"
    return [{"type": "text", "text": "done: hello from the fake API"}], "end_turn"


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_any(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n)
        try:
            req = json.loads(raw) if raw else {}
        except ValueError:
            req = {}
        with open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "key": self.headers.get("x-api-key"),
                                "authorization": self.headers.get("authorization"),
                                "beta": self.headers.get("anthropic-beta"),
                                "tools": bool(req.get("tools"))}) + "\n")
        path = self.path.split("?")[0]
        bearer = (self.headers.get("authorization") or "").startswith("Bearer ")
        if bearer and "oauth-" not in (self.headers.get("anthropic-beta") or ""):
            return self.json({"type": "error", "error": {"type": "authentication_error",
                              "message": "OAuth authentication is currently not supported."}}, 401)
        if self.command == "POST" and path == "/v1/messages":
            content, stop = answer(req)
            if req.get("stream"):
                return self.stream(req, content, stop)
            return self.json({"id": "msg_01", "type": "message", "role": "assistant",
                              "model": req.get("model", "claude-test"), "content": content, "stop_reason": stop,
                              "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}})
        if path == "/v1/messages/count_tokens":
            return self.json({"input_tokens": 10})
        return self.json({})

    do_GET = do_POST = do_any

    def json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream(self, req, content, stop):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def ev(kind, data):
            data["type"] = kind
            chunk = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()

        ev("message_start", {"message": {"id": "msg_01", "type": "message", "role": "assistant",
                                         "model": req.get("model", "claude-test"), "content": [],
                                         "stop_reason": None, "stop_sequence": None,
                                         "usage": {"input_tokens": 10, "output_tokens": 1}}})
        for i, block in enumerate(content):
            if block["type"] == "text":
                ev("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
                ev("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": block["text"]}})
            else:
                start = dict(block, input={})
                ev("content_block_start", {"index": i, "content_block": start})
                ev("content_block_delta", {"index": i, "delta": {"type": "input_json_delta",
                                                                 "partial_json": json.dumps(block["input"])}})
            ev("content_block_stop", {"index": i})
        ev("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 5}})
        ev("message_stop", {})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *a):
        pass


s = http.server.ThreadingHTTPServer((host, 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
