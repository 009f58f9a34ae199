#!/usr/bin/env python3
"""Seeds the HTTP/2 fuzz targets' corpora with the recorded connections of
exporter/src/families/http/h2/testdata (real clients and servers), each encoded as its target
reads its input, so that fuzzing starts from valid framing and HPACK rather than from nothing.

usage: seed.py CORPUS_DIR   (writes CORPUS_DIR/{h2_connection,h2_walked,h2_hpack}/seed-*)
"""
import pathlib
import sys

TESTDATA = pathlib.Path(__file__).resolve().parent.parent / "exporter/src/families/http/h2/testdata"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PUSH_PROMISE, CONTINUATION = 0, 1, 5, 9
MAX_KEPT = 16384  # H2_MAX_KEPT: larger payloads are left out of the kernel's walk


def recording(path):
    """[(from_client, bytes)] of one recording."""
    out = []
    for line in path.read_text().splitlines():
        tag, _, hexed = line.partition(" ")
        if hexed:
            out.append((tag == "c", bytes.fromhex(hexed)))
    return out


def frames(stream):
    """(kind, flags, header+payload) of one direction's bytes, the preface skipped."""
    if stream.startswith(PREFACE):
        stream = stream[len(PREFACE):]
    at = 0
    while at + 9 <= len(stream):
        length = int.from_bytes(stream[at:at + 3], "big")
        yield stream[at + 3], stream[at + 4], stream[at:at + 9 + length]
        at += 9 + length


def pieces(n, sizes):
    """Splits n into lengths from `sizes` (descending, ending with 1)."""
    out = []
    for size in sizes:
        while n >= size:
            out.append(size)
            n -= size
    return out


def steps(data, side, control_of, sizes):
    """`data` as the target's steps: a control byte each, then its bytes."""
    out, at = bytearray(), 0
    for size in pieces(len(data), sizes):
        out.append(control_of(size) | side)
        out += data[at:at + size]
        at += size
    return bytes(out)


def h2_connection(chunks):
    # First byte 0: from the beginning, the preface sent first. Steps: (control>>2)*4+1 bytes.
    out = bytearray([0])
    for client, data in chunks:
        if client and data.startswith(PREFACE):
            data = data[len(PREFACE):]
        out += steps(data, 0 if client else 1, lambda n: (n - 1) // 4 << 2,
                     [4 * k + 1 for k in range(63, -1, -1)])
    return bytes(out)


def h2_walked(chunks):
    # First byte 0: from the beginning. Walked steps: (control>>4)*16+1 bytes, action 0.
    out = bytearray([0])
    for client, data in chunks:
        walked = b"".join(
            f[:9] if kind == DATA or len(f) - 9 > MAX_KEPT else f for kind, _, f in frames(data)
        )
        out += steps(walked, 0 if client else 1, lambda n: (n - 1) // 16 << 4,
                     [16 * k + 1 for k in range(15, -1, -1)])
    return bytes(out)


def h2_hpack(chunks, client):
    # One direction's header block fragments (unpadded, no priority), cut at 0xfe.
    blocks = []
    for from_client, data in chunks:
        if from_client != client:
            continue
        for kind, flags, f in frames(data):
            if kind not in (HEADERS, CONTINUATION) or flags & 0x28:
                continue
            blocks.append(f[9:])
    return b"\xfe".join(blocks)


def main():
    corpus = pathlib.Path(sys.argv[1])
    for path in sorted(TESTDATA.glob("*.txt")):
        chunks = recording(path)
        seeds = {
            "h2_connection": [h2_connection(chunks)],
            "h2_walked": [h2_walked(chunks)],
            "h2_hpack": [h2_hpack(chunks, True), h2_hpack(chunks, False)],
        }
        for target, inputs in seeds.items():
            (corpus / target).mkdir(parents=True, exist_ok=True)
            for i, data in enumerate(inputs):
                if not data:
                    continue
                (corpus / target / f"seed-{path.stem}-{i}").write_bytes(data)


if __name__ == "__main__":
    main()
