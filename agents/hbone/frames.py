"""HTTP/2 framing for HBONE's data path, sans-IO.

Theory of operation
-------------------
An HBONE connection carries bulk bytes in DATA frames; everything else on it
(the preface, SETTINGS, HEADERS/CONTINUATION with HPACK, RST_STREAM, PING,
GOAWAY, PRIORITY) is rare. The `h2` package is the reference implementation of
all of that, but it costs a few Python objects per frame and 16 KB frames by
default, which is what makes a naive h2 tunnel slow.

So the connection splits the received byte stream here, into three kinds of
events, without copying:

* ``DATA`` pieces (memoryviews into the caller's receive buffer) that go
  straight to the tunnel that owns the stream. A large DATA frame is handed on
  in pieces of at least `min_piece` bytes as they arrive, so a 16 MB frame
  never has to be buffered whole.
* ``WINDOW_UPDATE`` increments, which the connection applies to its own
  send windows (h2 never sees our DATA, so its windows would be wrong).
* ``RAW`` byte ranges holding every other frame, verbatim, for h2. While a
  header block is open (HEADERS/PUSH_PROMISE without END_HEADERS) everything
  goes RAW so h2 enforces the "only CONTINUATION may follow" rule.

The rest of the module builds the few frames the fast path writes itself
(DATA headers, WINDOW_UPDATE) and keeps the inbound flow-control books
(`InboundWindow`). Tests check all of it against hyperframe/h2.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
# error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, CONNECT_ERROR = 0x6, 0x7, 0x8, 0xA

DEFAULT_MAX_FRAME = 16_384
MAX_FRAME_LIMIT = 16_777_215  # 2^24 - 1, the largest SETTINGS_MAX_FRAME_SIZE
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535

# event kinds produced by FrameSplitter.split
EV_DATA, EV_WINDOW, EV_RAW = 0, 1, 2

_HEAD = struct.Struct(">BHBBI")  # 24-bit length as (hi byte, lo short), type, flags, stream id
_WINDOW = struct.Struct(">I")


class ConnectionError_(Exception):
    """A connection error (RFC 9113 §5.4.1) the peer caused; `code` goes into GOAWAY."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    """The 9-byte header of a frame."""
    return _HEAD.pack(length >> 16, length & 0xFFFF, ftype, flags, stream_id)


def pack_data_header(buf: bytearray | memoryview, offset: int, length: int, stream_id: int,
                     end_stream: bool = False) -> None:
    """Write a DATA frame header into `buf` at `offset` (the payload follows it in place)."""
    _HEAD.pack_into(buf, offset, length >> 16, length & 0xFFFF, DATA, END_STREAM if end_stream else 0, stream_id)


def data_frame(stream_id: int, payload: bytes, end_stream: bool = False) -> bytes:
    """One whole DATA frame (a copy: for small writes off the hot path)."""
    return frame_header(len(payload), DATA, END_STREAM if end_stream else 0, stream_id) + payload


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame."""
    return frame_header(4, WINDOW_UPDATE, 0, stream_id) + _WINDOW.pack(increment)


def empty_data(stream_id: int, end_stream: bool) -> bytes:
    """A zero-length DATA frame: how h2 learns of a DATA frame whose payload went elsewhere."""
    return frame_header(0, DATA, END_STREAM if end_stream else 0, stream_id)


class FrameSplitter:
    """Splits received HTTP/2 bytes into DATA pieces, WINDOW_UPDATEs and raw frames for h2.

    `split(view, pos, end)` consumes whole frames (and DATA payload pieces) from
    `view[pos:end]` and returns `(new_pos, events)`; bytes from `new_pos` on must be
    offered again with more data. Events are tuples:

    * ``(EV_DATA, stream_id, payload, last, end_stream, flow)``: `payload` a memoryview
      into `view`; `last` marks a frame's final piece, `end_stream` its END_STREAM flag
      (only on the last piece); `flow` the flow-controlled bytes this piece accounts for
      (payload plus padding and the pad-length byte).
    * ``(EV_WINDOW, stream_id, increment)``
    * ``(EV_RAW, bytes_view)``: one or more complete frames (or the client preface).
    """

    def __init__(self, *, expect_preface: bool = False, max_frame_size: int = DEFAULT_MAX_FRAME,
                 min_piece: int = 65_536) -> None:
        self.max_frame_size = max_frame_size
        self.min_piece = min_piece
        self._preface_left = len(PREFACE) if expect_preface else 0
        self._in_header_block = False
        # state inside a DATA frame body: stream, payload bytes left, padding bytes left, flags
        self._sid = 0
        self._data_left = 0
        self._pad_left = 0
        self._flags = 0
        self._frame_len = 0
        self._flow = 0  # flow-controlled bytes consumed but not yet reported (pad-length byte)

    @property
    def in_data_frame(self) -> bool:
        return bool(self._sid)

    def split(self, view: memoryview, pos: int, end: int) -> tuple[int, list[tuple]]:
        events: list[tuple] = []
        if self._preface_left:
            take = min(self._preface_left, end - pos)
            if take:
                events.append((EV_RAW, view[pos:pos + take]))
                pos += take
                self._preface_left -= take
            if self._preface_left:
                return pos, events
        raw_start = -1
        while True:
            if self._sid:  # inside a DATA frame body
                pos = self._data_body(view, pos, end, events)
                if self._sid:
                    break
                continue
            if end - pos < 9:
                break
            hi, lo, ftype, flags, sid = _HEAD.unpack_from(view, pos)
            length = hi << 16 | lo
            sid &= 0x7FFFFFFF
            if length > self.max_frame_size:
                raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes > max {self.max_frame_size}")
            if ftype == DATA and not self._in_header_block:
                if raw_start >= 0:
                    events.append((EV_RAW, view[raw_start:pos]))
                    raw_start = -1
                if sid == 0:
                    raise ConnectionError_(PROTOCOL_ERROR, "DATA frame on stream 0")
                if not flags & PADDED and end - pos >= 9 + length:  # a whole frame: the usual case
                    pos += 9
                    events.append((EV_DATA, sid, view[pos:pos + length], True, bool(flags & END_STREAM), length))
                    pos += length
                    continue
                if flags & PADDED and length == 0:
                    raise ConnectionError_(PROTOCOL_ERROR, "PADDED DATA frame without a pad length")
                pos += 9
                self._sid, self._flags, self._flow, self._frame_len = sid, flags, 0, length
                self._data_left, self._pad_left = (-1 if flags & PADDED else length), 0
                pos = self._data_body(view, pos, end, events)
                if self._sid:
                    break
                continue
            if ftype == WINDOW_UPDATE and not self._in_header_block:
                if length != 4:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "WINDOW_UPDATE frame of length != 4")
                if end - pos < 13:
                    break
                if raw_start >= 0:
                    events.append((EV_RAW, view[raw_start:pos]))
                    raw_start = -1
                events.append((EV_WINDOW, sid, _WINDOW.unpack_from(view, pos + 9)[0] & 0x7FFFFFFF))
                pos += 13
                continue
            if end - pos < 9 + length:
                break
            if raw_start < 0:
                raw_start = pos
            if ftype in (HEADERS, PUSH_PROMISE, CONTINUATION):
                self._in_header_block = not flags & END_HEADERS
            pos += 9 + length
        if raw_start >= 0:
            events.append((EV_RAW, view[raw_start:pos]))
        return pos, events

    def _data_body(self, view: memoryview, pos: int, end: int, events: list[tuple]) -> int:
        if self._data_left < 0:  # PADDED: the pad length byte comes first
            if pos >= end:
                return pos
            pad = view[pos]
            if pad >= self._frame_len:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA padding longer than the frame")
            self._data_left, self._pad_left, self._flow = self._frame_len - 1 - pad, pad, 1
            pos += 1
        if self._data_left:
            take = min(end - pos, self._data_left)
            if take < self._data_left and take < self.min_piece:
                return pos  # wait for a bigger piece
            self._data_left -= take
            last = not self._data_left and not self._pad_left
            events.append((EV_DATA, self._sid, view[pos:pos + take], last,
                           last and bool(self._flags & END_STREAM), self._flow + take))
            self._flow = 0
            pos += take
            if last:
                self._sid = 0
            if self._data_left or last:
                return pos
        # padding, or an empty frame
        take = min(end - pos, self._pad_left)
        self._pad_left -= take
        self._flow += take
        pos += take
        if not self._pad_left:
            events.append((EV_DATA, self._sid, view[pos:pos], True, bool(self._flags & END_STREAM), self._flow))
            self._sid = self._flow = 0
        return pos


@dataclass
class InboundWindow:
    """Receive-side flow control of one stream or the connection.

    `received(n)` books flow-controlled bytes as they arrive (an error if the peer
    overran the window we granted); `consumed(n)` books bytes handed on, and returns
    the WINDOW_UPDATE increment to send now (0 = wait). Updates are batched until half
    the window is free again: a peer blocked on a full window always gets one, the
    peer still has half a window in flight meanwhile, and a bulk transfer costs one
    small frame (and one wake-up of the peer's sender) per half window.
    """

    size: int
    outstanding: int = 0  # granted to the peer and not yet returned: received but unconsumed
    pending: int = 0      # consumed, not yet returned by a WINDOW_UPDATE

    def received(self, n: int) -> None:
        self.outstanding += n
        if self.outstanding > self.size:
            raise ConnectionError_(FLOW_CONTROL_ERROR, f"peer overran the flow-control window ({self.size})")

    def consumed(self, n: int) -> int:
        self.pending += n
        if self.pending >= self.size >> 1:
            increment, self.pending = self.pending, 0
            self.outstanding -= increment
            return increment
        return 0
