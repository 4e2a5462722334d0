#!/usr/bin/env python3
"""Measures how a page lays out in headless chromium at a given viewport width, over the
DevTools protocol: prints JSON {"page": [scrollWidth, innerWidth], "wraps": [overflow
of each .wrap box in px]}. Usage: layout.py URL WIDTH PROFILE_DIR. Bounded: gives up
after 30 s."""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request

import websockets


async def measure(ws_url, url, width):
    async with websockets.connect(ws_url, max_size=None) as ws:
        ids = iter(range(1, 1000))

        async def call(method, **params):
            i = next(ids)
            await ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == i:
                    return msg.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
                   mobile=width < 600)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("method") == "Page.loadEventFired":
                break
        expr = ("JSON.stringify({page: [document.documentElement.scrollWidth, window.innerWidth],"
                " wraps: Array.from(document.querySelectorAll('.wrap')).map(w => w.scrollWidth - w.clientWidth)})")
        result = await call("Runtime.evaluate", expression=expr, returnByValue=True)
        return result["result"]["value"]


def main():
    url, width, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(profile, exist_ok=True)
    port_file = os.path.join(profile, "DevToolsActivePort")
    if os.path.exists(port_file):
        os.remove(port_file)
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not os.path.exists(port_file) or len(open(port_file).read().split()) < 2:
            if time.time() > deadline:
                sys.exit("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = open(port_file).read().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        value = asyncio.run(asyncio.wait_for(measure(page["webSocketDebuggerUrl"], url, width), 30))
        print(value)
    finally:
        browser.kill()
        browser.wait()


if __name__ == "__main__":
    main()
