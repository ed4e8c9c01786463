#!/usr/bin/env python3
"""The load harness's yardstick: a bare asyncio client that only logs in, SELECTs and IDLEs.

Opens COUNT implicit-TLS sessions to 127.0.0.1:PORT as users u00000, u00001, ... (at most RATE
new connections per second), each doing LOGIN, SELECT INBOX and IDLE, and prints one JSON line:
{"all_idling_s": seconds from start until every session got IDLE's "+", "failed": n}.
Run by examples/load (scale mode); usable alone with the same arguments.
"""
import argparse
import asyncio
import json
import ssl
import sys
import time


async def session(i, args, ctx, done, keep):
    user = f"u{i:05d}"
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", args.port, ssl=ctx, server_hostname="localhost")
    keep.append(writer)

    async def until(prefix):
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError(f"{user}: connection closed")
            if line.startswith(prefix):
                return line

    await until(b"* OK")
    writer.write(f'a LOGIN {user} "{args.password}"\r\n'.encode())
    if not (await until(b"a ")).startswith(b"a OK"):
        raise RuntimeError(f"{user}: LOGIN refused")
    writer.write(b"b SELECT INBOX\r\n")
    if not (await until(b"b ")).startswith(b"b OK"):
        raise RuntimeError(f"{user}: SELECT refused")
    writer.write(b"c IDLE\r\n")
    await until(b"+")
    done.append(time.monotonic())


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    ctx = ssl.create_default_context(cafile=args.ca)
    start = time.monotonic()
    done, keep, tasks = [], [], []
    for i in range(args.count):
        # Same spacing as idlesync's imap.connects_per_second.
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(session(i, args, ctx, done, keep)))
    results = await asyncio.wait_for(
        asyncio.gather(*tasks, return_exceptions=True), args.timeout)
    failed = [r for r in results if isinstance(r, BaseException)]
    for r in failed[:3]:
        print(f"bare_idle: {r!r}", file=sys.stderr)
    end = max(done) if done else time.monotonic()
    print(json.dumps({"all_idling_s": round(end - start, 3), "failed": len(failed),
                      "idling": len(done)}))
    for w in keep:
        w.close()


asyncio.run(main())
