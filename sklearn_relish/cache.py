"""A per-text cache of token states, in memory and optionally on disk.

Running the frozen backbone is nearly all the cost of fitting; the head is
tiny. Every text's states are cached under a key made of the backbone's
fingerprint and the rendered prompt, so cross-validation folds, shuffles,
grid points, ``refit`` and ``predict`` all reuse them, and the backbone sees
each distinct text once.

- :data:`MEMORY_CACHE` is process-wide and bounded (least recently used out).
- :class:`DiskCache` stores one checksummed file per text in a directory
  shared by processes and runs. Writes are atomic (a temporary file then
  ``os.replace``); a corrupt or truncated entry is detected and recomputed.
States are stored ragged (no padding) in half precision.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = [
    "DiskCache",
    "MemoryCache",
    "MEMORY_CACHE",
    "CacheWarning",
    "cached_states",
    "release_freed_memory",
    "text_key",
]


class CacheWarning(UserWarning):
    """The disk cache could not be used; states are computed instead."""


def text_key(fingerprint, text):
    """Cache key of one rendered text under one backbone fingerprint."""
    digest = hashlib.sha256()
    digest.update(fingerprint.encode())
    digest.update(b"\0")
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def release_freed_memory():
    """Give memory freed by Python and torch back to the operating system.

    Predicting on many texts allocates and frees token states of every size;
    glibc keeps the freed pieces in its heap, so without this the process
    grows by about 30 KB per predicted text even though nothing is held
    (measured: 1.7 GB over 100,000 texts, see ``benchmarks/memory.py``).
    ``malloc_trim`` returns them. It is a no-op where glibc is absent.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim():
    global _MALLOC_TRIM
    if _MALLOC_TRIM is False:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = None
    return _MALLOC_TRIM


_MALLOC_TRIM = False


def _nbytes(tensor):
    return tensor.numel() * tensor.element_size()


class MemoryCache:
    """A thread-safe LRU mapping key -> tensor, bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Entries are evicted, least recently used first, beyond this size.
    """

    def __init__(self, max_bytes):
        self.max_bytes = int(max_bytes)
        self._entries = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._entries)

    @property
    def nbytes(self):
        return self._bytes

    def get(self, key):
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is not None:
                self._entries.move_to_end(key)
            return tensor

    def put(self, key, tensor):
        size = _nbytes(tensor)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _nbytes(old)
            self._entries[key] = tensor
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= _nbytes(evicted)

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _default_memory_bytes():
    megabytes = os.environ.get("RELISH_MEMORY_CACHE_MB")
    return int(float(megabytes) * 2**20) if megabytes else 2 * 2**30


#: The process-wide in-memory cache (2 GiB unless ``RELISH_MEMORY_CACHE_MB``
#: says otherwise; set ``MEMORY_CACHE.max_bytes`` to change it at run time).
MEMORY_CACHE = MemoryCache(_default_memory_bytes())


# On-disk entry: magic, dtype code, two uint32 dims, payload size, blake2b
# digest of the payload, then the raw payload.
_MAGIC = b"RLSHTS1\0"
_HEADER = struct.Struct("<8sBxxxIIQ16s")
_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def _digest(payload):
    return hashlib.blake2b(payload, digest_size=16).digest()


class DiskCache:
    """Token states stored as one checksummed file per text.

    Layout: ``root/<fingerprint[:16]>/<key[:2]>/<key>.states``, plus a
    ``backbone.json`` per fingerprint that says which backbone wrote it.

    Parameters
    ----------
    root : str or Path
        The cache directory; created if missing.
    fingerprint : str
        The backbone fingerprint the entries belong to.
    description : dict, optional
        Written to ``backbone.json`` for people reading the directory.
    """

    def __init__(self, root, fingerprint, description=None):
        self.root = Path(root).expanduser()
        self.directory = self.root / fingerprint[:16]
        self._description = description or {}
        self.enabled = True
        self.n_corrupt = 0

    def check_writable(self):
        """Create the directory and prove a file can be written there.

        Raises a clear ``OSError`` before any expensive work is done.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            meta = self.directory / "backbone.json"
            if not meta.exists():
                self._atomic_write(meta, json.dumps(self._description,
                                                    indent=1).encode())
            with tempfile.TemporaryFile(dir=self.directory):
                pass
        except OSError as exc:
            raise OSError(
                f"cache_dir={str(self.root)!r} cannot be written to "
                f"({exc.strerror or exc}). Give a writable directory, or "
                "cache_dir=None to keep the cache in memory only."
            ) from exc

    def _path(self, key):
        return self.directory / key[:2] / f"{key}.states"

    def get(self, key):
        """The stored tensor, or None when absent or corrupt."""
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        tensor = self._decode(blob)
        if tensor is None:
            self.n_corrupt += 1
        return tensor

    @staticmethod
    def _decode(blob):
        if len(blob) < _HEADER.size:
            return None
        magic, code, rows, cols, size, digest = _HEADER.unpack_from(blob)
        payload = blob[_HEADER.size:]
        dtype = _CODE_DTYPES.get(code)
        if (magic != _MAGIC or dtype is None or len(payload) != size
                or _digest(payload) != digest):
            return None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if rows * cols * itemsize != size:
            return None
        flat = torch.frombuffer(bytearray(payload), dtype=dtype)
        return flat.reshape(rows, cols)

    def put(self, key, tensor):
        """Store a tensor; a failed write warns and disables the disk cache."""
        if not self.enabled:
            return
        tensor = tensor.contiguous()
        payload = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header = _HEADER.pack(_MAGIC, _DTYPE_CODES[tensor.dtype],
                              tensor.shape[0], tensor.shape[1], len(payload),
                              _digest(payload))
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._atomic_write(path, header + payload)
        except OSError as exc:
            self.enabled = False
            warnings.warn(
                f"Could not write to the cache directory {str(self.root)!r} "
                f"({exc.strerror or exc}); going on without the disk cache. "
                "Nothing partial was left behind.",
                CacheWarning,
                stacklevel=4,
            )

    @staticmethod
    def _atomic_write(path, data):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def cached_states(backbone, texts, *, disk=None, memory=MEMORY_CACHE,
                  batch_size=32, truncation=True, progress=False):
    """Token states for each text, computing only what no cache holds.

    Lookups go memory, then disk; the missing distinct texts are encoded in
    one pass of the backbone and stored in both.

    Parameters
    ----------
    backbone : Backbone
        Anything with ``fingerprint``, ``tokenize`` and ``iter_states``.
    texts : sequence of str
        Rendered prompts.
    disk : DiskCache or None
    memory : MemoryCache or None

    Returns
    -------
    states : list of Tensor, one per text (duplicates share one tensor)
    n_truncated : int
        How many of the distinct texts were truncated, cached or not.
    """
    keys = [text_key(backbone.fingerprint, text) for text in texts]
    found = {}
    for key in dict.fromkeys(keys):
        tensor = memory.get(key) if memory is not None else None
        if tensor is None and disk is not None:
            tensor = disk.get(key)
            if tensor is not None and memory is not None:
                memory.put(key, tensor)
        if tensor is not None:
            found[key] = tensor
    missing, first_row = {}, {}
    for row, (key, text) in enumerate(zip(keys, texts)):
        first_row.setdefault(key, row)
        if key not in found:
            missing.setdefault(key, text)
    # Cached states as long as max_length may come from a cut text: tokenise
    # those again (no model run) so that truncation warns, or raises with
    # truncation=False, the same way whether or not the states were cached.
    max_length = getattr(getattr(backbone, "config", None), "max_length", None)
    full = [key for key, tensor in found.items()
            if max_length is not None and len(tensor) >= max_length]
    n_truncated = 0
    if full:
        _, n_truncated = backbone.tokenize(
            [texts[first_row[key]] for key in full], truncation=truncation,
            rows=[first_row[key] for key in full])
    if missing:
        pending = list(missing)
        ids, n_new = backbone.tokenize(list(missing.values()),
                                       truncation=truncation,
                                       rows=[first_row[key] for key in pending])
        n_truncated += n_new
        # Store each batch as it comes: an interrupted fit keeps its work.
        for row, tensor in backbone.iter_states(ids, batch_size=batch_size,
                                                progress=progress):
            key = pending[row]
            found[key] = tensor
            if memory is not None:
                memory.put(key, tensor)
            if disk is not None:
                disk.put(key, tensor)
    return [found[key] for key in keys], n_truncated
