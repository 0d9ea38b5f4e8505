"""Reading and writing records: JSON / JSONL input streamed record by record, atomic output, one-line errors."""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

try:  # the C encoder of json.dumps(str, ensure_ascii=False)
    from _json import encode_basestring as _encode_str
except ImportError:  # pragma: no cover
    from json.encoder import py_encode_basestring as _encode_str

_DUMPS = json.JSONEncoder(ensure_ascii=False).encode
try:
    import orjson
except ImportError:  # optional speed-up
    orjson = None


def dumps(obj: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False)``: the spacing every converted file uses."""
    return _encode_str(obj) if type(obj) is str else _DUMPS(obj)


class InputError(Exception):
    """A problem with a user's file, shown as ``PATH:LINE: problem`` (line omitted when it does not apply)."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, message: str):
        super().__init__(message)
        self.path, self.line, self.message = path, line, message

    def __str__(self) -> str:
        where = [str(p) for p in (self.path, self.line) if p is not None]
        return ":".join(where + [" " + self.message]) if where else self.message


class LabelError(ValueError):
    """A record (or answer) field of the wrong shape; the reader adds path and line."""


def fail(error: InputError | str, code: int = 2) -> "NoReturn":  # noqa: F821
    """Print one line on stderr and exit with status 2."""
    print(str(error), file=sys.stderr)
    raise SystemExit(code)


class UsageError(ValueError):
    """An invalid argument or combination of arguments, shown as ``error: problem``."""


@contextlib.contextmanager
def cli_errors():
    """The error handling of every command: InputError (``PATH:LINE: problem``) and UsageError
    (``error: problem``) become one line on stderr and exit status 2."""
    try:
        yield
    except InputError as err:
        fail(err)
    except UsageError as err:
        fail(f"error: {str(err).splitlines()[0] if str(err) else 'invalid arguments'}")


def _decode(raw: bytes, path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, line, f"not UTF-8 (byte {err.start + 1} of the line)") from None


def fast_loads(data: str | bytes) -> Any:
    """``json.loads`` through orjson (~5x faster) where it is installed; json decides wherever orjson refuses.

    Equal to ``json.loads`` except for integers beyond 64 bits, which orjson returns as floats: use it only where
    the values read are strings (evaluation), never where records are written back out.
    """
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # NaN, 1e400, lone surrogates, bad UTF-8, errors: json's verdict
            pass
    return json.loads(data)


def _json_error(err: json.JSONDecodeError) -> str:
    return f"invalid JSON: {err.msg} (column {err.colno})"


def read_records(path: str | os.PathLike, what: str = "record", fast: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a JSON Lines file or a file holding one JSON array.

    The format is detected from the first non-blank character. Both are streamed, so memory does not grow
    with the file. Blank lines are skipped. Every problem raises :class:`InputError` with the line number.
    ``fast``: JSON Lines are decoded with :func:`fast_loads` (see its caveat).
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise InputError(path, None, f"cannot open: {err.strerror}") from None
    with f:
        first = b""
        while True:
            first = f.readline()
            if not first or first.strip():
                break
        if not first:
            return
        if first.startswith(b"\xef\xbb\xbf"):
            first = first[3:]
        f.seek(0)
        if first.lstrip()[:1] == b"[":
            yield from _read_array(f, path, what)
        else:
            yield from _read_lines(f, path, what, fast_loads if fast else json.loads)


def _read_lines(f: IO[bytes], path, what: str, loads) -> Iterator[tuple[int, dict]]:
    for no, raw in enumerate(f, 1):
        if no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            rec = loads(raw)
        except json.JSONDecodeError as err:
            raise InputError(path, no, _json_error(err)) from None
        except UnicodeDecodeError:
            _decode(raw, path, no)
            raise
        if type(rec) is not dict:
            raise InputError(path, no, f"expected a JSON object per line, got {type(rec).__name__}")
        yield no, rec


def _read_array(f: IO[bytes], path, what: str) -> Iterator[tuple[int, dict]]:
    """Incrementally decode the elements of a top-level JSON array."""
    decoder = json.JSONDecoder()
    buf, pos, line = "", 0, 1  # line = line number of buf[pos]
    started = ended = False
    eof = False

    utf8 = codecs.getincrementaldecoder("utf-8")()

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        raw = f.read(1 << 20)
        eof = not raw
        try:
            text = utf8.decode(raw, eof)
        except UnicodeDecodeError:
            raise InputError(path, line + buf.count("\n", pos), "not UTF-8") from None
        if not started and not buf:
            text = text.lstrip("\ufeff")
        buf = buf[pos:] + text
        pos = 0
        return bool(text) or more()

    def skip_ws() -> bool:
        nonlocal pos, line
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < len(buf):
                return True
            if not more():
                return False

    while True:
        if not skip_ws():
            break
        ch = buf[pos]
        if not started:
            started = True
            pos += 1
            continue
        if ended:
            raise InputError(path, line, "unexpected data after the JSON array")
        if ch == "]":
            ended = True
            pos += 1
            continue
        if ch == ",":
            pos += 1
            continue
        while True:
            try:
                rec, end = decoder.raw_decode(buf, pos)
                if end == len(buf) and not eof and more():
                    continue  # a number or literal might continue in the next block
                break
            except json.JSONDecodeError as err:
                if not eof and more():
                    continue
                raise InputError(path, line + buf[pos:err.pos].count("\n"), _json_error(err)) from None
        if type(rec) is not dict:
            raise InputError(path, line, f"expected a JSON object as array element, got {type(rec).__name__}")
        yield line, rec
        line += buf.count("\n", pos, end)
        pos = end
    if started and not ended:
        raise InputError(path, line, "invalid JSON: the array is not closed")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w"):
    """Write to a temporary file beside ``path``; rename over it only when the block succeeds.

    On any error the temporary file is removed and an existing ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "\n") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
