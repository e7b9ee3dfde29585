"""The browser client (``/client.js``) end to end, in headless Chromium.

Each test starts an in-process gateway, opens pages served by the node (the chat
example, ``/examples/chat/``, so that the page has the node's origin), imports
``/client.js`` into them and drives it with ``page.evaluate``. The system
Chromium is used through Python Playwright's async API (the gateway runs on the
same event loop); ``playwright install`` is never needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright import async_api as playwright_api  # the `test` extra brings it

from integration._client import scaled

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs once per page: record every raw frame (to see packed arrays), import the
# client, and keep what the callbacks report in window globals.
SETUP = """async () => {
  const Native = window.WebSocket;
  window.rawFrames = [];
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      this.addEventListener("message", (event) => window.rawFrames.push(event.data));
    }
  };
  window.wsgate = await import("/client.js");
  window.states = [];
  window.received = [];
  window.pushes = [];
  window.connectAs = async (token, options = {}) => {
    const client = await window.wsgate.connect("/ws", {
      token,
      backoffBase: 20,
      backoffCap: 200,
      onState: (state, detail) => window.states.push([state, detail ? detail.code : null]),
      ...options,
    });
    window.client = client;
    client.onPush((data) => window.pushes.push(data));
    return { cid: client.connectionId, user: client.user, state: client.state };
  };
  window.sub = async (pattern) => {
    await window.client.subscribe(pattern, (topic, data) => window.received.push([topic, data]));
  };
}"""


def http_base(gateway: Any) -> str:
    return f"http://{gateway.server.host}:{gateway.server.port}"


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing; the browser tests need the system Chromium: "
            "run `make system-deps` (or `apt-get install -y chromium`)",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def open_page(browser: Any) -> Any:
    """``await open_page(gw)``: a page at the node's origin with the client imported."""

    async def open_(gateway: Any) -> Any:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.errors = errors
        await page.goto(http_base(gateway) + "/examples/chat/")  # no token: it stays idle
        await page.evaluate(SETUP)
        return page

    return open_


async def wait_for(page: Any, expression: str, timeout: float = 5.0) -> None:
    """Poll ``expression`` in the page until it is true.

    Not ``page.wait_for_function``: it evaluates strings with ``eval`` inside the
    page, which the chat page's Content-Security-Policy forbids; ``evaluate`` does not.
    """
    async with asyncio.timeout(scaled(timeout)):
        while True:
            if await page.evaluate(expression):
                return
            await asyncio.sleep(0.01)


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), b""


async def test_static_files_are_served_from_an_allow_list(gw):
    base = http_base(gw)
    status, headers, body = await asyncio.to_thread(fetch, base + "/client.js")
    assert status == 200
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert b"export async function connect" in body
    status, headers, body = await asyncio.to_thread(fetch, base + "/examples/chat/")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert headers["Referrer-Policy"] == "no-referrer"
    assert b'src="/examples/chat/chat.js"' in body
    for path in [
        "/static/client.js",
        "/examples/chat/../client.js",
        "/examples/chat/%2e%2e/client.js",
        "/examples/chat/chat.html",
        "/examples/chat/../../pyproject.toml",
    ]:
        assert (await asyncio.to_thread(fetch, base + path))[0] == 404, path


async def test_connect_and_welcome(gw, mint, open_page):
    page = await open_page(gw)
    welcome = await page.evaluate("(token) => window.connectAs(token)", mint(user="alice"))
    assert welcome["user"] == "alice"
    assert welcome["state"] == "connected"
    assert await gw.node.connection_info(welcome["cid"]) is not None
    assert await page.evaluate("window.states") == [["connecting", None], ["connected", None]]
    classes = await page.evaluate(
        "[1000, 1001, 1006, 1011, 4000, 4003, 4099, 4100, 4103, 4500, 3000]"
        ".map(window.wsgate.closeClass)"
    )
    assert classes == [
        "terminal",
        "reconnect",
        "reconnect",
        "reconnect",
        "reconnect",
        "reconnect",
        "reconnect",
        "terminal",
        "terminal",
        "application",
        "terminal",
    ]
    assert page.errors == []


async def test_refused_token_rejects_connect_without_retrying(gw, open_page):
    page = await open_page(gw)
    result = await page.evaluate(
        """async () => {
          try { await window.connectAs("not-a-jwt"); return "connected"; }
          catch (error) { return [error.name, error.code]; }
        }"""
    )
    assert result == ["ConnectionClosed", 4100]
    assert await page.evaluate("window.states") == [["connecting", None], ["closed", 4100]]


async def test_publish_between_two_pages(gw, mint, open_page):
    alice, bob = await open_page(gw), await open_page(gw)
    grants = {"subscribe": ["chat.*"], "publish": ["chat.*"]}
    await alice.evaluate("(token) => window.connectAs(token)", mint(user="alice", **grants))
    await bob.evaluate("(token) => window.connectAs(token)", mint(user="bob", **grants))
    await alice.evaluate("window.sub('chat.*')")
    await bob.evaluate("window.client.publish('chat.lobby', {text: 'hi'})")
    await wait_for(alice, "window.received.length === 1")
    assert await alice.evaluate("window.received") == [["chat.lobby", {"text": "hi"}]]
    denied = await bob.evaluate(
        """window.client.publish('orders.x', 1).then(() => null,
             (error) => [error.name, error.code])"""
    )
    assert denied == ["RemoteError", "permission_denied"]
    # Unsubscribed: nothing more arrives.
    await alice.evaluate(
        """async () => {
          const sub = await window.client.subscribe('chat.other', () => {});
          await sub.unsubscribe();
        }"""
    )
    assert await alice.evaluate("window.received.length") == 1


async def test_packed_frames_are_decoded_in_order(gw, mint, open_page):
    page = await open_page(gw)
    await page.evaluate("(token) => window.connectAs(token)", mint(user="u", subscribe=["news.>"]))
    await page.evaluate("window.sub('news.>')")
    for n in range(10):  # no await yields here: all queued in the same tick
        await gw.node.publish(f"news.n{n}", n)
    await wait_for(page, "window.received.length === 10")
    assert await page.evaluate("window.received") == [[f"news.n{n}", n] for n in range(10)]
    assert await page.evaluate("window.rawFrames.some((frame) => frame.startsWith('['))")


async def test_call_and_requests(gw, mint, open_page):
    @gw.node.method("math.add")
    async def add(ctx: Any) -> Any:
        return sum(ctx.data)

    page = await open_page(gw)
    welcome = await page.evaluate(
        "(token) => window.connectAs(token)", mint(user="u", call=["math.*"])
    )
    assert await page.evaluate("window.client.call('math.add', [1, 2])") == 3
    missing = await page.evaluate(
        """window.client.call('math.sub', [1, 2], {timeout: 2000})
             .then(() => null, (error) => [error.name, error.code])"""
    )
    assert missing == ["RemoteError", "unknown_method"]

    await page.evaluate(
        """() => void window.client.onRequest(async (data) => {
             if (data.fail) throw new window.wsgate.RemoteError('invalid_input', 'no', {f: 1});
             return {echo: data};
           })"""
    )
    cid = welcome["cid"]
    assert await gw.node.request(cid, {"q": 1}, timeout=scaled(5)) == {"echo": {"q": 1}}
    with pytest.raises(Exception) as caught:
        await gw.node.request(cid, {"fail": True}, timeout=scaled(5))
    assert getattr(caught.value, "code", None) == "invalid_input"
    await gw.node.send(cid, {"note": "pushed"})
    await wait_for(page, "window.pushes.length === 1")
    assert await page.evaluate("window.pushes") == [{"note": "pushed"}]


async def test_reconnects_after_4000_and_resubscribes(gw, mint, open_page):
    page = await open_page(gw)
    first = await page.evaluate(
        "(token) => window.connectAs(token)", mint(user="u", subscribe=["chat.*"])
    )
    await page.evaluate("window.sub('chat.*')")
    assert await gw.node.disconnect(first["cid"], 4000, "slow consumer")
    await wait_for(
        page,
        f"window.client.state === 'connected' && window.client.connectionId !== {first['cid']!r}",
    )
    states = await page.evaluate("window.states")
    assert ["reconnecting", 4000] in states
    assert states[-1] == ["connected", None]
    await gw.node.publish("chat.lobby", "after")
    await wait_for(page, "window.received.length === 1")
    assert await page.evaluate("window.received") == [["chat.lobby", "after"]]


async def test_no_reconnect_after_takeover(gw, mint, open_page):
    page = await open_page(gw)
    token = mint(user="dev", connection_id="device-1")
    await page.evaluate("(token) => window.connectAs(token)", token)
    newer = await gw.connect(token)  # takes the connection id over: the page gets 4103
    await wait_for(page, "window.client.state === 'closed'")
    await asyncio.sleep(scaled(0.5))  # many backoff delays (20 ms base)
    assert await page.evaluate("window.states") == [
        ["connecting", None],
        ["connected", None],
        ["closed", 4103],
    ]
    assert await page.evaluate("[window.client.error.name, window.client.error.code]") == [
        "ConnectionClosed",
        4103,
    ]
    assert len(gw.server.connections) == 1
    assert newer.cid == "device-1"
    failed = await page.evaluate(
        "window.client.publish('x', 1).then(() => null, (error) => error.code)"
    )
    assert failed == 4103


async def test_chat_example_shows_presence_and_messages(gw, mint, browser):
    grants = {"subscribe": ["chat.rooms.*"], "publish": ["chat.rooms.*"]}
    base = http_base(gw) + "/examples/chat/?room=tea&token="
    alice = await browser.new_page()
    await alice.goto(base + mint(user="alice", **grants))
    await wait_for(alice, "document.getElementById('people').textContent === 'alice'")
    bob = await browser.new_page()
    await bob.goto(base + mint(user="bob", **grants))
    both = "document.getElementById('people').textContent === 'alicebob'"
    await wait_for(bob, both)  # alice answered bob's join
    await wait_for(alice, both)
    await bob.fill("#text", "hello <b>tea</b>")
    await bob.press("#text", "Enter")
    await wait_for(alice, "document.getElementById('log').textContent.includes('hello <b>tea</b>')")
    await bob.close(run_before_unload=True)  # pagehide: bob leaves
    await wait_for(alice, "document.getElementById('people').textContent === 'alice'")


README = Path(__file__).resolve().parents[2] / "README.md"


async def test_the_readme_browser_snippet_runs(gw, mint, browser):
    readme = await asyncio.to_thread(README.read_text, encoding="utf-8")
    [snippet] = re.findall(r"```js\n(.*?)```", readme, flags=re.S)
    # A module's static import becomes a dynamic one so the page can evaluate it.
    body = snippet.replace(
        'import { connect } from "/client.js";', 'const { connect } = await import("/client.js");'
    )
    assert "await import" in body, "the README snippet no longer imports /client.js"
    page = await browser.new_page()
    logged: list[str] = []
    seen = asyncio.Event()

    def on_console(message: Any) -> None:
        logged.append(message.text)
        if "chat.lobby" in message.text:
            seen.set()

    page.on("console", on_console)
    await page.goto(http_base(gw) + "/client.js")  # any page of the node's origin
    token = mint(user="alice", subscribe=["chat.>"], publish=["chat.>"])
    await page.evaluate(f"async () => {{ const token = {json.dumps(token)};\n{body}\n}}")
    await asyncio.wait_for(seen.wait(), scaled(5))
    assert any("chat.lobby" in line and "hi" in line for line in logged), logged
