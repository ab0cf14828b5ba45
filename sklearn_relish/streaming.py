"""Fitting on more token states than memory holds: read them from the disk
cache as the fit goes.

``fit`` gathers every training row's token states in memory unless they
exceed ``max_state_memory`` (:func:`memory_budget`). Past it, the states stay
in the disk cache and are read row by row when the fit needs them
(:class:`StreamedStates`): ordinary reads of one file per text, which the
operating system's page cache serves from memory while it can, so there is
no buffer pool of our own. Everything ``fit`` computes from the states reads
them in passes:

- the head's epochs draw rows in the same order and batches as in memory
  (the dataset is indexed the same way), so a seed gives the same head;
- the token-state statistics are one pass;
- the ridge anchor's pooled features are written, in one pass, to an
  unnamed temporary file beside the cache (:func:`pooled_rows`; it vanishes
  with the process, even one that is killed), and the ridge reads them in
  blocks of rows (:class:`RowBlocks`): its means, Gram matrix and exact
  leave-one-out leverages are sums over blocks
  (:func:`~sklearn_relish.anchor.fit_ridge_loo`).

What stays in memory grows with the rows only by a few numbers per row
(targets, lengths, keys, the anchor's leave-one-out predictions), not by
their states.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Sequence

import numpy as np

from .cache import CacheWarning, cached_states, release_freed_memory, text_key
from .storage import storage_fingerprint
from .storage import unpack

__all__ = ["MEMORY_FRACTION", "RowBlocks", "StreamedStates", "available_memory",
           "memory_budget", "pooled_rows", "streamed_states", "take", "token_lengths"]

#: ``max_state_memory="auto"``: this share of the memory available when the
#: fit starts. The budget counts the states' float16 bytes, and an in-memory
#: fit's peak grows by about twice that (``benchmarks/results/streaming.md``),
#: so a quarter leaves half the memory free.
MEMORY_FRACTION = 0.25
#: Bytes of one block of rows that :class:`RowBlocks` hands out.
BLOCK_BYTES = 16 * 2**20

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def available_memory():
    """Bytes of memory available to a new allocation now (Linux
    ``MemAvailable``; elsewhere the free physical pages), or None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(value):
    """Bytes that ``max_state_memory=value`` allows for the training rows'
    token states, or None for no limit.

    >>> memory_budget(None) is None
    True
    >>> memory_budget(2_000_000), memory_budget("1.5 GB"), memory_budget("2GiB")
    (2000000, 1500000000, 2147483648)
    """
    if value is None:
        return None
    if isinstance(value, str) and value == "auto":
        available = available_memory()
        return None if available is None else int(MEMORY_FRACTION * available)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(
                f"max_state_memory={value!r} is not a size: give bytes (an int), a string "
                "such as '8GB' or '512MiB', 'auto' (a quarter of the available memory) or None "
                "(no limit).")
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    return int(value)


class StreamedStates(Sequence):
    """Token states of rows, read from a :class:`~sklearn_relish.cache.DiskCache`
    when indexed.

    ``states[i]`` is what the in-memory list would hold: the unpacked
    states of row ``i``. An entry that is missing or damaged when read
    (deleted by another process, a flipped byte) is encoded again with
    ``backbone`` and stored, with a :class:`~sklearn_relish.cache.CacheWarning`;
    an entry whose length changed is an error. Never a wrong row.

    Parameters
    ----------
    disk : DiskCache
    keys : sequence of str
        Each row's cache key (:func:`~sklearn_relish.cache.text_key`).
    lengths : sequence of int
        Each row's number of tokens.
    texts : sequence of str
        Each row's prompt, to encode it again.
    backbone : Backbone
    storage : {"float16", "int8"}
    encode : callable
        ``encode(texts) -> list of Tensor``: states of the texts, stored in
        ``disk`` (:func:`streamed_states` gives it).
    """

    def __init__(self, disk, keys, lengths, texts, backbone, storage, encode):
        self.disk = disk
        self.keys = list(keys)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.texts = list(texts)
        self.backbone = backbone
        self.storage = storage
        self._encode = encode
        self.n_encoded_again = 0

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError("StreamedStates takes one row number; use take(rows) for several.")
        index = int(index)
        key = self.keys[index]
        entry = self.disk.get(key)
        if entry is None:
            states = self._encode([self.texts[index]])[0]
            self.n_encoded_again += 1
            if self.n_encoded_again == 1:
                warnings.warn(
                    f"The cache entry of row {index} in {str(self.disk.directory)!r} was "
                    "missing or damaged while the fit read it; it was encoded again (so "
                    "is any other such row).", CacheWarning, stacklevel=2)
        else:
            states = unpack(entry, self.storage, getattr(self.backbone, "n_mixed", 1))
        _count_read()
        if len(states) != self.lengths[index]:
            raise RuntimeError(
                f"The cache entry of row {index} has {len(states)} tokens, but it had "
                f"{self.lengths[index]} when the fit began: another process rewrote "
                f"{str(self.disk.directory)!r} with other states under the same key. "
                "Fit again.")
        return states

    def take(self, rows):
        """The rows ``rows`` (in that order), still on disk."""
        rows = np.asarray(rows, dtype=np.int64)
        part = StreamedStates.__new__(StreamedStates)
        part.__dict__.update(self.__dict__)
        part.keys = [self.keys[i] for i in rows]
        part.lengths = self.lengths[rows]
        part.texts = [self.texts[i] for i in rows]
        return part

    def nbytes(self):
        """Bytes the distinct rows' states take once read (float16)."""
        distinct = dict(zip(self.keys, self.lengths.tolist()))
        return int(sum(distinct.values())) * self.backbone.state_width * 2

    def load(self):
        """Every row's states in memory, as the in-memory fit holds them
        (duplicate rows share one tensor)."""
        loaded = {}
        return [loaded[key] if key in loaded else loaded.setdefault(key, self[i])
                for i, key in enumerate(self.keys)]


#: Rows read between two returns of freed memory to the system.
TRIM_EVERY = 2048
_READS = [0]


def _count_read():
    """Every :data:`TRIM_EVERY` rows read, give the freed memory back.

    Each read allocates its row's states and frees them soon after; glibc
    keeps such freed pieces in its heaps, which then grow with the rows
    read, not with what is held (6000 MiniLM rows: 45 MB over one epoch).
    """
    _READS[0] += 1
    if _READS[0] % TRIM_EVERY == 0:
        release_freed_memory()


def streamed_states(backbone, texts, *, disk, storage="float16", **settings):
    """:class:`StreamedStates` of ``texts``, the states of those that no
    cache holds encoded into ``disk`` first (and never kept in memory).

    ``settings`` are those of :func:`~sklearn_relish.cache.cached_states`
    (batch sizes, ``truncation``, ``progress``). Returns the states and how
    many distinct texts were truncated, as ``cached_states`` does.
    """
    lengths, n_truncated = cached_states(backbone, texts, disk=disk, memory=None,
                                         storage=storage, stream=True, **settings)
    settings.pop("progress", None)

    def encode(again):
        states, _ = cached_states(backbone, again, disk=disk, memory=None, storage=storage,
                                  **settings)
        return states

    fingerprint = storage_fingerprint(backbone.fingerprint, storage)
    keys = [text_key(fingerprint, text) for text in texts]
    return StreamedStates(disk, keys, lengths, texts, backbone, storage, encode), n_truncated


def take(rows_of, rows):
    """The rows ``rows`` of token states or features: a list of a list, an
    array of an array, and still on disk for :class:`StreamedStates` and
    :class:`RowBlocks`."""
    if isinstance(rows_of, (StreamedStates, RowBlocks)):
        return rows_of.take(rows)
    if isinstance(rows_of, np.ndarray):
        return rows_of[rows]
    return [rows_of[i] for i in rows]


def token_lengths(states):
    """Each row's number of tokens, without reading streamed states."""
    if isinstance(states, StreamedStates):
        return states.lengths
    return np.array([len(s) for s in states], dtype=np.int64)


class RowBlocks:
    """A float64 matrix read in blocks of rows: the anchor's pooled features
    when they are too many to hold (:func:`pooled_rows`).

    ``read(rows)`` returns the rows (sorted, unique row numbers) as an
    ndarray; :meth:`blocks` walks them in order, :meth:`take` and
    :meth:`columns` give lazy views.
    """

    def __init__(self, n_rows, n_columns, read):
        self.shape = (int(n_rows), int(n_columns))
        self._read = read

    def __len__(self):
        return self.shape[0]

    @property
    def block_rows(self):
        return max(64, BLOCK_BYTES // max(8 * self.shape[1], 1))

    def blocks(self):
        """Yield ``(start, block)`` for consecutive blocks of rows."""
        for start in range(0, self.shape[0], self.block_rows):
            stop = min(start + self.block_rows, self.shape[0])
            yield start, self._read(np.arange(start, stop))

    def take(self, rows):
        """The rows ``rows`` (in that order), still read block by block."""
        rows = np.asarray(rows, dtype=np.int64)

        def read(part):
            wanted = rows[part]
            order = np.argsort(wanted, kind="stable")
            unique, inverse = np.unique(wanted[order], return_inverse=True)
            out = np.empty((len(wanted), self.shape[1]))
            out[order] = self._read(unique)[inverse]
            return out

        return RowBlocks(len(rows), self.shape[1], read)

    def columns(self, function, n_columns):
        """A view whose blocks are ``function(block)``, ``n_columns`` wide."""
        return RowBlocks(self.shape[0], n_columns, lambda rows: function(self._read(rows)))

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape)
        for start, block in self.blocks():
            out[start:start + len(block)] = block
        return out if dtype is None else out.astype(dtype)


def pooled_rows(states, pool, directory=None):
    """``pool(row_states)`` of every row of streamed states (the anchor's
    pooled features), written in one pass to an unnamed temporary file in
    ``directory`` and read back in blocks (:class:`RowBlocks`).

    The file has no name (it is deleted when the last reference to the
    returned object goes, or when the process ends, however it ends).
    """
    n, width = len(states), 2 * states.backbone.state_width
    row_bytes = 8 * width
    step = max(1, BLOCK_BYTES // row_bytes)
    block = np.empty((min(step, n), width))
    try:
        handle = tempfile.TemporaryFile(dir=directory, prefix=".relish-pooled-")
        for start in range(0, n, step):
            stop = min(start + step, n)
            for i in range(start, stop):            # one row's states at a time
                block[i - start] = pool(states[i]).numpy()
            handle.write(memoryview(block[:stop - start]))
        handle.flush()
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"The streamed fit could not write its pooled features ({n * row_bytes / 1e9:.2f} "
            f"GB, 2 x {width // 2} float64 per row) beside the cache in {str(directory)!r}: "
            f"{exc.strerror or exc}. Free that much space there, or give cache_dir a "
            "directory with room.") from exc

    def read(rows):
        fd = handle.fileno()        # the file lives as long as a view reads it
        out = np.empty((len(rows), width))
        if not len(rows):
            return out
        # Runs of consecutive rows are one read each.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        position = 0
        for run in np.split(rows, breaks):
            size = len(run) * row_bytes
            data = os.pread(fd, size, int(run[0]) * row_bytes)
            if len(data) != size:
                raise OSError(f"The pooled-features file was cut short ({len(data)} of "
                              f"{size} bytes read).")
            out[position:position + len(run)] = np.frombuffer(data).reshape(len(run), width)
            position += len(run)
        return out

    return RowBlocks(n, width, read)
