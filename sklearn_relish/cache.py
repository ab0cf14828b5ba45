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
  Processes that need the same texts at once split the work: each
  reserves a chunk of texts (an exclusively created file per text) before
  encoding it, and the others read what it wrote, so a parallel grid
  search runs the backbone once per text. Each process appends how many texts it encoded to a ledger
  (:func:`cache_info` sums it).
- The default directory (:func:`default_cache_dir`, used when
  ``cache_dir="auto"``) is capped in size; least recently used entries go
  first. :func:`clear_cache` empties it.
States are stored ragged (no padding) in half precision, or in int8 with a
scale per token (:mod:`sklearn_relish.storage`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from .storage import pack, storage_fingerprint, unpack

__all__ = [
    "cache_info",
    "clear_cache",
    "default_cache_dir",
    "resolve_cache_dir",
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
    (measured: 1.7 GB over 100,000 texts, see ``benchmarks/studies/memory.py``).
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


_CACHE_ENV = "RELISH_STATES_DIR"
_CACHE_SIZE_ENV = "RELISH_STATES_MAX_GB"
_OFF = {"", "0", "off", "none", "false", "no"}


def default_cache_dir():
    """The directory ``cache_dir="auto"`` uses, or None when turned off.

    ``$RELISH_STATES_DIR`` when set (``off``, ``none``, ``0`` or an empty
    value turn the disk cache off), else ``states/`` in the directory where
    the converted default backbone lives (``$RELISH_HOME``, else
    ``~/.cache/sklearn_relish``).
    """
    value = os.environ.get(_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    from .bundled import cache_home

    return cache_home() / "states"


def default_cache_max_bytes():
    """Size cap of the default directory: ``$RELISH_STATES_MAX_GB``
    gigabytes (10 unless set)."""
    return int(float(os.environ.get(_CACHE_SIZE_ENV, "10")) * 1e9)


def resolve_cache_dir(cache_dir):
    """``(directory or None, max_bytes or None)`` for a ``cache_dir``
    parameter: "auto" is :func:`default_cache_dir` with its size cap; a
    path is used as it is, uncapped (it is the caller's to manage); None is
    memory only."""
    if isinstance(cache_dir, str) and cache_dir == "auto":
        directory = default_cache_dir()
        return directory, (default_cache_max_bytes() if directory is not None else None)
    if cache_dir is None:
        return None, None
    return Path(cache_dir).expanduser(), None


def cache_info(cache_dir="auto"):
    """What a cache directory holds, per backbone.

    Returns
    -------
    info : dict
        ``directory``, ``n_entries``, ``n_bytes``, ``n_encoded`` (texts the
        backbones ran on to fill it, summed over every process that wrote
        to it: ``n_encoded / n_entries`` is the number of backbone passes
        per distinct text, 1.0 when no work was repeated) and
        ``backbones``, the same per backbone fingerprint with what
        ``backbone.json`` says of it.
    """
    directory, _ = resolve_cache_dir(cache_dir)
    info = {"directory": None if directory is None else str(directory),
            "n_entries": 0, "n_bytes": 0, "n_encoded": 0, "backbones": {}}
    if directory is None or not directory.is_dir():
        return info
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        entries = list(_scan_entries(sub))
        try:
            described = json.loads((sub / "backbone.json").read_text())
        except (OSError, ValueError):
            described = {}
        record = {**described, "n_entries": len(entries),
                  "n_bytes": sum(size for _, size, _ in entries),
                  "n_encoded": _ledger_total(sub / _LEDGER)}
        info["backbones"][sub.name] = record
        for key in ("n_entries", "n_bytes", "n_encoded"):
            info[key] += record[key]
    return info


def clear_cache(cache_dir="auto"):
    """Delete a cache directory's token states (every backbone's) and
    empty the in-memory cache. Returns the number of bytes freed on disk."""
    MEMORY_CACHE.clear()
    directory, _ = resolve_cache_dir(cache_dir)
    if directory is None or not directory.is_dir():
        return 0
    freed = cache_info(cache_dir)["n_bytes"]
    for sub in directory.iterdir():
        if sub.is_dir() and (sub / "backbone.json").exists():
            shutil.rmtree(sub, ignore_errors=True)
    return freed


def _scan_entries(directory):
    """``(mtime, size, path)`` of every stored entry under ``directory``."""
    for shard in os.scandir(directory):
        if not shard.is_dir() or len(shard.name) != 2:
            continue
        for entry in os.scandir(shard.path):
            if entry.name.endswith(".states"):
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                yield stat.st_mtime, stat.st_size, entry.path


_LEDGER = "encoded.log"


def _ledger_total(path):
    try:
        lines = path.read_text().split()
    except OSError:
        return 0
    return sum(int(word) for word in lines[1::2] if word.isdigit())


# Bytes each capped root received from this process since its last scan.
_WRITTEN = {}
_WRITTEN_LOCK = threading.Lock()


# On-disk entry: magic, dtype code, two uint32 dims, payload size, blake2b
# digest of the payload, then the raw payload. The magic carries the format
# version: version 2 adds int8 payloads (the "int8" storage, see
# storage.py), so an int8 entry says it needs a version-2 reader; float
# entries keep version 1, which every reader since the first one reads.
_MAGICS = {b"RLSHTS1\0": 1, b"RLSHTS2\0": 2}
_HEADER = struct.Struct("<8sBxxxIIQ16s")
_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.int8: 4}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
#: The format version an entry of each dtype code is written in.
_CODE_VERSIONS = {1: 1, 2: 1, 3: 1, 4: 2}
_VERSION_MAGICS = {version: magic for magic, version in _MAGICS.items()}


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
    max_bytes : int, optional
        Size cap of the whole root (every backbone): past it, the least
        recently used entries are deleted down to 90 % of it. The check runs
        when this process has written 5 % of the cap since its last one, so
        several writers can overshoot by that much each. None: no cap.
    """

    def __init__(self, root, fingerprint, description=None, max_bytes=None):
        self.root = Path(root).expanduser()
        self.directory = self.root / fingerprint[:16]
        self._description = description or {}
        self.max_bytes = max_bytes
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
        elif self.max_bytes is not None:
            try:
                os.utime(path)   # recently used: evicted last
            except OSError:
                pass
        return tensor

    def has(self, key):
        """Whether an entry is stored (not checked for corruption)."""
        return self.enabled and self._path(key).exists()

    def reserve(self, key):
        """Reserve one text for this process to encode; False when another
        live process holds it.

        A reservation is a small file next to the entry, created
        exclusively (``O_EXCL``: of two processes, one wins) and holding
        the owner's host and process id. One whose owner has died (same
        host, process gone) or that is older than ``stale_seconds`` (another
        host) is taken over.
        """
        path = self._path(key).with_suffix(".claim")
        owner = f"{socket.gethostname()} {os.getpid()}".encode()
        for _ in range(2):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            except OSError:
                return True     # cannot reserve here: encode without telling others
            with os.fdopen(fd, "wb") as handle:
                handle.write(owner)
            return True
        return False

    def release(self, keys):
        """Drop this process's reservations of ``keys``."""
        for key in keys:
            try:
                os.unlink(self._path(key).with_suffix(".claim"))
            except OSError:
                pass

    #: A reservation from another host is taken over after this long (a
    #: process renews nothing: it reserves a chunk of texts at a time).
    stale_seconds = 600.0

    def _stale(self, path):
        try:
            host, pid = path.read_text().split()
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False        # being written, or just removed: look again later
        if host == socket.gethostname():
            return not _alive(int(pid))
        return age > self.stale_seconds

    def record_encoded(self, n_texts):
        """Append to the ledger that this process encoded ``n_texts``."""
        if not self.enabled:
            return
        try:
            with open(self.directory / _LEDGER, "a") as handle:
                handle.write(f"{os.getpid()} {int(n_texts)}\n")
        except OSError:
            pass

    def _wrote(self, n_bytes):
        """Count bytes written; evict when the cap may have been passed."""
        if self.max_bytes is None:
            return
        with _WRITTEN_LOCK:
            total = _WRITTEN.get(self.root, 0) + n_bytes
            due = total >= 0.05 * self.max_bytes
            _WRITTEN[self.root] = 0 if due else total
        if due:
            self.evict()

    def evict(self):
        """Delete the least recently used entries of the whole root down to
        90 % of ``max_bytes``, if it holds more. Returns the bytes freed."""
        if self.max_bytes is None or not self.root.is_dir():
            return 0
        entries = []
        for sub in self.root.iterdir():
            if sub.is_dir():
                entries.extend(_scan_entries(sub))
        total = sum(size for _, size, _ in entries)
        if total <= self.max_bytes:
            return 0
        freed, target = 0, total - int(0.9 * self.max_bytes)
        for _, size, path in sorted(entries):
            if freed >= target:
                break
            try:
                os.unlink(path)
                freed += size
            except OSError:
                pass
        return freed

    @staticmethod
    def _decode(blob):
        if len(blob) < _HEADER.size:
            return None
        magic, code, rows, cols, size, digest = _HEADER.unpack_from(blob)
        payload = blob[_HEADER.size:]
        dtype = _CODE_DTYPES.get(code)
        version = _MAGICS.get(magic)
        if (version is None or dtype is None or _CODE_VERSIONS[code] > version
                or len(payload) != size or _digest(payload) != digest):
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
        code = _DTYPE_CODES[tensor.dtype]
        header = _HEADER.pack(_VERSION_MAGICS[_CODE_VERSIONS[code]], code,
                              tensor.shape[0], tensor.shape[1], len(payload),
                              _digest(payload))
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._atomic_write(path, header + payload)
            self._wrote(len(header) + len(payload))
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
                  batch_size=32, batch_tokens=None, truncation=True, progress=False,
                  storage="float16"):
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
        Built with ``storage_fingerprint(backbone.fingerprint, storage)``,
        so that each storage has a directory of its own.
    memory : MemoryCache or None
    batch_size, batch_tokens : int
        Texts per forward pass, or, when ``batch_tokens`` is given, as many
        as fit in that many padded tokens (see :meth:`Backbone.iter_states
        <sklearn_relish.backbone.Backbone.iter_states>`).
    storage : {"float16", "int8"}, default="float16"
        How the caches keep the states (see :mod:`sklearn_relish.storage`);
        each storage has its own cache keys.

    Returns
    -------
    states : list of Tensor, one per text (duplicates share one tensor)
        float16 (bfloat16 for a text with a value beyond float16's range);
        with ``storage="int8"``, the dequantised int8 values.
    n_truncated : int
        How many of the distinct texts were truncated, cached or not.
    """
    fingerprint = storage_fingerprint(backbone.fingerprint, storage)
    keys = [text_key(fingerprint, text) for text in texts]
    # Entries as the caches keep them (see storage.pack), unpacked on return.
    found = {}
    for key in dict.fromkeys(keys):
        entry = memory.get(key) if memory is not None else None
        if entry is not None and disk is not None and not disk.has(key):
            disk.put(key, entry)    # computed for another directory, or before it
        if entry is None and disk is not None:
            entry = disk.get(key)
            if entry is not None and memory is not None:
                memory.put(key, entry)
        if entry is not None:
            found[key] = entry
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
    if not missing:
        return _unpacked(found, keys, storage), n_truncated

    def encode(pending):
        """Encode texts by key, storing each batch as it comes (an
        interrupted fit keeps its work)."""
        nonlocal n_truncated
        ids, n_new = backbone.tokenize([missing[key] for key in pending],
                                       truncation=truncation,
                                       rows=[first_row[key] for key in pending])
        n_truncated += n_new
        for row, tensor in backbone.iter_states(ids, batch_size=batch_size,
                                                batch_tokens=batch_tokens,
                                                progress=progress):
            key = pending[row]
            entry = found[key] = pack(tensor, storage)
            if memory is not None:
                memory.put(key, entry)
            if disk is not None:
                disk.put(key, entry)
        if disk is not None:
            disk.record_encoded(len(pending))

    if disk is None or not disk.enabled:
        encode(list(missing))
    elif batch_tokens is None:
        # Eight batches' worth of texts at a time.
        _encode_claimed(disk, missing, found, memory, encode, lambda key: 1, 8 * batch_size)
    else:
        # Eight batches' worth of tokens at a time: that needs every missing
        # text's length first. Only the lengths are kept (a million texts'
        # token ids would take gigabytes), and each chunk is tokenised again
        # when it is encoded, which costs little next to the model.
        lengths = {}
        pending = list(missing)
        for start in range(0, len(pending), 4096):
            part = pending[start:start + 4096]
            ids, _ = backbone.tokenize([missing[key] for key in part])
            lengths.update(zip(part, map(len, ids)))
        _encode_claimed(disk, missing, found, memory, encode, lengths.__getitem__,
                        8 * batch_tokens)
    return _unpacked(found, keys, storage), n_truncated


def _unpacked(found, keys, storage):
    """The states of ``keys`` from their entries, each distinct one unpacked
    once (so duplicates share one tensor)."""
    states = {key: unpack(entry, storage) for key, entry in found.items()}
    return [states[key] for key in keys]


def _encode_claimed(disk, missing, found, memory, encode, size, limit):
    """Encode the missing texts a chunk at a time, each reserved first.

    A chunk holds texts until their ``size`` (a text's cost: 1, or its
    tokens) adds up to ``limit``. Every process walks the keys in the same
    (sorted) order and reserves the next chunk of texts no other process
    holds, so processes that need the same texts at once split them
    between them, and each encodes full batches. Texts reserved by others
    are then waited for and read; those a failed process left behind are
    taken over.
    """
    pending = iter(sorted(missing))
    waiting = []
    while True:
        mine, total = [], 0
        for key in pending:
            if disk.reserve(key):
                mine.append(key)
                total += size(key)
                if total >= limit:
                    break
            else:
                waiting.append(key)
        if not mine:
            break
        _encode_reserved(disk, mine, found, memory, encode)
    while waiting:
        waiting = _refresh(disk, waiting, found, memory)
        chunk, total = [], 0
        for key in waiting:
            chunk.append(key)
            total += size(key)
            if total >= limit:
                break
        mine = [key for key in chunk if disk.reserve(key)]
        if mine:
            _encode_reserved(disk, mine, found, memory, encode)
            taken = set(mine)
            waiting = [key for key in waiting if key not in taken]
        elif waiting:
            time.sleep(0.05)


def _encode_reserved(disk, keys, found, memory, encode):
    try:
        # Another process may have stored some since they were looked up.
        left = _refresh(disk, keys, found, memory)
        if left:
            encode(left)
    finally:
        disk.release(keys)


def _refresh(disk, keys, found, memory):
    """The keys still not on disk; those that are go to ``found``."""
    left = []
    for key in keys:
        tensor = disk.get(key)
        if tensor is None:
            left.append(key)
        else:
            found[key] = tensor
            if memory is not None:
                memory.put(key, tensor)
    return left


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
