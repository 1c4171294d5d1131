"""Write a dict as a Python 2 pickle, byte for byte as the official CIFAR-10 "python version" files are.

Python 3's pickle cannot write Python 2 `str` (SHORT_BINSTRING/BINSTRING), which the real files use, so the
few opcodes they need are emitted by hand, memoised (BINPUT) where Python 2.7's cPickle memoised: the
dict, lists, their strings of two or more characters, globals and reduced objects, not the temporary
tuples and strings inside numpy's reduce. Checked byte for byte against the official batches.meta and a
batch written by Python 2.7 with numpy 1.16 (tests/fixtures).
"""

from __future__ import annotations

import struct

import numpy as np

_CPICKLE_BATCH = 1000  # cPickle wrote list and dict items in batches of this size


class _Py2Pickler:
    def __init__(self) -> None:
        self._memo_size = 0

    def _put(self) -> bytes:
        self._memo_size += 1
        if self._memo_size < 256:
            return b"q" + bytes([self._memo_size])  # BINPUT
        return b"r" + struct.pack("<I", self._memo_size)  # LONG_BINPUT

    @staticmethod
    def _str(text: str | bytes) -> bytes:
        raw = text.encode("latin1") if isinstance(text, str) else text
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING
        return b"T" + struct.pack("<i", len(raw)) + raw  # BINSTRING

    @staticmethod
    def _int(value: int) -> bytes:
        if 0 <= value < 256:
            return b"K" + bytes([value])  # BININT1
        if 0 <= value < 65536:
            return b"M" + struct.pack("<H", value)  # BININT2
        return b"J" + struct.pack("<i", value)  # BININT

    def _global(self, module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n" + self._put()

    def _batched(self, encoded_items: list[bytes], one: bytes, many: bytes) -> bytes:
        out = []
        for start in range(0, len(encoded_items), _CPICKLE_BATCH):
            chunk = encoded_items[start : start + _CPICKLE_BATCH]
            out.append(chunk[0] + one if len(chunk) == 1 else b"(" + b"".join(chunk) + many)  # MARK ... APPENDS
        return b"".join(out)

    def value(self, value: object) -> bytes:
        if isinstance(value, np.ndarray):
            return self._uint8_matrix(value)
        if isinstance(value, (str, bytes)):
            encoded = self._str(value)
            return encoded + self._put() if len(value) > 1 else encoded  # cPickle never memoised 1-char str
        if isinstance(value, int):
            return self._int(value)
        if isinstance(value, list):
            head = b"]" + self._put()  # EMPTY_LIST
            return head + self._batched([self.value(item) for item in value], b"a", b"e")
        if isinstance(value, dict):
            head = b"}" + self._put()  # EMPTY_DICT
            items = [self.value(key) + self.value(item) for key, item in value.items()]
            return head + self._batched(items, b"s", b"u")
        raise TypeError(f"cannot write {type(value).__name__} as a Python 2 pickle")

    def _uint8_matrix(self, array: np.ndarray) -> bytes:
        rows, cols = array.shape
        reconstruct = self._global("numpy.core.multiarray", "_reconstruct") + self._global("numpy", "ndarray")
        reconstruct += self._int(0) + b"\x85" + self._str("b") + b"\x87R" + self._put()  # TUPLE1, TUPLE3, REDUCE
        dtype = self._global("numpy", "dtype") + self._str("u1") + self._int(0) + self._int(1) + b"\x87R" + self._put()
        dtype_state = self._int(3) + self._str("|") + b"NNN" + struct.pack("<ci", b"J", -1) * 2 + self._int(0)
        dtype += b"(" + dtype_state + b"tb"  # MARK ... TUPLE, BUILD
        shape = self._int(rows) + self._int(cols) + b"\x86"  # TUPLE2
        raw = self._str(np.ascontiguousarray(array).tobytes())
        return reconstruct + b"(" + self._int(1) + shape + dtype + b"\x89" + raw + b"tb"  # NEWFALSE: C order


def py2_pickle_dict(mapping: dict[str, object]) -> bytes:
    """Serialise a CIFAR-style dict exactly as Python 2.7's cPickle (protocol 2) wrote the real files.

    Keys are written in the order given; pass them in Python 2's dict order to match a real file.
    """
    return b"\x80\x02" + _Py2Pickler().value(mapping) + b"."
