"""End-to-end tests of `runner serve` on a real model (SmolLM2-135M-Instruct).

Run by scripts/test-serve.sh (which makes the venv, the container and installs Chromium):

    python tests/serve/test_serve.py --runner target/debug/runner --container DIR

The official `openai` client speaks to the OpenAI endpoints (plain, streamed, 4 concurrent
requests), raw HTTP checks the errors, the Ollama endpoints are read as NDJSON, and the chat
page is driven in headless Chromium (playwright, with the system's /usr/bin/chromium). At
temperature 0 every answer must equal `runner generate --chat` on the same prompt.
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time

import openai

CTX = 512
MAX = 48
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "How do I reverse a list in Python?",
]


class Server:
    """A `runner serve` process on a free port; its log goes to a file."""

    def __init__(self, runner, container, *args, env=None):
        self.log_path = f"/tmp/strata-serve-test-{os.getpid()}-{id(self)}.log"
        self.log = open(self.log_path, "w+")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(
            [runner, "serve", container, "--port", "0", "--ctx", str(CTX), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=e,
        )
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline and self.port is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runner serve exited {self.proc.returncode}:\n{self.text()}")
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", self.text())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        if self.port is None:
            raise RuntimeError(f"runner serve did not say where it listens:\n{self.text()}")

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, _ = self.request("GET", "/health")
            if status == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"not ready after {timeout}s:\n{self.text()}")

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, parsed JSON or text) of one raw HTTP request."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read().decode()
        c.close()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def generate_chat(runner, container, prompt, max_tokens=MAX):
    """`runner generate --chat` at temperature 0: the reference text."""
    out = subprocess.run(
        [runner, "generate", container, "--chat", "--prompt", prompt, "--temperature", "0",
         "--max-new-tokens", str(max_tokens), "--ctx", str(CTX), "-q"],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.removesuffix("\n")


def generate_plain(runner, container, prompt, max_tokens):
    out = subprocess.run(
        [runner, "generate", container, "--prompt", prompt, "--temperature", "0",
         "--max-new-tokens", str(max_tokens), "--ctx", str(CTX), "-q"],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.removesuffix("\n")


def chat(client, prompt, **kw):
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": prompt}], temperature=0,
        max_tokens=MAX, **kw)
    return r


def test_openai(s, runner, container):
    client = openai.OpenAI(base_url=s.url() + "/v1", api_key="none", max_retries=0)
    names = [m.id for m in client.models.list().data]
    check(names == [os.path.basename(os.path.realpath(container))], f"/v1/models lists {names}")

    single = {}
    for p in PROMPTS:
        r = chat(client, p)
        single[p] = r.choices[0].message.content
        check(r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0,
              f"chat answer to {p!r}: {single[p][:40]!r}... ({r.usage.completion_tokens} tokens)")
        want = generate_chat(runner, container, p)
        check(single[p] == want, f"equals `runner generate --chat` for {p!r}")

    chunks = list(client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0,
        max_tokens=MAX, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == single[PROMPTS[0]], f"streamed chunks ({len(chunks)}) concatenate to the answer")
    check(chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0,
          "the last chunk carries the usage")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(len(finishes) == 1, f"one finish_reason ({finishes})")

    results = {}

    def worker(p):
        results[p] = chat(client, p).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(all(results[p] == single[p] for p in PROMPTS),
          f"4 concurrent requests each equal their single answer ({time.time() - started:.1f}s)")
    log = s.text()
    check("POST /v1/chat/completions 200" in log, "one log line per request")

    r = client.completions.create(model="any", prompt="The capital of France is",
                                  temperature=0, max_tokens=12)
    want = generate_plain(runner, container, "The capital of France is", 12)
    check(r.choices[0].text == want, f"/v1/completions equals `runner generate`: {want!r}")

    # To the end of the context: as many tokens as `runner generate` makes there.
    r = client.completions.create(model="any", prompt="1, 2, 3,", temperature=0,
                                  extra_body={"ignore_eos": True})
    out = subprocess.run(
        [runner, "generate", container, "--prompt", "1, 2, 3,", "--temperature", "0", "--ignore-eos",
         "--max-new-tokens", str(2 * CTX), "--ctx", str(CTX), "-q"],
        check=True, capture_output=True, text=True).stdout.removesuffix("\n")
    n = r.usage.completion_tokens
    check(r.choices[0].finish_reason == "length" and n == CTX - r.usage.prompt_tokens + 1
          and r.choices[0].text == out,
          f"generation to the end of the context: {n} tokens, equal to `runner generate`")
    return single


def ndjson(s, path, body):
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
    c.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    check(r.status == 200 and r.getheader("Content-Type") == "application/x-ndjson",
          f"{path} streams NDJSON")
    lines = [json.loads(l) for l in r.read().decode().splitlines() if l.strip()]
    c.close()
    return lines


def test_ollama(s, single):
    p = PROMPTS[0]
    lines = ndjson(s, "/api/chat", {"model": "x", "messages": [{"role": "user", "content": p}],
                                     "options": {"temperature": 0, "num_predict": MAX}})
    text = "".join(l["message"]["content"] for l in lines)
    check(text == single[p] and lines[-1]["done"] and lines[-1]["eval_count"] > 0,
          "/api/chat NDJSON concatenates to the OpenAI answer")
    status, j = s.request("POST", "/api/generate", {"prompt": p, "stream": False,
                                                      "options": {"temperature": 0, "num_predict": MAX}})
    check(status == 200 and j["response"] == single[p] and j["done"], "/api/generate (not streamed)")
    status, j = s.request("GET", "/api/tags")
    check(status == 200 and j["models"][0]["details"]["family"] == "llama", "/api/tags")


def test_errors(s):
    good = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
    long_prompt = "word " * (CTX + 50)
    cases = [
        ("malformed JSON", b"{not json", "invalid JSON"),
        ("empty body", b"", "empty"),
        ("wrong type", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "invalid JSON"),
        ("messages not a list", {"messages": "hi"}, "invalid JSON"),
        ("no messages", {"messages": []}, "messages"),
        ("negative max_tokens", dict(good, max_tokens=-5), "max_tokens"),
        ("huge max_tokens", dict(good, max_tokens=10**12), "context"),
        ("n = 3", dict(good, n=3), "n = 3"),
        ("prompt past the context", {"messages": [{"role": "user", "content": long_prompt}]}, "context"),
    ]
    for what, body, needle in cases:
        status, j = s.request("POST", "/v1/chat/completions", body)
        check(status == 400 and needle in j["error"]["message"] and j["error"]["type"] == "invalid_request_error",
              f"{what} -> 400 ({j['error']['message'][:70]!r})")
        status, _ = s.request("POST", "/v1/chat/completions", good)
        check(status == 200, f"still serving after: {what}")
    status, j = s.request("POST", "/v1/completions", {"prompt": long_prompt})
    check(status == 400 and "context" in j["error"]["message"], "/v1/completions: prompt past the context -> 400")
    status, j = s.request("POST", "/api/chat", b"[1,2")
    check(status == 400 and "invalid JSON" in j["error"], "/api/chat malformed -> 400 Ollama-style")
    status, j = s.request("GET", "/v1/nothing")
    check(status == 404 and "no route" in j["error"]["message"], "unknown route -> 404")
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    c.request("OPTIONS", "/v1/chat/completions", headers={"Origin": "http://example.org",
                                                          "Access-Control-Request-Method": "POST"})
    r = c.getresponse()
    r.read()
    check(r.status == 204 and r.getheader("Access-Control-Allow-Origin") == "*", "CORS preflight -> 204")
    c.close()


def stream_open(s, body, headers):
    """Starts a streamed request and returns the open response."""
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
    h = {"Content-Type": "application/json"}
    h.update(headers)
    c.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers=h)
    return c, c.getresponse()


def test_key_queue_disconnect(runner, container):
    s = Server(runner, container, "--parallel", "1", "--queue", "1", "--api-key", "sekrit")
    try:
        s.wait_ready()
        status, j = s.request("GET", "/v1/models")
        check(status == 401 and "missing API key" in j["error"]["message"], "no key -> 401")
        status, j = s.request("GET", "/v1/models", headers={"Authorization": "Bearer nope"})
        check(status == 401 and j["error"]["type"] == "authentication_error", "wrong key -> 401")
        status, _ = s.request("GET", "/health")
        check(status == 200, "/health needs no key")
        client = openai.OpenAI(base_url=s.url() + "/v1", api_key="sekrit", max_retries=0)
        check(len(client.models.list().data) == 1, "the right key is accepted")

        key = {"Authorization": "Bearer sekrit"}
        long_req = {"prompt": "1, 2, 3, 4,", "max_tokens": CTX - 20, "temperature": 0, "stream": True}
        c1, r1 = stream_open(s, long_req, key)
        check(r1.status == 200, "a long streamed request takes the one slot")
        r1.fp.readline()  # its first event: decoding has begun
        # The second waits in the queue (size 1); the third finds it full.
        second = {}

        def waiter():
            second["status"], second["body"] = s.request(
                "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 4, "temperature": 0}, key)
            second["at"] = time.time()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(1.0)
        status, j = s.request("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key)
        check(status == 503 and "busy" in j["error"]["message"], "queue full -> 503")
        # The first client goes away: its slot frees, the queued request runs.
        left = time.time()
        c1.sock.shutdown(2)
        c1.close()
        t.join(timeout=120)
        check(second.get("status") == 200, "the queued request is answered once the client left")
        check(second["at"] - left < 30, f"... {second['at'] - left:.1f}s after it left")

        # A streamed request whose client leaves while it waits never runs: the one queued
        # behind it is answered long before 400 tokens could have been generated.
        c1, r1 = stream_open(s, long_req, key)
        r1.fp.readline()
        c2, r2 = stream_open(s, dict(long_req, max_tokens=400, ignore_eos=True), key)
        c2.sock.shutdown(2)
        c2.close()
        time.sleep(0.5)  # the engine forgets it at its next token
        second.clear()
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.5)
        left = time.time()
        c1.sock.shutdown(2)
        c1.close()
        t.join(timeout=120)
        check(second.get("status") == 200 and second["at"] - left < 10,
              f"a client that left the queue frees its place ({second.get('at', 0) - left:.1f}s)")
    finally:
        s.stop()


def test_bad_options(runner, container):
    out = subprocess.run([runner, "serve", container, "--parallel", "65"], capture_output=True, text=True)
    check(out.returncode == 2 and "--parallel 65" in out.stderr, "--parallel 65 refused")


def test_loading(runner, container):
    s = Server(runner, container, env={"STRATA_TEST_WARMUP_DELAY_MS": "3000"})
    try:
        status, j = s.request("GET", "/health")
        check(status == 503 and j["status"] == "loading" and "progress" in j, f"/health while loading -> 503 {j}")
        status, j = s.request("POST", "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "Hi"}]})
        check(status == 503 and "loading" in j["error"]["message"], "requests while loading -> 503")
        s.wait_ready()
        check(True, "/health -> 200 once loaded")
    finally:
        s.stop()


def test_draft(runner, container, single):
    s = Server(runner, container, "--draft", "ngram", "--temperature", "0")
    try:
        s.wait_ready()
        client = openai.OpenAI(base_url=s.url() + "/v1", api_key="none", max_retries=0)
        for p in PROMPTS[:2]:
            got = chat(client, p).choices[0].message.content
            check(got == single[p], f"--draft ngram: the same answer to {p!r}")
    finally:
        s.stop()


def test_page(s, expected):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page()
        page.goto(s.url() + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('ready')")
        # Every text the answer shows while it streams, recorded in the page
        # itself (polling from here can miss a short answer entirely).
        page.evaluate("""() => {
            window.partials = [];
            new MutationObserver(() => {
                const e = document.querySelector('.assistant[data-streaming]');
                if (e && e.textContent) window.partials.push(e.textContent);
            }).observe(document.body,
                       {subtree: true, childList: true, characterData: true, attributes: true});
        }""")
        page.fill("#input", PROMPTS[1])
        page.press("#input", "Enter")
        # The answer appears while it streams, then completes.
        page.wait_for_selector(".assistant[data-done]", timeout=120000)
        final = page.text_content(".assistant[data-done]")
        partials = page.evaluate("window.partials")
        shown = [p for p in partials if len(p) < len(final) and final.startswith(p)]
        check(shown, f"the page showed the answer as it streamed ({len(shown)} partial texts "
                     f"of {len(partials)} before the {len(final)} characters)")
        check(final == expected, f"the page's answer equals the API's: {final[:50]!r}...")
        check(page.text_content(".user") == PROMPTS[1], "the page shows the user's message")
        browser.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runner", required=True)
    ap.add_argument("--container", required=True)
    a = ap.parse_args()
    s = Server(a.runner, a.container, "--parallel", "4", "--temperature", "0")
    try:
        s.wait_ready()
        single = test_openai(s, a.runner, a.container)
        test_ollama(s, single)
        test_errors(s)
        # The page asks without max_tokens: the answer runs to the end of sequence.
        status, j = s.request("POST", "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": PROMPTS[1]}]})
        check(status == 200, "an answer with the server's defaults")
        test_page(s, j["choices"][0]["message"]["content"])
    finally:
        s.stop()
    test_draft(a.runner, a.container, single)
    test_key_queue_disconnect(a.runner, a.container)
    test_loading(a.runner, a.container)
    test_bad_options(a.runner, a.container)
    print("serve tests passed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
