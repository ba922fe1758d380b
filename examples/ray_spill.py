#!/usr/bin/env python3
"""Ray object spilling onto a directory (a stripefs mount), checked.

Puts objects worth several times Ray's object store into it, so that Ray
spills most of them to --spill-dir, then gets every one back and checks
its bytes. Exits non-zero on any mismatch or if nothing was spilled.
Prints the job's time as JSON on its last line.

    python3 examples/ray_spill.py --spill-dir /mnt/stripefs/ray-spill
"""

import argparse
import hashlib
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spill-dir", required=True, help="where Ray spills objects (e.g. a dir on the stripefs mount)")
    ap.add_argument("--store-mb", type=int, default=256, help="Ray's object store size (MiB)")
    ap.add_argument("--objects", type=int, default=48, help="objects to put")
    ap.add_argument("--object-mb", type=int, default=32, help="size of each object (MiB)")
    args = ap.parse_args()

    import numpy as np
    import ray

    os.makedirs(args.spill_dir, exist_ok=True)
    spilling = {"type": "filesystem", "params": {"directory_path": args.spill_dir}}
    ray.init(
        num_cpus=2,
        object_store_memory=args.store_mb << 20,
        include_dashboard=False,
        _system_config={"object_spilling_config": json.dumps(spilling), "min_spilling_size": 1 << 20},
        logging_level="ERROR",
    )
    n = (args.object_mb << 20) // 8
    started = time.time()
    refs, digests = [], []
    for i in range(args.objects):
        a = np.random.default_rng(i).integers(0, 2**63, size=n, dtype=np.int64)
        digests.append(hashlib.sha256(a.tobytes()).hexdigest())
        refs.append(ray.put(a))
        del a
    spilled_files = sum(len(f) for _, _, f in os.walk(args.spill_dir))
    bad = 0
    for i, ref in enumerate(refs):
        got = ray.get(ref)
        if hashlib.sha256(got.tobytes()).hexdigest() != digests[i]:
            print(f"object {i}: wrong bytes", file=sys.stderr)
            bad += 1
        del got
    took = time.time() - started
    ray.shutdown()
    total_mb = args.objects * args.object_mb
    print(f"{args.objects} objects, {total_mb} MiB through a {args.store_mb} MiB store, "
          f"{spilled_files} spill files in {args.spill_dir}, {bad} wrong, {took:.1f} s", file=sys.stderr)
    print(json.dumps({"job": "ray_spill", "seconds": took, "objects": args.objects, "mib": total_mb,
                      "spill_files": spilled_files, "wrong": bad}))
    if bad or spilled_files == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
