"""CyborgDB's quickstart with the older SDK generation (cyborgdb 0.12.0, service API 0.12:
`index_config` create bodies, `index_key` on every request) against a running
`tkms engine serve`.

    python quickstart_012.py URL API_KEY

Run by engine/tests/sdk.rs against the same server as quickstart_current.py. This SDK
turns every service error into a ValueError carrying the HTTP status and body.
"""

import importlib.metadata
import sys

import numpy as np

import cyborgdb
from cyborgdb.openapi_client.models import Contents, IndexIVFFlatModel, IndexIVFPQModel

URL, API_KEY = sys.argv[1:3]
DIM = 8
PREFIX = "sdk012"
VERSION = importlib.metadata.version("cyborgdb")


def step(message):
    print(f"[cyborgdb {VERSION}] {message}", flush=True)


def refused(status, fn, *args, contains=None, **kwargs):
    """Calls fn, which must raise the SDK's ValueError for this HTTP status."""
    try:
        fn(*args, **kwargs)
    except ValueError as e:
        text = str(e)
        assert f"({status})" in text, f"expected HTTP {status}: {text}"
        assert "detail" in text, text
        if contains is not None:
            assert contains in text, f"{contains!r} not in {text}"
        return text
    raise AssertionError(f"{getattr(fn, '__name__', fn)} was not refused")


assert VERSION == "0.12.0", VERSION
client = cyborgdb.Client(URL, API_KEY)
assert client.get_health()["status"] == "healthy"
key = cyborgdb.Client.generate_key()

index = client.create_index(f"{PREFIX}_flat", key, IndexIVFFlatModel(dimension=DIM), metric="euclidean")
assert index.index_type == "ivfsq8"
assert index.index_config["dimension"] == DIM and index.index_config["metric"] == "euclidean"
pq = client.create_index(
    f"{PREFIX}_pq", cyborgdb.Client.generate_key(), IndexIVFPQModel(dimension=DIM, pq_dim=4, pq_bits=8), metric="cosine"
)
assert pq.index_config["metric"] == "cosine"
# No index_config at all: the dimension comes from the first upsert.
bare_key = cyborgdb.Client.generate_key()
bare = client.create_index(f"{PREFIX}_bare", bare_key)
assert bare.index_config["dimension"] == 0
refused(409, client.create_index, f"{PREFIX}_flat", key, IndexIVFFlatModel(dimension=DIM))
assert {f"{PREFIX}_flat", f"{PREFIX}_pq", f"{PREFIX}_bare"} <= set(client.list_indexes())
step("create_index with index_config (ivfflat, ivfpq, none); describe (index_type, index_config)")

rng = np.random.default_rng(12)
vectors = rng.standard_normal((200, DIM)).astype(np.float32)
index.upsert(
    [
        # This SDK's own model refuses a plain string as contents: it takes Contents(...).
        {"id": f"v{i}", "vector": vectors[i].tolist(), "contents": Contents(f"text {i}"), "metadata": {"i": i, "odd": i % 2 == 1}}
        for i in range(100)
    ]
)
index.upsert([f"v{i}" for i in range(100, 200)], vectors[100:200])
bare.upsert([{"id": "b0", "vector": [1.0, 2.0, 3.0]}])
# (The SDK caches index_config per handle: a fresh handle reads it again.)
assert client.load_index(f"{PREFIX}_bare", bare_key).index_config["dimension"] == 3
assert len(index.list_ids()) == 200
step("upsert: dicts, ids + numpy array; dimension from the first upsert")

index.train(n_lists=4, max_iters=10)
assert index.is_trained() and not index.is_training()
step("train(n_lists=4)")

# A single query comes back as one list of hits (this SDK nests it either way).
[hits] = index.query(query_vectors=vectors[11].tolist(), top_k=3, n_probes=4)
assert hits[0]["id"] == "v11" and hits[0]["distance"] < 1e-4, hits
assert hits[0]["metadata"] == {"i": 11, "odd": True}
[hits] = index.query(query_vectors=vectors[12], top_k=1, n_probes=4, include=["metadata"])
assert hits[0]["id"] == "v12" and hits[0]["metadata"]["i"] == 12
batch = index.query(query_vectors=vectors[:3], top_k=2, n_probes=4)
assert [b[0]["id"] for b in batch] == ["v0", "v1", "v2"]
step("query: single (list, numpy), batch")

filters = {"$and": [{"i": {"$gt": 40}}, {"i": {"$in": [41, 43, 45, 47, 60]}}], "odd": True}
[hits] = index.query(query_vectors=vectors[43], top_k=10, n_probes=4, filters=filters)
assert sorted(h["id"] for h in hits) == ["v41", "v43", "v45", "v47"], hits
assert hits[0]["id"] == "v43"
step("query filters ($and, $gt, $in, equality)")

got = index.get(["v5", "nope"], include=["vector", "contents", "metadata"])
assert [g["id"] for g in got] == ["v5"]
assert np.allclose(got[0]["vector"], vectors[5]) and got[0]["contents"] == "text 5"
assert got[0]["metadata"] == {"i": 5, "odd": True}
index.delete(["v5", "v6"])
ids = index.list_ids()
assert len(ids) == 198 and "v5" not in ids
step("get, delete, list_ids")

# A wrong key. This SDK's load_index does not raise (it logs the 401 and reports the index
# type as "unknown"), and its query() does not look at the status (an error answer reads as
# no results); every other call raises with the service's clear 401.
wrong = client.load_index(f"{PREFIX}_flat", cyborgdb.Client.generate_key())
assert wrong.index_type == "unknown"
refused(401, wrong.upsert, [{"id": "x", "vector": vectors[0].tolist()}], contains="wrong key")
refused(401, wrong.list_ids, contains="wrong key")
refused(401, wrong.train, contains="wrong key")
refused(401, wrong.delete_index, contains="wrong key")
assert len(index.list_ids()) == 198
step("wrong key: 401 with a clear detail, nothing changed")

# The metric of the older form's top level, and an unknown one (422: not in the document).
refused(422, client.create_index, f"{PREFIX}_bad", key, IndexIVFFlatModel(dimension=DIM), metric="hamming")
assert f"{PREFIX}_bad" not in client.list_indexes()
step("unknown metric refused (422), nothing created")

for ix in (index, pq, bare):
    ix.delete_index()
assert not [n for n in client.list_indexes() if n.startswith(PREFIX)]
step("delete_index")
print("OK", flush=True)
