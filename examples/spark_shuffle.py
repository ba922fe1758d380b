#!/usr/bin/env python3
"""A PySpark job whose shuffle goes through spark.local.dir (a stripefs
mount), checked.

Aggregates and sorts --rows generated rows by key: both shuffle, so every
map task writes its shuffle and index files under --local-dir and the
reduce tasks read them back. The sums per key are checked against their
closed form. Exits non-zero on a wrong result or if no shuffle file was
written there. Prints the job's time as JSON on its last line.

    python3 examples/spark_shuffle.py --local-dir /mnt/stripefs/spark-local
"""

import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local-dir", required=True, help="spark.local.dir (e.g. a dir on the stripefs mount)")
    ap.add_argument("--rows", type=int, default=4_000_000, help="rows generated")
    ap.add_argument("--keys", type=int, default=10_000, help="distinct keys")
    ap.add_argument("--partitions", type=int, default=16, help="map and reduce partitions")
    args = ap.parse_args()

    from pyspark.sql import SparkSession

    os.makedirs(args.local_dir, exist_ok=True)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("stripefs-shuffle")
        .config("spark.local.dir", args.local_dir)
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    sc = spark.sparkContext
    rows, keys = args.rows, args.keys
    started = time.time()
    pairs = sc.parallelize(range(rows), args.partitions).map(lambda i: (i % keys, i))
    sums = dict(pairs.reduceByKey(lambda a, b: a + b).collect())
    ordered = pairs.sortByKey(numPartitions=args.partitions).keys().collect()
    took = time.time() - started
    shuffle_files = sum(
        1 for d, _, files in os.walk(args.local_dir) for f in files if f.startswith("shuffle_")
    )
    spark.stop()

    def expected(k):
        # Sum of i < rows with i % keys == k.
        n = (rows - 1 - k) // keys + 1 if k < rows else 0
        return n * k + keys * n * (n - 1) // 2

    wrong = sum(1 for k in range(keys) if sums.get(k, 0) != expected(k))
    if ordered != sorted(ordered) or len(ordered) != rows:
        wrong += 1
    print(f"{rows} rows, {keys} keys, {shuffle_files} shuffle files under {args.local_dir}, "
          f"{wrong} wrong, {took:.1f} s", file=sys.stderr)
    print(json.dumps({"job": "spark_shuffle", "seconds": took, "rows": rows, "shuffle_files": shuffle_files,
                      "wrong": wrong}))
    if wrong or shuffle_files == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
