"""Verification cost: microseconds per verified webhook through falhook.intake.verify (header
checks, sha256 of the body, message assembly, Ed25519 verify against the cached key) against
one bare PyNaCl verify of the same message, in one run.

    python bench/verify_bench.py [--number 20000] [--repeat 5] [--max-ratio 1.5]

Exits 1 when the median ratio exceeds --max-ratio (the budget: 1.5x a bare verify).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
import uuid

from falhook.intake.keys import parse_jwks
from falhook.intake.verify import verify
from falhook.testing import FalSigner, webhook_body


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--max-ratio", type=float, default=1.5)
    args = ap.parse_args()
    signer = FalSigner()
    keys = parse_jwks(signer.jwks())
    request_id, body = webhook_body(str(uuid.uuid4()))  # a realistic ~300-byte reframe body
    headers = {k.lower(): v for k, v in signer.headers(body, request_id).items()}
    signed = verify(headers, body, keys, now=time.time())  # the exact message and signature
    key = keys[0]

    def ours() -> None:
        verify(headers, body, keys, now=time.time())

    def bare() -> None:
        key.verify(signed.message, signed.signature)

    ratios, ours_us, bare_us = [], [], []
    for _ in range(args.repeat):  # interleaved, so drift hits both alike
        b = timeit.timeit(bare, number=args.number) / args.number * 1e6
        o = timeit.timeit(ours, number=args.number) / args.number * 1e6
        bare_us.append(b)
        ours_us.append(o)
        ratios.append(o / b)
    print(f"bare PyNaCl verify : {statistics.median(bare_us):6.1f} us")
    print(f"falhook.intake.verify    : {statistics.median(ours_us):6.1f} us")
    ratio = statistics.median(ratios)
    print(f"ratio              : {ratio:6.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})")
    if ratio > args.max_ratio:
        print(f"over budget: {ratio:.2f}x > {args.max_ratio:.2f}x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
