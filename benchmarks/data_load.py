"""One-off decode time and cached-load time of the full CIFAR-10 from the shared JPEG tar.

    python benchmarks/data_load.py [--data-dir ../shared/data/cifar10-jpg.tar] [--repeat 3]

The decode runs into a fresh temporary cache folder (so it is a real first load: tar index,
parallel JPEG decode, content hash, cache write); the cached loads then read that cache back
(header + tensor checksum verified each time). Target: cached load < 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(DEFAULT_TAR))
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from caprobe.data import load_dataset

    with tempfile.TemporaryDirectory(prefix="caprobe-bench-") as cache:
        t0 = time.perf_counter()
        ds = load_dataset(args.data, data_dir=args.data_dir, cache_dir=cache)
        decode_s = time.perf_counter() - t0
        assert ds.info["cache"] == "built"
        cached = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            again = load_dataset(args.data, data_dir=args.data_dir, cache_dir=cache)
            cached.append(time.perf_counter() - t0)
            assert again.info["cache"] == "hit" and again.checksum == ds.checksum
        cache_bytes = Path(ds.info["cache_file"]).stat().st_size
    record = {
        "data": args.data, "source": ds.source, "images": len(ds.train) + len(ds.test),
        "decode_s": round(decode_s, 2), "cached_load_s": [round(v, 3) for v in cached],
        "cached_load_median_s": round(statistics.median(cached), 3),
        "cache_mb": round(cache_bytes / 1e6, 1), "checksum": ds.checksum,
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(record, indent=2))
        return
    print(f"{record['data']}: {record['images']} images from {record['source']}")
    print(f"one-off decode (index, decode, hash, cache write): {record['decode_s']:.2f} s "
          f"on {record['cpus']} CPUs (1-min load average {record['load_avg_1min']})")
    print(f"cached load: median {record['cached_load_median_s']:.3f} s over {args.repeat} "
          f"({', '.join(f'{v:.3f}' for v in cached)}), target < 3 s; cache file "
          f"{record['cache_mb']} MB")


if __name__ == "__main__":
    main()
