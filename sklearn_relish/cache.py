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
import errno
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
    "cache_views",
    "is_disk_failure",
    "HEADER_BYTES",
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
# digest, then the raw payload. The digest covers the entry's key, the header
# before it and the payload, so a damaged header, an entry copied under
# another key or two entries swapped read as corrupt (and are encoded again),
# not as another text's states. The magic carries the format version; entries
# of earlier versions (whose digest covered the payload alone) are encoded
# again on first use.
_MAGIC = b"RLSHTS3\0"
_HEADER = struct.Struct("<8sBxxxIIQ16s")
_PREFIX = struct.Struct("<8sBxxxIIQ")
_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.int8: 4}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}
#: Bytes of an entry's header (before its payload).
HEADER_BYTES = _HEADER.size


def _digest(key, prefix, payload):
    digest = hashlib.blake2b(digest_size=16)
    digest.update(key.encode())
    digest.update(prefix)
    digest.update(payload)
    return digest.digest()


def _encode_entry(key, tensor):
    """The bytes of one entry: header and payload."""
    tensor = tensor.contiguous()
    payload = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    prefix = _PREFIX.pack(_MAGIC, _DTYPE_CODES[tensor.dtype], tensor.shape[0],
                          tensor.shape[1], len(payload))
    return prefix + _digest(key, prefix, payload) + payload


def _decode_entry(key, blob):
    """The tensor of an entry's bytes, or None when they are not a valid
    entry of ``key``."""
    if len(blob) < _HEADER.size:
        return None
    magic, code, rows, cols, size, digest = _HEADER.unpack_from(blob)
    view = memoryview(blob)
    payload = view[_HEADER.size:]
    dtype = _CODE_DTYPES.get(code)
    if magic != _MAGIC or dtype is None or len(payload) != size:
        return None
    if _digest(key, view[:_PREFIX.size], payload) != digest:
        return None
    itemsize = torch.empty((), dtype=dtype).element_size()
    if rows * cols * itemsize != size:
        return None
    if not size:
        return torch.empty((rows, cols), dtype=dtype)
    if isinstance(blob, bytes):
        payload = bytearray(payload)      # a tensor needs writable memory
    # Over the blob itself: the read is the only copy of the states.
    return torch.frombuffer(payload, dtype=dtype).reshape(rows, cols)


#: Mode of the directories the cache creates: never writable by the group or
#: others, whatever the umask (the umask can only take bits away).
_DIR_MODE = 0o755


def _makedirs(path):
    """``mkdir -p`` with :data:`_DIR_MODE` on every level it creates."""
    path = Path(path)
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, _DIR_MODE)
        except FileExistsError:
            pass


#: errno values of a full or failing disk: the cache goes on in memory.
_DISK_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}


def is_disk_failure(exc):
    """Whether an ``OSError`` says the disk is full or failing (rather than
    that the directory is wrong): such a cache degrades to memory."""
    return getattr(exc, "errno", None) in _DISK_FAILURES


def _boot_id():
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def _start_time(pid):
    """When process ``pid`` started (clock ticks since boot), or "-"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "-"
    # Field 22, counted after the command name (which may hold spaces).
    return stat.rsplit(")", 1)[1].split()[19]


_OWNER = None


def _owner():
    """This process, as a reservation names it: host, pid, start time, boot."""
    global _OWNER
    if _OWNER is None or _OWNER[1] != os.getpid():
        pid = os.getpid()
        _OWNER = (socket.gethostname(), pid, _start_time(pid), _boot_id())
    return _OWNER


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
            _makedirs(self.directory)
            meta = self.directory / "backbone.json"
            if not meta.exists():
                self._atomic_write(meta, json.dumps(self._description,
                                                    indent=1).encode())
            # Bytes, not an empty file: a full disk accepts an empty file.
            with tempfile.TemporaryFile(dir=self.directory) as probe:
                probe.write(b"\0" * 4096)
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            error = OSError(
                f"cache_dir={str(self.root)!r} cannot be written to "
                f"({exc.strerror or exc}). Give a writable directory, or "
                "cache_dir=None to keep the cache in memory only.")
            error.errno = exc.errno
            raise error from exc

    def path(self, key):
        """Where the entry of ``key`` is, or would be, stored."""
        return self.directory / key[:2] / f"{key}.states"

    def get(self, key):
        """The stored tensor, or None when absent or corrupt."""
        path = self.path(key)
        try:
            with open(path, "rb", buffering=0) as handle:
                blob = bytearray(os.fstat(handle.fileno()).st_size)
                n_read = handle.readinto(blob)
        except OSError:
            return None
        tensor = _decode_entry(key, blob[:n_read] if n_read < len(blob) else blob)
        if tensor is None:
            self.n_corrupt += 1
        elif self.max_bytes is not None:
            try:
                os.utime(path)   # recently used: evicted last
            except OSError:
                pass
        return tensor

    def peek(self, key):
        """The number of tokens of a stored entry, from its header alone (its
        digest is checked when it is read), or None when absent or not an
        entry of this format."""
        try:
            with open(self.path(key), "rb") as handle:
                header = handle.read(_HEADER.size)
                size = os.fstat(handle.fileno()).st_size
        except OSError:
            return None
        if len(header) < _HEADER.size:
            return None
        magic, code, rows, cols, payload, _ = _HEADER.unpack(header)
        if magic != _MAGIC or code not in _CODE_DTYPES or size != _HEADER.size + payload:
            return None
        return rows

    def has(self, key):
        """Whether an entry is stored (not checked for corruption)."""
        return self.enabled and self.path(key).exists()

    def reserve(self, key):
        """Reserve one text for this process to encode; False when another
        process holds it.

        A reservation is a small file next to the entry, created
        exclusively (``O_EXCL``: of two processes, one wins) and holding
        the owner's host, process id, process start time and boot id. It is
        taken over when its owner is gone: the same host and boot, and the
        process id dead or now another process (a different start time); or
        another boot of the host (a restarted container); or, from another
        host, older than :attr:`stale_seconds`; or empty or unreadable and
        older than :attr:`empty_claim_seconds` (its writer was killed
        between creating and writing it). A disk that cannot take the file
        (full, failing) turns this cache off for the rest of the call, with
        one :class:`CacheWarning`, and leaves no file behind.
        """
        if not self.enabled:
            return True
        path = self.path(key).with_suffix(".claim")
        owner = " ".join(map(str, _owner())).encode()
        for _ in range(2):
            try:
                _makedirs(path.parent)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                             0o644)
            except FileExistsError:
                if not self._stale(path):
                    return False
                try:
                    os.unlink(path)
                except OSError:
                    pass
                continue
            except OSError as exc:
                self._failed(exc)
                return True     # cannot reserve here: encode without telling others
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(owner)
            except OSError as exc:
                try:
                    os.unlink(path)
                except OSError:
                    pass
                self._failed(exc)
            return True
        return False

    def release(self, keys):
        """Drop this process's reservations of ``keys``."""
        for key in keys:
            try:
                os.unlink(self.path(key).with_suffix(".claim"))
            except OSError:
                pass

    def touch(self, keys):
        """Renew this process's reservations of ``keys`` (a live owner keeps
        its reservations younger than :attr:`stale_seconds`)."""
        now = time.time()
        for key in keys:
            try:
                os.utime(self.path(key).with_suffix(".claim"), (now, now))
            except OSError:
                pass

    #: A reservation from another host, or of a live process that stopped
    #: renewing it (stuck, paused), is taken over after this long.
    stale_seconds = 600.0
    #: An empty or unreadable reservation is taken over after this long.
    empty_claim_seconds = 10.0

    def claim_owner(self, key):
        """``(host, pid)`` of the reservation of ``key``, or None."""
        try:
            host, pid = self.path(key).with_suffix(".claim").read_text().split()[:2]
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def _stale(self, path):
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False        # just removed: look again
        try:
            host, pid, started, boot = path.read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            return age > self.empty_claim_seconds
        if age > self.stale_seconds:
            return True
        own_host, _, _, own_boot = _owner()
        if host != own_host:
            return False
        if boot != own_boot:
            return True         # the host restarted: no process of that boot lives
        return not _alive(pid) or _start_time(pid) != started

    def _failed(self, exc):
        """A write failed: turn the disk cache off for this call, and warn."""
        if not self.enabled:
            return
        self.enabled = False
        warnings.warn(
            f"Could not write to the cache directory {str(self.root)!r} "
            f"({exc.strerror or exc}); going on without the disk cache. "
            "Nothing partial was left behind.",
            CacheWarning,
            stacklevel=5,
        )

    def record_encoded(self, n_texts):
        """Append to the ledger that this process encoded ``n_texts``."""
        if not self.enabled:
            return
        try:
            # Never through a link planted in the cache directory.
            fd = os.open(self.directory / _LEDGER,
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "a") as handle:
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

    def put(self, key, tensor):
        """Store a tensor; a failed write warns and disables the disk cache."""
        if not self.enabled:
            return
        data = _encode_entry(key, tensor)
        path = self.path(key)
        try:
            _makedirs(path.parent)
            self._atomic_write(path, data)
            self._wrote(len(data))
        except OSError as exc:
            self._failed(exc)

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


class _Lengths(dict):
    """Key -> number of tokens: what a streamed fit keeps of each entry."""

    def __setitem__(self, key, entry):
        super().__setitem__(key, entry if isinstance(entry, int) else len(entry))


def _n_tokens(entry):
    return entry if isinstance(entry, int) else len(entry)


def cached_states(backbone, texts, *, disk=None, memory=MEMORY_CACHE,
                  batch_size=32, batch_tokens=None, truncation=True, progress=False,
                  storage="float16", stream=False):
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
    stream : bool, default=False
        Leave the states in ``disk`` (required) and return each text's
        number of tokens instead (the memory cache is not used):
        :func:`~sklearn_relish.streaming.streamed_states` reads them from
        there when indexed.

    Returns
    -------
    states : list of Tensor, one per text (duplicates share one tensor)
        float16 (bfloat16 for a text with a value beyond float16's range);
        with ``storage="int8"``, the dequantised int8 values. With
        ``stream=True``, a list of int: each text's number of tokens.
    n_truncated : int
        How many of the distinct texts were truncated, cached or not.
    """
    fingerprint = storage_fingerprint(backbone.fingerprint, storage)
    # Layers kept side by side (a learned mix) are quantised layer by layer.
    groups = getattr(backbone, "n_mixed", 1)
    keys = [text_key(fingerprint, text) for text in texts]
    if stream and (disk is None or not disk.enabled):
        raise ValueError("Streaming token states needs a disk cache.")
    # Entries as the caches keep them (see storage.pack), unpacked on return;
    # streaming keeps only their lengths (read from the entries' headers).
    found = _Lengths() if stream else {}
    if stream:
        memory = None
    for key in dict.fromkeys(keys):
        if stream:
            length = disk.peek(key)
            if length is not None:
                found[key] = length
            continue
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
    full = [key for key, entry in found.items()
            if max_length is not None and _n_tokens(entry) >= max_length]
    n_truncated = 0
    if full:
        _, n_truncated = backbone.tokenize(
            [texts[first_row[key]] for key in full], truncation=truncation,
            rows=[first_row[key] for key in full])
    if not missing:
        if stream:
            return _lengths(disk, keys, found), n_truncated
        return _unpacked(found, keys, storage, groups), n_truncated

    def encode(pending):
        """Encode texts by key, storing each batch as it comes (an
        interrupted fit keeps its work)."""
        nonlocal n_truncated
        ids, n_new = backbone.tokenize([missing[key] for key in pending],
                                       truncation=truncation,
                                       rows=[first_row[key] for key in pending])
        n_truncated += n_new
        renewed = time.monotonic()
        for row, tensor in backbone.iter_states(ids, batch_size=batch_size,
                                                batch_tokens=batch_tokens,
                                                progress=progress):
            key = pending[row]
            entry = found[key] = pack(tensor, storage, groups)
            if memory is not None:
                memory.put(key, entry)
            if disk is not None:
                disk.put(key, entry)
                if time.monotonic() - renewed > 60:
                    # A live owner keeps the reservations of its chunk fresh.
                    disk.touch(pending)
                    renewed = time.monotonic()
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
    if stream:
        return _lengths(disk, keys, found), n_truncated
    return _unpacked(found, keys, storage, groups), n_truncated


def _lengths(disk, keys, found):
    """Each key's number of tokens, once every entry is stored in ``disk``."""
    if not disk.enabled:
        raise OSError(
            f"The states could not all be written to the cache {str(disk.root)!r} (see "
            "the warning above), and a fit that streams its states reads them from "
            "there. Free space on that disk or give another cache_dir, or raise "
            "max_state_memory to hold them in memory.")
    return [found[key] for key in keys]


def cache_views(backbones, texts, *, disks, memory=MEMORY_CACHE, batch_size=32,
                batch_tokens=None, truncation=True, progress=False, storage="float16"):
    """Cache the token states of several layer choices with one forward pass
    per text.

    ``backbones`` are views of one model that read other layers
    (:func:`~sklearn_relish.backbone.load_backbone` with another ``layer``
    or ``layer_mix``); each keeps its own cache entries. A text that some
    view lacks runs through the model once, and every view that lacks it
    stores its states; a text that every view holds is not run. Texts are
    not reserved (see :func:`cached_states`): run it in one process, before
    the fits that read the states.

    Parameters
    ----------
    backbones : list of Backbone
    texts : sequence of str
        Rendered prompts.
    disks : list of DiskCache or None
        One per backbone (its storage fingerprint), or None for memory only.
    memory, batch_size, batch_tokens, truncation, progress, storage
        As in :func:`cached_states`.

    Returns
    -------
    int
        The number of distinct texts the model ran on.
    """
    fingerprints = [storage_fingerprint(b.fingerprint, storage) for b in backbones]
    needed = {}
    for text in dict.fromkeys(texts):
        lacking = []
        for view, fingerprint in enumerate(fingerprints):
            key = text_key(fingerprint, text)
            held = ((memory is not None and memory.get(key) is not None)
                    or (disks[view] is not None and disks[view].has(key)))
            if not held:
                lacking.append(view)
        if lacking:
            needed[text] = lacking
    if not needed:
        return 0
    pending = list(needed)
    base = backbones[0]
    ids, _ = base.tokenize(pending, truncation=truncation)
    for row, states in base.iter_states(ids, batch_size=batch_size, batch_tokens=batch_tokens,
                                        progress=progress, views=backbones):
        text = pending[row]
        for view in needed[text]:
            key = text_key(fingerprints[view], text)
            entry = pack(states[view], storage, backbones[view].n_mixed)
            if memory is not None:
                memory.put(key, entry)
            if disks[view] is not None:
                disks[view].put(key, entry)
    for view, disk in enumerate(disks):
        if disk is not None:
            disk.record_encoded(sum(view in lacking for lacking in needed.values()))
    return len(pending)


def _unpacked(found, keys, storage, groups=1):
    """The states of ``keys`` from their entries, each distinct one unpacked
    once (so duplicates share one tensor)."""
    states = {key: unpack(entry, storage, groups) for key, entry in found.items()}
    return [states[key] for key in keys]


#: Seconds of waiting for another process's texts before saying so.
WAIT_NOTICE_SECONDS = 10.0


def _encode_claimed(disk, missing, found, memory, encode, size, limit):
    """Encode the missing texts a chunk at a time, each reserved first.

    A chunk holds texts until their ``size`` (a text's cost: 1, or its
    tokens) adds up to ``limit``. Every process walks the keys in the same
    (sorted) order and reserves the next chunk of texts no other process
    holds, so processes that need the same texts at once split them
    between them, and each encodes full batches. Texts reserved by others
    are then waited for and read; those a failed or stuck process left
    behind are taken over (:meth:`DiskCache.reserve`), so the wait is
    bounded by ``disk.stale_seconds``, and after
    :data:`WAIT_NOTICE_SECONDS` a :class:`CacheWarning` says what is waited
    for. Whatever happens (an error, Ctrl-C), this call's reservations are
    released.
    """
    held = set()

    def reserve(key):
        if disk.reserve(key):
            held.add(key)
            return True
        return False

    def encode_held(keys):
        try:
            _encode_reserved(disk, keys, found, memory, encode)
        finally:
            held.difference_update(keys)

    try:
        pending = iter(sorted(missing))
        waiting = []
        while True:
            mine, total = [], 0
            for key in pending:
                if reserve(key):
                    mine.append(key)
                    total += size(key)
                    if total >= limit:
                        break
                else:
                    waiting.append(key)
            if not mine:
                break
            encode_held(mine)
        started, told = time.monotonic(), False
        while waiting:
            waiting = _refresh(disk, waiting, found, memory)
            chunk, total = [], 0
            for key in waiting:
                chunk.append(key)
                total += size(key)
                if total >= limit:
                    break
            mine = [key for key in chunk if reserve(key)]
            if mine:
                encode_held(mine)
                taken = set(mine)
                waiting = [key for key in waiting if key not in taken]
                started = time.monotonic()
            elif waiting:
                if not told and time.monotonic() - started > WAIT_NOTICE_SECONDS:
                    told = True
                    owner = disk.claim_owner(waiting[0])
                    who = ("another process" if owner is None
                           else f"process {owner[1]} on host {owner[0]!r}")
                    warnings.warn(
                        f"Waiting for {len(waiting)} text(s) that {who} reserved to encode "
                        f"into {str(disk.directory)!r} (files *.claim). They are read as soon "
                        "as it stores them, or taken over if it dies or stops renewing them "
                        f"for {disk.stale_seconds:.0f} s. If no such process runs, delete "
                        "those .claim files.", CacheWarning, stacklevel=5)
                time.sleep(0.05)
    finally:
        disk.release(list(held))


def _encode_reserved(disk, keys, found, memory, encode):
    """Encode the reserved ``keys`` that no other process stored meanwhile;
    release them whatever happens."""
    try:
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
