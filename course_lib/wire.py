"""Values between the grader and the learner's sandboxed process (lesson 00 explains grading).

The grader trusts what it sends, so anything picklable goes to the sandbox (a model, a
``torch.Generator``). Nothing the sandbox sends back is trusted: it travels as data only,

- ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes``,
- plain ``torch.Tensor`` (detached), ``torch.dtype``, ``torch.device``, ``torch.Size``,
- ``tuple``, ``list`` and ``dict`` of those (an ``OrderedDict``, the type of a model's
  ``state_dict()``, arrives as a ``dict``),

and is read with ``torch.load(weights_only=True)``, which builds those types and runs no
other code. Any other object (a numpy number, a tensor subclass, a class instance) arrives
as a :class:`Foreign` stand-in that keeps its type's name and its ``repr``, so that a check
can say "should return a torch.Tensor, got ndarray".
"""

from __future__ import annotations

import collections
import io
import os
import struct

import torch

MAX_MESSAGE_BYTES = 512 * 2**20
MAX_DEPTH = 20
_FOREIGN = "__course_foreign__"
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


class Foreign:
    """Stands for an object the sandbox could not send as data; ``type(x).__name__`` is the original type's name."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__


def _foreign_class(name: str) -> type:
    """A subclass of :class:`Foreign` named ``name`` (so messages read ``got ndarray``)."""
    safe = name if name.isidentifier() else "object"
    return type(safe, (Foreign,), {"__module__": "sandbox"})


# --------------------------------------------------------------------------- in the sandbox


def encode(value, depth: int = 0):
    """``value`` as data only: plain types and containers pass, anything else becomes a foreign marker."""
    if depth > MAX_DEPTH:
        return (_FOREIGN, "object", "<nested too deeply>")
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is torch.Tensor:
        return value.detach()
    if kind is torch.Size:
        return torch.Size(value)
    if kind in (tuple, list):
        return kind(encode(v, depth + 1) for v in value)
    if kind is dict or kind is collections.OrderedDict:
        return {encode(k, depth + 1): encode(v, depth + 1) for k, v in value.items()}
    try:
        text = repr(value)[:500]
    except Exception:  # a repr that raises
        text = f"<{kind.__name__} object>"
    return (_FOREIGN, kind.__name__, text)


def dumps(value) -> bytes:
    """Serialize with ``torch.save`` (both directions use it)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def loads_trusted(data: bytes):
    """Read what the grader sent (the sandbox trusts the grader)."""
    return torch.load(io.BytesIO(data), weights_only=False)


# --------------------------------------------------------------------------- in the grader


def loads_untrusted(data: bytes):
    """Read what the sandbox sent: size-checked, ``weights_only``, then markers turned into :class:`Foreign`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"the answer sent {len(data):,} bytes back, more than the {MAX_MESSAGE_BYTES:,} allowed")
    return decode(torch.load(io.BytesIO(data), weights_only=True))


def decode(value, depth: int = 0):
    """Rebuild :class:`Foreign` stand-ins and refuse anything that is not data."""
    if depth > MAX_DEPTH + 1:
        raise ValueError("the answer's value is nested too deeply")
    kind = type(value)
    if kind in _PLAIN or kind is torch.Size:
        return value
    if isinstance(value, torch.Tensor):
        return value if kind is torch.Tensor else value.as_subclass(torch.Tensor)
    if kind is tuple and len(value) == 3 and value[0] == _FOREIGN and all(type(v) is str for v in value[1:]):
        return _foreign_class(value[1])(value[2])
    if kind in (tuple, list):
        return kind(decode(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {decode(k, depth + 1): decode(v, depth + 1) for k, v in value.items()}
    raise ValueError(f"the sandbox sent a {kind.__name__}, which is not data")


# --------------------------------------------------------------------------- framing


def write_frame(fd: int, payload: bytes) -> None:
    """Write one length-prefixed message to the file descriptor ``fd``."""
    data = struct.pack("<Q", len(payload)) + payload
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_frame(fd: int, limit: int = MAX_MESSAGE_BYTES) -> bytes:
    """Read one length-prefixed message; ``EOFError`` when the other side has gone."""
    (size,) = struct.unpack("<Q", _read_exactly(fd, 8))
    if size > limit:
        raise ValueError(f"a message of {size:,} bytes is more than the {limit:,} allowed")
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
