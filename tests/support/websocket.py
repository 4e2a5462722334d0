"""WebSocket peers for the tests (Debian's python3-websockets, run with /usr/bin/python3).

  websocket.py server PORT
      An echo server on 127.0.0.1:PORT. The text message "headers" is answered with the
      handshake's request headers as JSON instead of an echo.
  websocket.py client URL CONNECT_PORT
      Connects over TLS (certificate not checked; SNI and Host from URL) to
      127.0.0.1:CONNECT_PORT, checks a text and a 1 MiB binary echo, prints the backend's
      view of the headers as JSON and "open", waits for a line on stdin, closes cleanly
      and prints "closed".
  websocket.py idle URL CONNECT_PORT SECS
      Connects, sends nothing (no pings), and prints "closed after N" when the
      connection is closed under it, or "still open" after SECS.
"""
import asyncio
import json
import os
import ssl
import sys
import time

import websockets


async def server(port):
    async def handler(ws, _path=None):
        async for msg in ws:
            if msg == "headers":
                await ws.send(json.dumps({k.lower(): v for k, v in ws.request_headers.raw_items()}))
            else:
                await ws.send(msg)

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None):
        await asyncio.Future()


def connect(url, port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return websockets.connect(url, ssl=ctx, host="127.0.0.1", port=port, ping_interval=None, max_size=None)


async def client(url, port):
    async with connect(url, port) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello", "text echo"
        blob = os.urandom(1 << 20)
        await ws.send(blob)
        assert await ws.recv() == blob, "binary echo"
        await ws.send("headers")
        print(await ws.recv(), flush=True)
        print("open", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await ws.send("bye")
        assert await ws.recv() == "bye", "echo after the pause"
    print("closed", flush=True)


async def idle(url, port, secs):
    start = time.monotonic()
    async with connect(url, port) as ws:
        try:
            await asyncio.wait_for(ws.wait_closed(), secs)
            print(f"closed after {time.monotonic() - start:.1f}", flush=True)
        except asyncio.TimeoutError:
            print("still open", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        asyncio.run(server(int(sys.argv[2])))
    elif mode == "client":
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(idle(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
