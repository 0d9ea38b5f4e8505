"""Reading and writing records: JSON / JSONL / Parquet input streamed record by record, atomic output, one-line
errors."""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import signal
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, NoReturn

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
        return one_line(":".join(where + [" " + self.message]) if where else self.message)


_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """``text`` with every character that could break the line (``str.splitlines``) written as an escape."""
    return text.translate(_LINE_BREAKS)


class LabelError(ValueError):
    """A record (or answer) field of the wrong shape; the reader adds path and line."""


def fail(error: InputError | str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit with status 2."""
    print(str(error), file=sys.stderr)
    raise SystemExit(code)


class UsageError(ValueError):
    """An invalid argument or combination of arguments, shown as ``error: problem``."""


# ---- signals: SIGINT / SIGTERM / SIGHUP unwind like an error, so temporary files are removed ----------------
SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT / SIGTERM / SIGHUP; :func:`cli_errors` turns it into exit 128 + N."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    for s in SIGNALS:  # a second signal must not interrupt the clean-up of the first
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def cli_errors():
    """The frame of every command: ``InputError`` (``PATH:LINE: problem``) and ``UsageError`` (``error: problem``)
    -> one line, exit 2; an ``OSError`` while writing -> one line, exit 1; SIGINT / SIGTERM / SIGHUP -> temporary
    files removed (the exception unwinds through :func:`atomic_writer`), one line, exit 128 + N (130, 143, 129).
    No traceback in any of these cases."""
    previous = {}
    try:
        for s in SIGNALS:
            previous[s] = signal.signal(s, _on_signal)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    except InputError as err:
        fail(err)
    except UsageError as err:
        fail(f"error: {str(err).splitlines()[0] if str(err) else 'invalid arguments'}")
    except (Interrupted, KeyboardInterrupt) as exc:
        for tmp in list(_LIVE_TEMPS):  # the signal may have come between mkstemp and atomic_writer's try
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}; temporary files removed, inputs untouched",
              file=sys.stderr)
        raise SystemExit(128 + signum) from None
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"{where}{err.strerror or err}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---- the output guard: checked before any work ---------------------------------------------------------------
def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | os.PathLike, flag: str, inputs: dict[str, Any] | None = None) -> None:
    """Refuse (``InputError``) an output file that would destroy an input or cannot be written.

    ``inputs``: ``{flag: path}`` of everything the command reads (None values skipped); an output that is the
    same file as one of them (``os.path.samefile``, else the resolved path) is refused. The output must not be
    a directory nor a special file, must not lie under a regular file, and the nearest existing folder above it
    must be writable. Call before the model loads or the data is read; ``-`` (stdout) passes.
    """
    path = os.fspath(path)
    if path == "-":
        return
    if not path.strip():
        raise InputError(None, None, f"{flag}: empty path")
    for in_flag, src in (inputs or {}).items():
        if src is not None and src != "-" and _same_file(path, os.fspath(src)):
            raise InputError(path, None, f"{flag} is the same file as {in_flag}; refusing to overwrite an input "
                                         "(choose another output path)")
    if os.path.isdir(path) or path.endswith((os.sep, "/")):
        raise InputError(path, None, f"{flag} is a directory; give a file path")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise InputError(path, None, f"{flag} is not a regular file (it would be replaced by one)")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        if os.path.lexists(folder):
            raise InputError(path, None, f"{flag}: {folder} is a broken symbolic link")
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(path, None, f"{flag}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(path, None, f"{flag}: cannot write in {folder} (permission denied)")


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


TOO_DEEP = "invalid JSON: nested too deeply"
LONE_SURROGATE = ("a string holds a lone surrogate (a \\ud800-\\udfff escape without its pair): not Unicode "
                  "text, cannot be written as UTF-8")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def text_problem(value: Any, source: str | bytes) -> str | None:
    """Why a decoded JSON ``value`` cannot be written back as UTF-8 (a lone surrogate), or None.

    ``source`` is the JSON text it was decoded from: only text with a surrogate escape is examined further.
    """
    if isinstance(source, bytes):
        if (b"\\ud" not in source and b"\\uD" not in source) or not _SURROGATE_ESCAPE_BYTES.search(source):
            return None
    elif ("\\ud" not in source and "\\uD" not in source) or not _SURROGATE_ESCAPE.search(source):
        return None
    try:
        dumps(value).encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE
    return None


def escape_surrogates(json_text: str) -> str:
    """JSON text with every lone surrogate written as its ``\\uXXXX`` escape: the same JSON value, and UTF-8
    encodable (``json.dumps(..., ensure_ascii=False)`` leaves them raw)."""
    if _RAW_SURROGATE.search(json_text) is None:
        return json_text
    return _RAW_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), json_text)


_RAW_SURROGATE = re.compile("[\ud800-\udfff]")


def read_records(path: str | os.PathLike, what: str = "record", fast: bool = False,
                 strict_text: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` from a JSON Lines file, a file holding one JSON array, or a Parquet file.

    The format is detected from the first bytes (Parquet also from a ``.parquet`` / ``.pq`` name); for
    Parquet the "line number" is the row number (from 1) and every row is a record, its columns the fields
    (:func:`read_parquet`). All three are streamed, so memory does not grow with the file. Blank lines are
    skipped. Every problem raises :class:`InputError` with the line number. ``fast``: JSON Lines are decoded
    with :func:`fast_loads` (see its caveat). ``strict_text``: a string with a lone surrogate (``"\\ud800"``,
    valid JSON but not Unicode text) is refused; pass False where such text is only scored, never written back
    (model answers in evaluation).
    """
    try:
        f = open(path, "rb")
    except OSError as err:
        raise InputError(path, None, f"cannot open: {err.strerror}") from None
    with f:
        if is_parquet(path, f.read(len(PARQUET_MAGIC))):
            f.close()
            yield from read_parquet(path)
            return
        f.seek(0)
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
            yield from _read_array(f, path, what, strict_text)
        else:
            yield from _read_lines(f, path, what, fast_loads if fast else json.loads, strict_text)


def _read_lines(f: IO[bytes], path, what: str, loads, strict_text: bool) -> Iterator[tuple[int, dict]]:
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
        except RecursionError:
            raise InputError(path, no, TOO_DEEP) from None
        if type(rec) is not dict:
            raise InputError(path, no, f"expected a JSON object per line, got {type(rec).__name__}")
        problem = strict_text and text_problem(rec, raw)
        if problem:
            raise InputError(path, no, problem)
        yield no, rec


def _read_array(f: IO[bytes], path, what: str, strict_text: bool) -> Iterator[tuple[int, dict]]:
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
            except RecursionError:
                raise InputError(path, line, TOO_DEEP) from None
        if type(rec) is not dict:
            raise InputError(path, line, f"expected a JSON object as array element, got {type(rec).__name__}")
        problem = strict_text and text_problem(rec, buf[pos:end])
        if problem:
            raise InputError(path, line, problem)
        yield line, rec
        line += buf.count("\n", pos, end)
        pos = end
    if started and not ended:
        raise InputError(path, line, "invalid JSON: the array is not closed")


# ---- Parquet ----------------------------------------------------------------------------------------------------
PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_EXTRA = "pip install pyarrow"
PARQUET_BATCH = 1024  # rows decoded at a time


def is_parquet(path: str | os.PathLike, head: bytes) -> bool:
    """A Parquet file: named ``*.parquet`` / ``*.pq``, or starting with Parquet's magic bytes ``head``."""
    return head.startswith(PARQUET_MAGIC) or str(path).lower().endswith(PARQUET_SUFFIXES)


def _json_type_problem(name: str, dtype) -> str | None:
    """Why values of the Arrow type ``dtype`` (column or field ``name``) cannot be JSON values, or None."""
    import pyarrow.types as t

    if t.is_dictionary(dtype):
        return _json_type_problem(name, dtype.value_type)
    if (t.is_null(dtype) or t.is_boolean(dtype) or t.is_integer(dtype) or t.is_floating(dtype)
            or t.is_string(dtype) or t.is_large_string(dtype) or getattr(t, "is_string_view", lambda _: False)(dtype)):
        return None
    if t.is_list(dtype) or t.is_large_list(dtype) or t.is_fixed_size_list(dtype):
        return _json_type_problem(f"{name}[]", dtype.value_type)
    if t.is_struct(dtype):
        for k in range(dtype.num_fields):
            problem = _json_type_problem(f"{name}.{dtype.field(k).name}", dtype.field(k).type)
            if problem:
                return problem
        return None
    return (f"column '{name}' holds {dtype} values, which have no JSON form (records need strings, numbers, "
            "booleans, nulls, lists and structs)")


def read_parquet(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(row_number, record)`` from a Parquet file, ``PARQUET_BATCH`` rows at a time: each row a dict of
    its columns in schema order (null values are None). Column types without a JSON form (binary, dates,
    timestamps, decimals, maps) are refused before the first row, with the column named."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(path, None, f"reading Parquet needs pyarrow: {PARQUET_EXTRA}") from None
    try:
        f = pq.ParquetFile(path)
        schema = f.schema_arrow
    except (pyarrow.ArrowException, OSError) as err:
        raise InputError(path, None, f"not a readable Parquet file: {one_line(str(err))}") from None
    with f:
        for field in schema:
            problem = _json_type_problem(field.name, field.type)
            if problem:
                raise InputError(path, None, problem)
        row = 0
        batches = f.iter_batches(batch_size=PARQUET_BATCH)
        while True:
            try:
                batch = next(batches, None)
            except (pyarrow.ArrowException, OSError) as err:
                raise InputError(path, row + 1, f"unreadable Parquet data: {one_line(str(err))}") from None
            if batch is None:
                return
            for rec in batch.to_pylist():
                row += 1
                yield row, rec


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w"):
    """Write to a temporary file beside ``path``; rename over it only when the block succeeds.

    On any error or signal (see :func:`cli_errors`) the temporary file is removed and an existing ``path`` is
    left untouched. A replaced file keeps its permissions; a new one gets those ``open()`` would give. A
    symbolic link is written through (its target is replaced, the link stays).
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        keep = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        keep = 0o666 & ~umask
    fd, tmp = _temp_file(target)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "\n") as f:
            yield f
        os.chmod(tmp, keep)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        _LIVE_TEMPS.discard(tmp)


_LIVE_TEMPS: set[str] = set()  # temporary files not yet renamed; removed by cli_errors on a signal


def _temp_file(target: Path) -> tuple[int, str]:
    """``mkstemp`` beside ``target``, registered in ``_LIVE_TEMPS`` with signals held back in between, so that a
    signal arriving at any moment finds the file either absent or registered."""
    block = getattr(signal, "pthread_sigmask", None)
    held = block(signal.SIG_BLOCK, SIGNALS) if block else None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        _LIVE_TEMPS.add(tmp)
    finally:
        if block:
            block(signal.SIG_SETMASK, held)
    return fd, tmp
