"""CyborgDB's quickstart, and the rest of the SDK surface, with the current official Python
SDK (cyborgdb 0.18.0, service API 0.17) against a running `tkms engine serve`.

    python quickstart_current.py URL API_KEY KMS_NAME

Run by engine/tests/sdk.rs. KMS_NAME names a KMS provider the service was started with
(the test uses aws-kms against a local moto). Prints one line per step; any failed check
raises, so the exit status says whether the SDK works against the service.
"""

import sys

import numpy as np

import cyborgdb
from cyborgdb import AuthenticationError, ConflictError, NotFoundError, ValidationError

URL, API_KEY, KMS_NAME = sys.argv[1:4]
DIM = 16
N = 300
PREFIX = "sdk018"


def step(message):
    print(f"[cyborgdb {cyborgdb.__version__}] {message}", flush=True)


def refused(exc_type, status, fn, *args, contains=None, **kwargs):
    """Calls fn, which must raise exc_type with this HTTP status (and detail text)."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        assert e.status_code == status, f"expected {status}, got {e.status_code}: {e}"
        assert e.detail, f"no detail in {e!r}"
        if contains is not None:
            assert contains in e.detail, f"{contains!r} not in {e.detail!r}"
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)} was not refused")


def metadata(i):
    return {
        "i": i,
        "parity": "even" if i % 2 == 0 else "odd",
        "group": ["a", "b", "c"][i % 3],
        "nested": {"score": i / 10.0},
    }


assert cyborgdb.__version__ == "0.18.0", cyborgdb.__version__
client = cyborgdb.Client(URL, api_key=API_KEY)
assert client.get_health()["status"] == "healthy"
step("health")

# Quickstart: generate a key, create an index with a dimension.
key = cyborgdb.Client.generate_key()
assert isinstance(key, bytes) and len(key) == 32
index = client.create_index(f"{PREFIX}_main", key, dimension=DIM, metric="euclidean")
refused(ConflictError, 409, client.create_index, f"{PREFIX}_main", key, dimension=DIM)
assert f"{PREFIX}_main" in client.list_indexes()
assert index.dimension == DIM and index.metric == "euclidean"
assert index.n_lists == 1 and not index.is_trained()
step("create_index with a dimension; describe (dimension, metric, n_lists)")

rng = np.random.default_rng(7)
vectors = rng.standard_normal((N, DIM)).astype(np.float32)

# Upsert with dicts (JSON path), with contents and metadata.
index.upsert(
    [
        {
            "id": f"item-{i}",
            "vector": vectors[i],
            "contents": f"document {i}",
            "metadata": metadata(i),
        }
        for i in range(150)
    ]
)
# Upsert with ids and a numpy array (the binary path).
index.upsert([f"item-{i}" for i in range(150, 250)], vectors[150:250])
# upsert_binary with metadata and contents.
index.upsert_binary(
    [f"item-{i}" for i in range(250, N)],
    vectors[250:N],
    metadata=[metadata(i) for i in range(250, N)],
    contents=[f"document {i}" for i in range(250, N)],
)
assert sorted(index.list_ids()) == sorted(f"item-{i}" for i in range(N))
step("upsert: dicts, numpy ids+array, upsert_binary with metadata/contents")

# Untrained queries are exact.
hits = index.query(query_vectors=vectors[5], top_k=3)
assert hits[0]["id"] == "item-5" and hits[0]["distance"] < 1e-4, hits
# Train: n_lists chosen from the item count (~sqrt(n), at least 39 items per list).
index.train()
assert index.is_trained() and not index.is_training()
n_lists = index.n_lists
assert n_lists == min(round(N**0.5), N // 39), n_lists
step(f"train (auto n_lists = {n_lists}); is_trained, is_training")

# Single query, numpy 1-D: one list of hits, distances always present.
hits = index.query(query_vectors=vectors[7], top_k=5, n_probes=n_lists)
assert isinstance(hits, list) and isinstance(hits[0], dict), hits
assert hits[0]["id"] == "item-7" and hits[0]["distance"] < 1e-4
assert all("distance" in h for h in hits)
# Single query as a list of floats (JSON path): the service nests it as a batch of one.
nested = index.query(query_vectors=vectors[7].tolist(), top_k=5, n_probes=n_lists)
assert len(nested) == 1 and [h["id"] for h in nested[0]] == [h["id"] for h in hits], nested
# Batch query, numpy 2-D.
batch = index.query(query_vectors=vectors[:4], top_k=2, n_probes=n_lists)
assert len(batch) == 4 and [b[0]["id"] for b in batch] == [f"item-{i}" for i in range(4)]
# Batch as a list of lists (JSON path).
batch = index.query(query_vectors=vectors[:3].tolist(), top_k=2, n_probes=n_lists)
assert [b[0]["id"] for b in batch] == [f"item-{i}" for i in range(3)]
step("query: single (numpy, list), batch (numpy, list)")

# Filters: $and/$gt/$in/$exists/$ne, dot paths, $or.
flt = {"$and": [{"i": {"$gt": 100}}, {"parity": {"$in": ["odd"]}}]}
for hits in index.query(
    query_vectors=vectors[:2], top_k=10, n_probes=n_lists, filters=flt, include=["metadata"]
):
    assert hits, "a filtered query found nothing"
    for h in hits:
        assert h["metadata"]["i"] > 100 and h["metadata"]["parity"] == "odd", h
        assert "distance" in h
hits = index.query(
    query_vectors=vectors[3],
    top_k=20,
    n_probes=n_lists,
    filters={
        "$or": [{"group": "a"}, {"nested.score": {"$lte": 1.0}}],
        "parity": {"$ne": "even"},
        "i": {"$exists": True},
    },
    include=["metadata"],
)
assert hits
for h in hits:
    m = h["metadata"]
    assert m["parity"] == "odd" and (m["group"] == "a" or m["nested"]["score"] <= 1.0), m
refused(ValidationError, 400, index.query, query_vectors=vectors[0], filters={"i": {"$near": 1}})
step("query filters ($and $gt $in $or $ne $exists, dot paths); bad filter refused")

# Every include (the numpy path returns every field the service sends).
for include in (["distance"], ["metadata"], ["vector"], ["contents"], ["distance", "metadata", "vector", "contents"]):
    [h] = index.query(query_vectors=vectors[9], top_k=1, n_probes=n_lists, include=include)
    assert h["id"] == "item-9" and h["distance"] < 1e-4, (include, h)
    assert (h.get("metadata") is not None) == ("metadata" in include), (include, h)
    assert (h.get("vector") is not None) == ("vector" in include), (include, h)
    if "vector" in include:
        assert np.allclose(h["vector"], vectors[9])
step("query include: distance, metadata, vector, contents, all")

# get (unknown ids skipped), every include.
got = index.get(["item-3", "missing", "item-260"], include=["vector", "contents", "metadata"])
assert [g["id"] for g in got] == ["item-3", "item-260"]
assert np.allclose(got[0]["vector"], vectors[3]) and got[0]["contents"] == "document 3"
assert got[0]["metadata"] == metadata(3) and got[1]["metadata"] == metadata(260)
assert got[1]["contents"] == "document 260"
[only] = index.get(["item-4"], include=["metadata"])
assert set(only) == {"id", "metadata"}, only
step("get")

# query_metadata: by metadata alone, ordered, capped.
rows = index.query_metadata(filters={"parity": "even", "i": {"$lt": 20}}, order_by={"i": -1}, top_k=3)
assert rows == [{"id": "item-18"}, {"id": "item-16"}, {"id": "item-14"}], rows
rows = index.query_metadata(filters={"group": "b"}, order_by="i", ascending=True, top_k=2)
assert rows == [{"id": "item-1"}, {"id": "item-4"}], rows
assert len(index.query_metadata()) == N
step("query_metadata (filters, order_by, top_k)")

# delete, list_ids.
index.delete(["item-3", "item-4", "never-there"])
ids = index.list_ids()
assert len(ids) == N - 2 and "item-3" not in ids and "item-4" not in ids
assert index.get(["item-3"]) == []
step("delete, list_ids")

# load_index with the right key, and with a wrong one: a clear authentication error.
again = client.load_index(f"{PREFIX}_main", key)
assert again.dimension == DIM and again.is_trained()
e = refused(
    AuthenticationError,
    401,
    client.load_index,
    f"{PREFIX}_main",
    cyborgdb.Client.generate_key(),
    contains="wrong key",
)
step(f"load_index: right key; wrong key -> {type(e).__name__} 401 {e.detail!r}")
refused(NotFoundError, 404, client.load_index, f"{PREFIX}_nope", key)

# An index created without a dimension takes it from the first upsert.
auto = client.create_index(f"{PREFIX}_auto", cyborgdb.Client.generate_key())
assert auto.dimension == 0 and auto.n_lists == 1
assert auto.query(query_vectors=np.ones(8, dtype=np.float32), top_k=3) == []
auto.upsert([f"a{i}" for i in range(40)], rng.standard_normal((40, 8)).astype(np.float32))
assert auto.dimension == 8
refused(ValidationError, 400, auto.upsert, [{"id": "bad", "vector": [1.0] * 9}], contains="dimension")
auto.train(n_lists=2)
assert auto.n_lists == 2 and auto.is_trained()
step("create_index without a dimension: taken from the first upsert; train(n_lists=2)")

# squared_euclidean is served as such.
sq = client.create_index(f"{PREFIX}_sq", cyborgdb.Client.generate_key(), dimension=DIM, metric="squared_euclidean")
assert sq.metric == "squared_euclidean"
sq.upsert(["x", "y"], vectors[:2])
[h] = sq.query(query_vectors=vectors[0] + 1.0, top_k=1)
assert h["id"] == "x" and abs(h["distance"] - DIM) < 1e-3, h
step("squared_euclidean distances")

# What tkms does not have is refused with a clear error, and nothing is created.
refused(ValidationError, 400, client.create_index, f"{PREFIX}_f16", key, dimension=4, storage_precision="float16", contains="float32")
refused(ValidationError, 400, client.create_index, f"{PREFIX}_both", key, kms_name=KMS_NAME, dimension=4)
refused(ValidationError, 400, client.create_index, f"{PREFIX}_nokms", kms_name="no-such-kms", dimension=4)
refused(ValidationError, 400, index.query, query_vectors=vectors[0], text="hello")
assert not any(n.startswith((f"{PREFIX}_f16", f"{PREFIX}_both", f"{PREFIX}_nokms")) for n in client.list_indexes())
step("unsupported options refused (400), nothing created")

# A KMS-backed index: the service draws the KEK and wraps it with the KMS; no key anywhere.
kms_index = client.create_index(f"{PREFIX}_kms", kms_name=KMS_NAME, dimension=DIM)
kms_index.upsert([f"k{i}" for i in range(20)], vectors[:20])
loaded = client.load_index(f"{PREFIX}_kms")
assert loaded.dimension == DIM
assert loaded.query(query_vectors=vectors[4], top_k=1)[0]["id"] == "k4"
step(f"KMS-backed index through kms_name={KMS_NAME!r}: create, upsert, load without a key")

# Per-user keys: read-only and read-write, listed, revoked.
ro = index.create_user(permissions=["read"])
rw = index.create_user(permissions=["read", "write"])
assert ro["api_key"].startswith("cdbk_") and rw["api_key"].startswith("cdbk_")
users = {u["user_id"]: sorted(u["permissions"]) for u in index.list_users()}
assert users == {ro["user_id"]: ["read"], rw["user_id"]: ["read", "write"]}, users
refused(ValidationError, 400, index.create_user, permissions=["write"])

reader_client = cyborgdb.Client(URL, api_key=ro["api_key"])
assert reader_client.list_indexes() == [f"{PREFIX}_main"]
reader = reader_client.load_index(f"{PREFIX}_main")
assert reader.query(query_vectors=vectors[7], top_k=1, n_probes=n_lists)[0]["id"] == "item-7"
assert reader.get(["item-8"], include=["metadata"])[0]["metadata"] == metadata(8)
assert len(reader.list_ids()) == N - 2 and reader.is_trained()
assert reader.query_metadata(filters={"i": 9}) == [{"id": "item-9"}]
for name, write in [
    ("upsert", lambda: reader.upsert([{"id": "z", "vector": vectors[0]}])),
    ("upsert numpy", lambda: reader.upsert(["z"], vectors[:1])),
    ("delete", lambda: reader.delete(["item-7"])),
    ("train", lambda: reader.train()),
    ("delete_index", lambda: reader.delete_index()),
    ("create_user", lambda: reader.create_user(permissions=["read"])),
    ("create_index", lambda: reader_client.create_index(f"{PREFIX}_x", key, dimension=4)),
]:
    refused(AuthenticationError, 403, write)
assert len(index.list_ids()) == N - 2
# A user key opens no other index.
refused(AuthenticationError, 401, reader_client.load_index, f"{PREFIX}_sq")
step("read-only user key: reads work, every write refused (403), other indexes closed")

writer = cyborgdb.Client(URL, api_key=rw["api_key"]).load_index(f"{PREFIX}_main")
writer.upsert([{"id": "from-writer", "vector": vectors[0], "metadata": {"by": "writer"}}])
writer.delete(["from-writer"])
refused(AuthenticationError, 403, writer.delete_index)
step("read-write user key: writes work, delete_index refused (403)")

index.delete_user(ro["user_id"])
refused(AuthenticationError, 401, reader.query, query_vectors=vectors[7], top_k=1)
refused(AuthenticationError, 401, reader_client.load_index, f"{PREFIX}_main")
assert [u["user_id"] for u in index.list_users()] == [rw["user_id"]]
refused(NotFoundError, 404, index.delete_user, ro["user_id"])
# User keys on the KMS-backed index: minted without any index key.
kms_reader = kms_index.create_user(permissions=["read"])
kr = cyborgdb.Client(URL, api_key=kms_reader["api_key"]).load_index(f"{PREFIX}_kms")
assert kr.query(query_vectors=vectors[5], top_k=1)[0]["id"] == "k5"
refused(AuthenticationError, 403, kr.upsert, ["z"], vectors[:1])
step("revoked key refused at once (401); user keys on a KMS-backed index")

# delete_index.
for ix in (index, auto, sq, kms_index):
    ix.delete_index()
left = [n for n in client.list_indexes() if n.startswith(PREFIX)]
assert left == [], left
refused(NotFoundError, 404, client.load_index, f"{PREFIX}_main", key)
step("delete_index")
print("OK", flush=True)
