"""A scripted stand-in for the OpenAI Responses API, over TLS.

usage: fake_openai.py HOST CERT KEY LOG
Prints the port it listens on. Every request is logged to LOG as one JSON
line (method, path, authorization, the tool names offered, whether it was a
WebSocket upgrade). POST .../responses streams SSE like the real API: a
conversation whose user text mentions hello.txt gets one shell call (create
hello.txt and commit it); once its output is back, or otherwise, a short
message. A WebSocket upgrade is refused with 426, as a server without
WebSocket support answers.

It also stands in for the ChatGPT backend (Codex with a ChatGPT login, whose
request bodies are zstd-compressed) and
its token endpoint: GET .../wham/accounts/check lists the account the
request names in `chatgpt-account-id`, whose backend is this server, as
Codex's workspace routing expects; POST /oauth/token answers a refresh
grant with the tokens in $FAKE_REFRESHED (a JSON file) when its
`refresh_token` is $FAKE_REFRESH_TOKEN, once: refresh tokens are single-use,
and a spent or unknown one gets 401 as from the real endpoint.
$FAKE_STALL (seconds) holds a response that calls a tool that long
mid-stream. A bearer JWT whose `exp` has passed gets 401 `token_expired`, as from the
real backend. $FAKE_COMMAND, when set, replaces the shell command it asks
for.
"""
import base64
import os
import http.server
import json
import ssl
import subprocess
import sys
import time

host, cert, key, log = sys.argv[1:5]
SCRIPT = os.environ.get("FAKE_COMMAND") or \
    "echo hello > hello.txt && git add hello.txt && git commit -q -m 'add hello.txt' && echo committed"


def user_texts(items):
    for it in items if isinstance(items, list) else [{"role": "user", "content": items}]:
        if it.get("role") != "user":
            continue
        c = it.get("content")
        if isinstance(c, str):
            yield c
        elif isinstance(c, list):
            for b in c:
                if isinstance(b, dict):
                    yield b.get("text", "")


def tool_names(req):
    """Every tool offered: in `tools`, or (Codex 0.169) in `additional_tools`
    input items, namespaces flattened."""
    out = []

    def walk(ts):
        for t in ts or []:
            if isinstance(t, dict):
                if t.get("name"):
                    out.append((t.get("type"), t["name"]))
                walk(t.get("tools"))

    walk(req.get("tools"))
    for it in req.get("input") or []:
        if isinstance(it, dict) and it.get("type") == "additional_tools":
            walk(it.get("tools"))
    return out


def tool_call(tools):
    """The call item that runs SCRIPT with the tools on offer."""
    names = [n for _, n in tools]
    if ("custom", "exec") in tools:
        # Code mode: JavaScript that calls the nested exec_command tool.
        js = "const r = await tools.exec_command({cmd: %s, login: false}); text(r.output ?? r);" % json.dumps(SCRIPT)
        return {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_1", "name": "exec", "input": js,
                "status": "completed"}
    for name, args in (("exec_command", {"cmd": SCRIPT}), ("shell_command", {"command": SCRIPT}),
                       ("shell", {"command": ["bash", "-lc", SCRIPT]})):
        if name in names:
            return {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": name,
                    "arguments": json.dumps(args), "status": "completed"}
    return None


SPENT = set()


def expired(authorization):
    """Whether a bearer JWT's `exp` has passed (API keys are not JWTs)."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return False
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return isinstance(exp, (int, float)) and exp <= time.time()


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_any(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n)
        if (self.headers.get("content-encoding") or "").lower() == "zstd":
            # Codex compresses what it sends the ChatGPT backend, as the
            # real backend accepts. (The zstd program: no Python module
            # needed.)
            raw = subprocess.run(["zstd", "-dcq"], input=raw, capture_output=True, check=True).stdout
        try:
            req = json.loads(raw) if raw else {}
        except ValueError:
            req = {}
        upgrade = (self.headers.get("upgrade") or "").lower() == "websocket"
        tools = tool_names(req)
        with open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "authorization": self.headers.get("authorization"),
                                "account": self.headers.get("chatgpt-account-id"),
                                "tools": [n for _, n in tools],
                                "websocket": upgrade}) + "\n")
        if upgrade:
            return self.send(426, {"error": {"message": "websocket not supported"}})
        path = self.path.split("?")[0]
        if path != "/oauth/token" and expired(self.headers.get("authorization")):
            # As the ChatGPT backend answers an access token past its `exp`.
            return self.send(401, {"error": {"code": "token_expired", "message": "Provided authentication token is expired."}})
        if self.command == "POST" and path.endswith("/responses"):
            return self.respond(req, tools)
        if self.command == "POST" and path == "/oauth/token":
            token = req.get("refresh_token")
            ok = req.get("grant_type") == "refresh_token" and token == os.environ.get(
                "FAKE_REFRESH_TOKEN") and req.get("client_id") and token not in SPENT
            if not ok:
                return self.send(401, {"error": {"code": "refresh_token_reused" if token in SPENT else "invalid_grant"}})
            SPENT.add(token)
            with open(os.environ["FAKE_REFRESHED"]) as f:
                return self.send(200, json.load(f))
        if path.endswith("/wham/accounts/check"):
            account = self.headers.get("chatgpt-account-id")
            return self.send(200, {"accounts": [{"id": account, "name": None, "structure": "personal",
                                                 "plan_type": "plus",
                                                 "workspace_backend_origin": "https://" + self.headers.get("host"),
                                                 "account_routing_override": "NO_CONSTRAINT"}],
                                   "account_ordering": [account]})
        if path.endswith("/models"):
            return self.send(200, {"models": [], "data": [], "object": "list"})
        return self.send(200, {})

    do_GET = do_POST = do_any

    def send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def respond(self, req, tools):
        items = req.get("input", [])
        done = isinstance(items, list) and any(
            isinstance(i, dict) and i.get("type") in ("function_call_output", "custom_tool_call_output")
            for i in items)
        asked = any("hello.txt" in t for t in user_texts(items))
        item = tool_call(tools) if asked and not done else None
        if item is None:
            item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "done: hello from the fake API", "annotations": []}]}
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        resp = {"id": "resp_1", "object": "response", "status": "in_progress", "model": req.get("model", "gpt-test"),
                "output": []}

        def ev(kind, data):
            data["type"] = kind
            chunk = f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()

        ev("response.created", {"response": resp})
        if item.get("type") != "message" and os.environ.get("FAKE_STALL"):
            # A slow first turn: the next request comes FAKE_STALL seconds
            # later (a long turn, as a real model's can be).
            time.sleep(float(os.environ["FAKE_STALL"]))
        ev("response.output_item.added", {"output_index": 0, "item": item})
        ev("response.output_item.done", {"output_index": 0, "item": item})
        done_resp = dict(resp, status="completed", output=[item],
                         usage={"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                                "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0},
                                "total_tokens": 15})
        ev("response.completed", {"response": done_resp})
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
