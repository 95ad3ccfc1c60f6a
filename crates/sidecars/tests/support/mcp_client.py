"""An independent MCP client (the official Python SDK) for supervise's
protocol tests. Prints one JSON object per step on stdout; the Rust test
asserts on them. Usage: mcp_client.py URL MODE [ARGS...]"""

import asyncio
import json
import sys

from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client


def out(step, **kw):
    print(json.dumps({"step": step, **kw}), flush=True)


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(session, name, args):
    try:
        r = await session.call_tool(name, args)
        body = text(r)
        try:
            body = json.loads(body)
        except ValueError:
            pass
        return {"is_error": bool(r.is_error), "body": body}
    except MCPError as e:
        return {"jsonrpc_error": e.error.code, "message": e.error.message}


async def protocol(url):
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write) as s:
            init = await s.initialize()
            out("initialize", server=init.server_info.name, tools=init.capabilities.tools is not None)
            tools = await s.list_tools()
            out("tools/list", names=sorted(t.name for t in tools.tools),
                required={t.name: t.input_schema.get("required", []) for t in tools.tools})
            out("list_egress_routes", **await call(s, "list_egress_routes", {}))
            out("recent_denials", **await call(s, "recent_denials", {"limit": 5}))
            out("missing_justification", **await call(s, "request_egress", {"host": "x.example"}))
            out("wrong_type", **await call(s, "recent_denials", {"limit": "many"}))
            out("unknown_tool", **await call(s, "no_such_tool", {}))
            out("bad_route", **await call(s, "request_egress", {"host": "-bad host", "justification": "j"}))
            out("empty_justification", **await call(s, "request_egress", {"host": "a.example", "justification": " "}))
            out("unknown_id", **await call(s, "check_request", {"id": "r0-0-0"}))


async def one_request(url, args):
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            return await call(s, "request_egress", args)


async def concurrent(url, hosts):
    """One session per host, all asking at once."""
    rs = await asyncio.gather(*[
        one_request(url, {"host": h, "justification": f"the task needs {h}"}) for h in hosts
    ])
    for h, r in zip(hosts, rs):
        out("request", host=h, **r)


async def request(url, args):
    out("request", **await one_request(url, json.loads(args)))


async def check(url, rid, wait):
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            out("check", **await call(s, "check_request", {"id": rid, "wait_seconds": int(wait)}))


def main():
    url, mode, *rest = sys.argv[1:]
    if mode == "protocol":
        asyncio.run(protocol(url))
    elif mode == "concurrent":
        asyncio.run(concurrent(url, rest))
    elif mode == "request":
        asyncio.run(request(url, rest[0]))
    elif mode == "check":
        asyncio.run(check(url, rest[0], rest[1]))
    else:
        sys.exit(f"unknown mode {mode}")


main()
