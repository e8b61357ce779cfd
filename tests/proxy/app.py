"""A small app behind Herald's backend hooks, for tests/e2e/proxy.rs.

Verifies every request's Standard Webhooks signature with the `standardwebhooks` library
(independent of Herald's code) and answers as an app would. Prints its port, then serves
until killed. Usage: python3 app.py SECRET
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = sys.argv[1]
HOOK = Webhook(SECRET)


def cookie(headers, name):
    for part in (headers.get("cookie") or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def connect(req):
    who = cookie(req["headers"], "session")
    if who == "alice":
        return {"result": {
            "user": "alice",
            "info": {"name": "Alice"},
            "channels": ["room:*", "private:*", "chat:*"],
            "pub_channels": ["chat:*", "room:*"],
            "presence_channels": ["room:*"],
        }}
    if who == "banned":
        return {"error": {"code": "banned", "message": "this account is banned"}}
    return {"error": {"code": "unauthorized", "message": "log in first"}}


def subscribe(req):
    if req["channel"] == "private:secret":
        return {"error": {"code": "nope", "message": "not for you"}}
    return {"result": {}}


def publish(req):
    data = req["data"]
    if isinstance(data, dict) and data.get("text") == "bad":
        return {"error": {"code": "moderated", "message": "watch your language"}}
    if isinstance(data, dict) and "text" in data:
        return {"result": {"data": {"text": data["text"].upper(), "by": req["user"]}}}
    return {"result": {}}


def rpc(req):
    if req["method"] == "add":
        return {"result": {"data": req["data"]["a"] + req["data"]["b"]}}
    return {"error": {"code": "no_such_method", "message": "unknown method"}}


ROUTES = {"/connect": connect, "/subscribe": subscribe, "/publish": publish, "/rpc": rpc}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/slow":
            time.sleep(3)
        try:
            HOOK.verify(body, {k.lower(): v for k, v in self.headers.items()})
        except Exception as e:  # any verification failure
            return self.answer(401, {"error": {"code": "bad_signature", "message": str(e)}})
        if self.path == "/broken":
            return self.answer(200, "not an object", raw=True)
        route = ROUTES.get(self.path)
        if route is None:
            return self.answer(404, {"error": {"code": "not_found", "message": self.path}})
        self.answer(200, route(json.loads(body)))

    def answer(self, status, value, raw=False):
        out = (value if raw else json.dumps(value)).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
