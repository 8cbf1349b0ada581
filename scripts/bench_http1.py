"""Parse throughput of agents.l7.http1 against h11, the reference: `python scripts/bench_http1.py`.

Each case parses `--count` requests and pulls every event out; the numbers are messages
(or MB of body) per second, best of `--repeat` runs. meshlab's parser reads them
pipelined from one buffer. h11 cannot read a second request before it has answered the
first, so it gets the kinder setup: one fresh connection per message, nothing sent (its
server loop, which must send a response each time, is slower still: `--h11-loop`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import h11  # noqa: E402

from agents.l7 import http1  # noqa: E402

SMALL_GET = (b"GET /productpage?u=normal HTTP/1.1\r\nHost: productpage.bookinfo:9080\r\n"
             b"User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
BROWSER_GET = (b"GET /api/v1/products/0/reviews HTTP/1.1\r\nHost: reviews.bookinfo.svc.cluster.local:9080\r\n"
               b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)\r\n"
               b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
               b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
               b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n"
               b"x-request-id: 8c6f5a4e-3b2d-4c1e-9f8a-7b6c5d4e3f2a\r\n"
               b"x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7\r\n"
               b"x-b3-spanid: e457b5a2e4d86bd1\r\nx-b3-sampled: 1\r\nend-user: jason\r\n\r\n")
POST_4K = (b"POST /ratings/0 HTTP/1.1\r\nHost: ratings:9080\r\nContent-Type: application/json\r\n"
           b"Content-Length: 4096\r\n\r\n" + b"x" * 4096)
CHUNKED = (b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"".join(b"%x\r\n" % 1024 + b"y" * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
BIG_BODY = b"PUT /blob HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (1 << 20)


def ours(data: bytes, count: int) -> int:
    """Parse `data` (count pipelined requests) with agents.l7.http1; returns requests seen."""
    parser = http1.Parser("server")
    parser.feed(data)
    seen = 0
    next_event, end = parser.next_event, http1.EndOfMessage
    while seen < count:
        event = next_event()
        if type(event) is end:
            seen += 1
    return seen


def theirs_loop(data: bytes, count: int) -> int:
    """h11 as a server drives it: pipelined input, a minimal response before each next request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    seen = 0
    while seen < count:
        event = conn.next_event()
        if type(event) is h11.EndOfMessage:
            seen += 1
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
    return seen


def theirs(one: bytes, count: int) -> int:
    """h11 parsing only: a fresh connection per message (`one` is a single message)."""
    for _ in range(count):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(one)
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass
    return count


def best(fn: Callable[[bytes, int], int], data: bytes, count: int, repeat: int) -> float:
    """The best wall time of `repeat` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert fn(data, count) == count
        times.append(time.perf_counter() - start)
    return min(times)


def streamed(fn: str, size: int, piece: int, repeat: int) -> float:
    """MB/s for a 1 MiB body fed in `piece`-byte reads."""
    body = b"z" * piece
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        if fn == "ours":
            parser = http1.Parser("server")
            parser.feed(BIG_BODY)
            parser.next_event()
            for _ in range(size // piece):
                parser.feed(body)
                parser.next_event()
            assert type(parser.next_event()) is http1.EndOfMessage
        else:
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(BIG_BODY)
            conn.next_event()
            for _ in range(size // piece):
                conn.receive_data(body)
                conn.next_event()
            assert type(conn.next_event()) is h11.EndOfMessage
        times.append(time.perf_counter() - start)
    return size / min(times) / 1e6


def main() -> None:
    """Run every case and print a table."""
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--count", type=int, default=20000, help="messages per case")
    args.add_argument("--repeat", type=int, default=5)
    args.add_argument("--h11-loop", action="store_true", help="drive h11 as a server loop (pipelined, answering)")
    opts = args.parse_args()
    print(f"{'case':<34}{'meshlab msg/s':>15}{'h11 msg/s':>13}{'speed-up':>10}")
    for name, one in [("small GET (3 headers)", SMALL_GET), ("browser GET (11 headers)", BROWSER_GET),
                      ("POST 4 KiB Content-Length", POST_4K), ("POST chunked 8 x 1 KiB", CHUNKED)]:
        a = opts.count / best(ours, one * opts.count, opts.count, opts.repeat)
        if opts.h11_loop:
            b = opts.count / best(theirs_loop, one * opts.count, opts.count, opts.repeat)
        else:
            b = opts.count / best(theirs, one, opts.count, opts.repeat)
        print(f"{name:<34}{a:>15,.0f}{b:>13,.0f}{a / b:>9.1f}x")
    print(f"{'case':<34}{'meshlab MB/s':>15}{'h11 MB/s':>13}{'speed-up':>10}")
    for piece in (16384, 262144):
        a = streamed("ours", 1 << 20, piece, opts.repeat)
        b = streamed("h11", 1 << 20, piece, opts.repeat)
        print(f"{f'1 MiB body in {piece // 1024} KiB reads':<34}{a:>15,.0f}{b:>13,.0f}{a / b:>9.1f}x")


if __name__ == "__main__":
    main()
