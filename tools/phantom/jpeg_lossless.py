"""A small encoder for JPEG Lossless, Process 14, Selection Value 1 (DICOM 1.2.840.10008.1.2.4.70).

pydicom 3 decodes this transfer syntax (through pylibjpeg-libjpeg) but cannot encode it,
and it is the compressed syntax CT archives use most, so readers must be tested on it.
The codec is ITU-T T.81 Annex H: each sample is predicted from its left neighbour (first
row: left; first column: above; first sample: ``2**(P-1)``), the prediction error's bit
length (SSSS, 0..16) is Huffman coded with a table optimised for the frame (Annex K.2),
followed by SSSS raw bits of the error. One component, one scan, point transform 0.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

_MAX_CODE_LENGTH = 16


def _code_lengths(freq: dict[int, int]) -> dict[int, int]:
    """Huffman code length per symbol (unlimited length), by the usual two-smallest merge."""
    heap: list[tuple[int, int, list[int]]] = [(f, s, [s]) for s, f in sorted(freq.items())]
    heapq.heapify(heap)
    lengths = {s: 0 for s in freq}
    tiebreak = 1000
    while len(heap) > 1:
        f1, _, s1 = heapq.heappop(heap)
        f2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        tiebreak += 1
        heapq.heappush(heap, (f1 + f2, tiebreak, s1 + s2))
    return lengths


def huffman_table(freq: dict[int, int]) -> tuple[list[int], list[int]]:
    """JPEG ``BITS`` (codes per length 1..16) and ``HUFFVAL`` for symbol frequencies (T.81 K.2).

    A reserved symbol of frequency 1 keeps any real code from being all ones; lengths over
    16 bits are folded back with the Adjust_BITS procedure.
    """
    reserved = 256
    used = {s: f for s, f in freq.items() if f > 0}
    lengths = _code_lengths({**used, reserved: 1})
    bits = [0] * 64
    for length in lengths.values():
        bits[length] += 1
    i = len(bits) - 1
    while i > _MAX_CODE_LENGTH:  # Adjust_BITS
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
        i -= 1
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # drop the reserved code (the longest)
    huffval = sorted(used, key=lambda s: (-used[s], s))  # most frequent get the shortest codes
    return bits[1 : _MAX_CODE_LENGTH + 1], huffval


def _canonical_codes(bits: list[int], huffval: list[int]) -> dict[int, tuple[int, int]]:
    """symbol -> (code, length), codes assigned in order of length (T.81 C.2)."""
    codes: dict[int, tuple[int, int]] = {}
    code, k = 0, 0
    for length in range(1, _MAX_CODE_LENGTH + 1):
        for _ in range(bits[length - 1]):
            codes[huffval[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def _pack_bits(values: np.ndarray, lengths: np.ndarray) -> bytes:
    """Concatenate ``values[n]`` written MSB-first in ``lengths[n]`` bits; pad with 1-bits."""
    total = int(lengths.sum())
    owner = np.repeat(np.arange(values.size), lengths)
    starts = np.cumsum(lengths) - lengths
    shift = lengths[owner] - 1 - (np.arange(total) - starts[owner])
    stream = ((values[owner] >> shift) & 1).astype(np.uint8)
    stream = np.concatenate([stream, np.ones((-total) % 8, dtype=np.uint8)])
    return np.packbits(stream).tobytes().replace(b"\xff", b"\xff\x00")  # byte stuffing


def encode_jpeg_lossless_sv1(frame: np.ndarray, precision: int) -> bytes:
    """Encode one ``[rows, cols]`` uint16/int16 frame as a JPEG Lossless SV1 codestream.

    precision: sample precision P in bits (DICOM BitsStored, 2..16). Signed frames are
    coded by their 16-bit two's-complement pattern, as DICOM requires (P must be 16 then
    unless all values are non-negative).
    """
    if frame.ndim != 2 or frame.dtype not in (np.uint16, np.int16, np.uint8):
        raise ValueError(f"frame must be 2D uint8/uint16/int16, got {frame.dtype} {frame.shape}")
    if not 2 <= precision <= 16:
        raise ValueError(f"precision must be 2..16 bits, got {precision}")
    x = frame.astype(np.int64) & 0xFFFF
    if int(x.max()) >= 1 << precision:
        raise ValueError(f"values need more than {precision} bits (max pattern {int(x.max())})")
    rows, cols = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = (x - pred) & 0xFFFF
    diff = np.where(diff >= 0x8000, diff - 0x10000, diff).ravel()
    ssss = np.frexp(np.abs(diff).astype(np.float64))[1].astype(np.int64)  # bit length, 0 for 0
    extra_len = np.where(ssss == 16, 0, ssss)  # SSSS=16 (-32768) carries no extra bits
    extra = np.where(diff >= 0, diff, diff + (1 << extra_len) - 1) & ((1 << extra_len) - 1)
    bits, huffval = huffman_table(
        {int(s): int(n) for s, n in zip(*np.unique(ssss, return_counts=True))}
    )
    codes = _canonical_codes(bits, huffval)
    code_of = np.zeros(17, dtype=np.int64)
    len_of = np.zeros(17, dtype=np.int64)
    for s, (code, length) in codes.items():
        code_of[s], len_of[s] = code, length
    values = (code_of[ssss] << extra_len) | extra
    scan = _pack_bits(values, len_of[ssss] + extra_len)
    sof = struct.pack(">BHHBBBB", precision, rows, cols, 1, 1, 0x11, 0)
    dht = bytes([0x00]) + bytes(bits) + bytes(huffval)
    sos = bytes([1, 1, 0x00, 1, 0, 0x00])  # Ns=1, Cs=1, Td/Ta=0, Ss=predictor 1, Se=0, Ah/Al=0
    out = bytearray(b"\xff\xd8")
    for marker, payload in ((0xC3, sof), (0xC4, dht), (0xDA, sos)):
        out += struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload
    out += scan + b"\xff\xd9"
    return bytes(out)
