"""What an Export API answer must look like before any of it is staged: JSON lines, ending whole.

Why this exists: HTTP can report a clean 200 for an answer that must never replace a window.
A body whose framing is complete (close-delimited, or a whole gzip member) can still stop in the
middle of a line, and a proxy, captive portal or gateway can answer 200 with an HTML page or a
JSON error object; read as JSON lines, the first loaded half a window and the second an empty one
under a loose bad-line policy. So every Export body passes through `ExportBody`, which the client's
`_body_chunks` feeds (the only road from the wire to staging), and which raises:
- SourcePermanentError (reason "bad_response") when the Content-Type is neither text/plain nor a
  JSON type, or the first line is plainly not an export event (an HTML page, an error object, a
  JSON array or number, plain text): asking again spends Export API queries and gets the same;
- SourceStreamError (transient, retried by retry.py) when a non-empty body does not end with a
  newline: the stream was cut, so the whole query is read again.
A first line that starts like an object but does not parse is left to the bad-line policy: it may
be one of the split lines Mixpanel occasionally sends (MIXPANEL_SPEC.md section 4). Local files
never pass here, so a local file whose last line lacks a newline is still read.
"""

from __future__ import annotations

import orjson

from mixpanel_assets.mixpanel.errors import SourcePermanentError, SourceStreamError

HEAD_BYTES = 64 << 10  # the first line is judged on at most this much (an error page is far shorter)
SHOWN_CHARS = 200  # how much of a wrong answer an error message quotes
TERMINATED = b"terminated early"


class ExportBody:
    """Watches one decompressed Export body as it passes: holds back its first bytes until the
    first line is judged, keeps the last bytes to see how it ended."""

    def __init__(self, what: str, content_type: str | None, redact: tuple[str, ...] = ()):
        self.what = what
        self.media_type = (content_type or "").split(";")[0].strip().lower()
        self.redact = tuple(s for s in redact if s)
        self.size = 0
        self.tail = b""
        self._head: bytearray | None = bytearray()  # None once the first line is judged

    def feed(self, chunk: bytes) -> bytes:
        """Account for `chunk`; return what may go on to staging now (b"" while the head is held)."""
        self.size += len(chunk)
        self.tail = chunk[-256:] if len(chunk) >= 256 else (self.tail + chunk)[-256:]  # never copies a whole chunk
        if self._head is None:
            return chunk
        self._head += chunk
        start = len(self._head) - len(self._head.lstrip())
        end = self._head.find(b"\n", start)
        if end < 0 and len(self._head) - start < HEAD_BYTES:
            return b""
        whole = end >= 0
        self._judge(bytes(self._head[start:end if whole else start + HEAD_BYTES]), whole)
        return self._release()

    def finish(self) -> bytes:
        """The body ended (the transport said so): judge what is left, return the held bytes, and
        raise if the body does not end where a line ends."""
        held = b""
        if self._head is not None:
            first = bytes(self._head).strip()
            self._judge(first.split(b"\n", 1)[0], True)
            held = self._release()
        return held

    def check_end(self) -> None:
        """After the caller's own end checks (Mixpanel's 'terminated early' line): a cut line."""
        if TERMINATED in self.tail.rstrip().rsplit(b"\n", 1)[-1]:
            raise SourceStreamError(f"{self.what}: Mixpanel ended the export with 'export terminated early'; "
                                    "the window is incomplete")
        if self.size and not self.tail.endswith(b"\n"):
            raise SourceStreamError(
                f"{self.what}: the answer stopped in the middle of a line after {self.size} bytes although its "
                f"HTTP framing was complete (a cut stream); it ended with {self._shown(self.tail[-80:])}; "
                "nothing of it was loaded")

    def _release(self) -> bytes:
        data = bytes(self._head or b"")
        self._head = None
        return data

    def _judge(self, line: bytes, whole: bool) -> None:
        head = bytes(self._head or b"")
        if self.media_type and self.media_type != "text/plain" and "json" not in self.media_type:
            raise self._wrong(f"Content-Type {self.media_type!r} instead of JSON lines (text/plain)", head)
        if not line or TERMINATED in line:
            return  # an empty answer is an empty window; check_end reports an early end
        if not whole:  # a first line longer than HEAD_BYTES: only an event can be that long
            if not line.startswith(b"{"):
                raise self._wrong("a body that is not JSON lines", head)
            return
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            if line.startswith(b"{"):
                return  # a malformed or split event line: the bad-line policy counts it
            raise self._wrong("a body that is not JSON lines", head) from None
        if isinstance(value, dict) and ("event" in value or "properties" in value):
            return
        if isinstance(value, dict) and any(k in value for k in ("error", "message", "status")):
            said = value.get("error") or value.get("message") or value.get("status")
            raise self._wrong(f"a JSON error object instead of JSON lines (Mixpanel says {self._shown(str(said))})",
                              head)
        raise self._wrong('a first line that is not an export event (an object with "event" and "properties")',
                          head)

    def _wrong(self, what_came: str, head: bytes) -> SourcePermanentError:
        return SourcePermanentError(
            f"{self.what}: HTTP 200 with {what_came}; the answer began {self._shown(head)}. Nothing was "
            "loaded; check project.source.export_url and project.residency, and whether a proxy answers "
            "for Mixpanel", 200, "bad_response")

    def _shown(self, data: bytes | str) -> str:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = text.strip()[:SHOWN_CHARS]
        for secret in self.redact:
            text = text.replace(secret, "<secret>")
        return repr(text)
