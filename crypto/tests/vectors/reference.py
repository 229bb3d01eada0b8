#!/usr/bin/env python3
"""Independent Python reference implementation for tkms-crypto known-answer tests.

Subcommands:
  gen                          write ecies.json, dleq.json, lagrange.json, aggregate.json beside this script
  selftest                     check expand_message_xmd (RFC 9380 K.1), point arithmetic, round trips
  encrypt <pk_hex> [--curve C] read plaintext on stdin, print 0x-hex ECIES container
  decrypt <sk_hex> [--curve C] read hex container on stdin, write plaintext to stdout

C is "secp256k1" (default) or "P-256". Elliptic-curve arithmetic used for DLEQ and for
cross-checks is implemented here in pure Python (affine coordinates); ECIES itself uses the
`cryptography` package (ECDH, HKDF, AES-GCM). Requires Python >= 3.8 and `cryptography`.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

GENERATOR = "crypto/tests/vectors/reference.py"
HERE = Path(__file__).resolve().parent

# ---- Curve parameters (SEC 2 v2) and pure-Python affine point arithmetic. ------------
# A point is a tuple (x, y) of ints; the point at infinity is None.

class Curve:
    def __init__(self, name, p, a, b, gx, gy, n, crypto_curve):
        self.name, self.p, self.a, self.b, self.n = name, p, a, b, n
        self.G = (gx, gy)
        self.crypto_curve = crypto_curve  # `cryptography` curve class, used for ECIES only

    def on_curve(self, P):
        if P is None:
            return True
        x, y = P
        return (y * y - (x * x * x + self.a * x + self.b)) % self.p == 0

    def add(self, P, Q):
        if P is None:
            return Q
        if Q is None:
            return P
        p = self.p
        (x1, y1), (x2, y2) = P, Q
        if x1 == x2:
            if (y1 + y2) % p == 0:
                return None  # P + (-P) = O (also covers doubling a point with y = 0)
            lam = (3 * x1 * x1 + self.a) * pow(2 * y1, -1, p) % p
        else:
            lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
        x3 = (lam * lam - x1 - x2) % p
        return (x3, (lam * (x1 - x3) - y1) % p)

    def neg(self, P):
        return None if P is None else (P[0], (-P[1]) % self.p)

    def mul(self, k, P):
        """Left-to-right double-and-add (not constant time; test-vector use only)."""
        k %= self.n
        R = None
        for bit in bin(k)[2:] if k else "":
            R = self.add(R, R)
            if bit == "1":
                R = self.add(R, P)
        return R

    def base_mul(self, k):
        return self.mul(k, self.G)

    def sqrt(self, v):
        """Square root mod p (p = 3 mod 4 for both curves); None if v is a non-residue."""
        r = pow(v, (self.p + 1) // 4, self.p)
        return r if r * r % self.p == v % self.p else None

    def rhs(self, x):
        return (x * x * x + self.a * x + self.b) % self.p

    def compress(self, P):
        if P is None:
            raise ValueError("cannot encode the point at infinity")
        x, y = P
        return bytes([2 | (y & 1)]) + x.to_bytes(32, "big")

    def decompress(self, data):
        if len(data) != 33 or data[0] not in (2, 3):
            raise ValueError("bad SEC1 compressed encoding")
        x = int.from_bytes(data[1:], "big")
        if x >= self.p:
            raise ValueError("x coordinate out of range")
        y = self.sqrt(self.rhs(x))
        if y is None:
            raise ValueError("x is not on the curve")
        if (y & 1) != (data[0] & 1):
            y = self.p - y
        return (x, y)


SECP256K1 = Curve(  # name, p, a, b, Gx, Gy, n
    "secp256k1", 2**256 - 2**32 - 977, 0, 7,
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141, ec.SECP256K1)
P256 = Curve(  # a = -3 mod p
    "P-256", 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFC,
    0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, ec.SECP256R1)
CURVES = {c.name: c for c in (SECP256K1, P256)}

# ---- Deterministic derivation of test inputs from fixed labels. ----------------------

def sha256(data):
    return hashlib.sha256(data).digest()


def label_scalar(curve, label):
    """SHA-256(label) as a big-endian integer, mapped into [1, n-1]."""
    return int.from_bytes(sha256(label.encode()), "big") % (curve.n - 1) + 1


def label_bytes(label, length):
    """`length` bytes of SHA-256(label || I2OSP(counter, 4)) for counter = 0, 1, ..."""
    out, ctr = b"", 0
    while len(out) < length:
        out += sha256(label.encode() + ctr.to_bytes(4, "big"))
        ctr += 1
    return out[:length]


def s32(k):
    """Scalar / field element as 32-byte big-endian lowercase hex."""
    return k.to_bytes(32, "big").hex()


# ---- RFC 9380 expand_message_xmd (SHA-256) and the tkms hash_to_scalar. --------------

def expand_message_xmd(msg, dst, len_in_bytes):
    b_in_bytes, s_in_bytes = 32, 64
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535 or len(dst) > 255:
        raise ValueError("expand_message_xmd: bad parameters")
    dst_prime = dst + bytes([len(dst)])
    z_pad = bytes(s_in_bytes)
    l_i_b_str = len_in_bytes.to_bytes(2, "big")
    b0 = sha256(z_pad + msg + l_i_b_str + b"\x00" + dst_prime)
    b = [sha256(b0 + b"\x01" + dst_prime)]
    for i in range(2, ell + 1):
        b.append(sha256(bytes(x ^ y for x, y in zip(b0, b[-1])) + bytes([i]) + dst_prime))
    return b"".join(b)[:len_in_bytes]


def hash_to_scalar(curve, dst, parts):
    """Returns (uniform_bytes, scalar) for the length-prefixed suite || parts encoding."""
    msg = b"".join(len(p).to_bytes(4, "big") + p for p in [curve.name.encode()] + list(parts))
    uniform = expand_message_xmd(msg, dst.encode(), 48)
    return uniform, int.from_bytes(uniform, "big") % curve.n


# ---- ECIES (Nox-compatible): K(33) || nonce(12) || AES-256-GCM(ct || tag16), empty AAD. ----

ECIES_INFO = b"ECIES:AES_GCM:v1"
MIN_CONTAINER = 33 + 12 + 16


def ecies_kdf(shared_x):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=ECIES_INFO).derive(shared_x)


def compressed(pub):
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def ecies_encrypt(curve, pk_bytes, plaintext, eph_scalar=None, nonce=None):
    """Returns (container, shared_x). Ephemeral scalar and nonce random unless given."""
    pk = ec.EllipticCurvePublicKey.from_encoded_point(curve.crypto_curve(), pk_bytes)
    eph = ec.derive_private_key(eph_scalar, curve.crypto_curve()) if eph_scalar else \
        ec.generate_private_key(curve.crypto_curve())
    nonce = os.urandom(12) if nonce is None else nonce
    shared_x = eph.exchange(ec.ECDH(), pk)
    ct = AESGCM(ecies_kdf(shared_x)).encrypt(nonce, plaintext, None)
    return compressed(eph.public_key()) + nonce + ct, shared_x


def ecies_decrypt(curve, sk_scalar, container):
    """Raises ValueError on any malformed or unauthentic container."""
    if len(container) < MIN_CONTAINER:
        raise ValueError(f"container too short ({len(container)} < {MIN_CONTAINER} bytes)")
    eph_bytes, nonce, ct = container[:33], container[33:45], container[45:]
    if eph_bytes[0] not in (2, 3):
        raise ValueError("ephemeral key is not a SEC1 compressed point")
    if not 0 < sk_scalar < curve.n:
        raise ValueError("secret key out of range")
    try:
        eph = ec.EllipticCurvePublicKey.from_encoded_point(curve.crypto_curve(), eph_bytes)
    except ValueError as e:
        raise ValueError(f"invalid ephemeral key: {e}") from None
    shared_x = ec.derive_private_key(sk_scalar, curve.crypto_curve()).exchange(ec.ECDH(), eph)
    try:
        return AESGCM(ecies_kdf(shared_x)).decrypt(nonce, ct, None)
    except InvalidTag:
        raise ValueError("AES-GCM authentication failed") from None


# ---- DLEQ (Chaum-Pedersen) proof and Lagrange coefficients. --------------------------

DLEQ_DST = "tkms/v1/dleq"


def dleq_prove(curve, ctx, x, H, w):
    """Returns dict with X, Y, T1, T2 (points), c, z and proof bytes."""
    enc = curve.compress
    X, Y = curve.base_mul(x), curve.mul(x, H)
    T1, T2 = curve.base_mul(w), curve.mul(w, H)
    _, c = hash_to_scalar(curve, DLEQ_DST, [ctx, enc(X), enc(H), enc(Y), enc(T1), enc(T2)])
    z = (w + c * x) % curve.n
    return dict(X=X, Y=Y, T1=T1, T2=T2, c=c, z=z, proof=enc(T1) + enc(T2) + z.to_bytes(32, "big"))


def dleq_verify(curve, ctx, H, X, Y, proof):
    enc = curve.compress
    if len(proof) != 98:
        return False
    try:
        T1, T2 = curve.decompress(proof[:33]), curve.decompress(proof[33:66])
    except ValueError:
        return False
    z = int.from_bytes(proof[66:], "big")
    if z >= curve.n:
        return False
    _, c = hash_to_scalar(curve, DLEQ_DST, [ctx, enc(X), enc(H), enc(Y), enc(T1), enc(T2)])
    return (curve.base_mul(z) == curve.add(T1, curve.mul(c, X))
            and curve.mul(z, H) == curve.add(T2, curve.mul(c, Y)))


def lagrange_at_zero(curve, indices):
    q = curve.n
    out = []
    for i in indices:
        num = den = 1
        for j in indices:
            if j != i:
                num = num * j % q
                den = den * (j - i) % q
        out.append(num * pow(den, -1, q) % q)
    return out


def poly_eval(curve, coeffs, x):
    acc = 0
    for a in reversed(coeffs):  # Horner; coeffs[0] is the constant term
        acc = (acc * x + a) % curve.n
    return acc


# ---- Test-vector generation. ---------------------------------------------------------

ECIES_PT_LENGTHS = [0, 1, 15, 16, 17, 32, 100, 1000]
DLEQ_CONTEXTS = [b"", b"tkms", b"\x00", None, None]  # None => derived bytes (32 / 200 long)
LAGRANGE_SETS = [[1, 2, 3], [2, 5, 7], list(range(1, 12)), [65535, 1, 300], [7], [3, 1, 2, 65534]]


def gen_ecies():
    vectors, invalid = [], []
    for curve in CURVES.values():
        for i, n in enumerate(ECIES_PT_LENGTHS):
            lab = f"tkms-kat/ecies/{curve.name}/{i}"
            sk, k = label_scalar(curve, lab + "/sk"), label_scalar(curve, lab + "/ephemeral")
            nonce, pt = label_bytes(lab + "/nonce", 12), label_bytes(lab + "/plaintext", n)
            pk = curve.compress(curve.base_mul(sk))
            container, shared_x = ecies_encrypt(curve, pk, pt, eph_scalar=k, nonce=nonce)
            # Independent cross-checks against the pure-Python arithmetic.
            assert container[:33] == curve.compress(curve.base_mul(k))
            assert shared_x == curve.mul(k, curve.decompress(pk))[0].to_bytes(32, "big")
            assert ecies_decrypt(curve, sk, container) == pt
            vectors.append(dict(curve=curve.name, secret_key=s32(sk), public_key=pk.hex(),
                                ephemeral_secret=s32(k), ephemeral_public=container[:33].hex(),
                                shared_secret_x=shared_x.hex(), nonce=nonce.hex(),
                                plaintext=pt.hex(), container=container.hex()))
        # Invalid containers, all derived from this curve's 17-byte-plaintext vector.
        base = next(v for v in vectors if v["curve"] == curve.name and len(v["plaintext"]) == 34)
        sk, c = int(base["secret_key"], 16), bytes.fromhex(base["container"])
        x = int.from_bytes(sha256(f"tkms-kat/ecies/{curve.name}/invalid/x".encode()), "big") % curve.p
        while curve.sqrt(curve.rhs(x)) is not None:
            x += 1  # first x whose x^3 + ax + b is a non-residue: no point has this x
        wrong_sk = label_scalar(curve, f"tkms-kat/ecies/{curve.name}/invalid/wrong-sk")

        def flip(data, pos):
            return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]

        cases = [
            (sk, flip(c, len(c) - 1), "authentication tag flipped"),
            (sk, flip(c, 45), "ciphertext flipped"),
            (sk, flip(c, 33), "nonce flipped"),
            (sk, c[:MIN_CONTAINER - 1], "truncated below 33+12+16 bytes"),
            (sk, c[:-1], "truncated by one byte (tag incomplete)"),
            (sk, b"\x04" + c[1:], "ephemeral key prefix 0x04 with 33-byte encoding"),
            (sk, b"\x05" + c[1:], "ephemeral key prefix 0x05"),
            (sk, b"\x02" + x.to_bytes(32, "big") + c[33:], "ephemeral x not on curve"),
            (wrong_sk, c, "wrong secret key"),
        ]
        for bad_sk, bad_c, reason in cases:
            try:
                ecies_decrypt(curve, bad_sk, bad_c)
                raise AssertionError(f"invalid vector decrypted: {reason}")
            except ValueError:
                pass
            invalid.append(dict(curve=curve.name, secret_key=s32(bad_sk),
                                container=bad_c.hex(), reason=reason))
    return dict(generator=GENERATOR,
                description="ECIES (Nox-compatible): container = K(33, SEC1 compressed) || nonce(12) "
                            "|| AES-256-GCM ciphertext||tag(16), empty AAD; key = HKDF-SHA256("
                            "salt=32 zero bytes, ikm=x(k*PK), info='ECIES:AES_GCM:v1', L=32). "
                            "'invalid' containers must fail to decrypt with the given secret_key.",
                vectors=vectors, invalid=invalid)


def gen_dleq():
    vectors, h2s = [], []
    for curve in CURVES.values():
        for i, ctx in enumerate(DLEQ_CONTEXTS):
            lab = f"tkms-kat/dleq/{curve.name}/{i}"
            if ctx is None:
                ctx = label_bytes(lab + "/context", 32 if i == 3 else 200)
            x, w = label_scalar(curve, lab + "/secret"), label_scalar(curve, lab + "/nonce")
            H = curve.base_mul(label_scalar(curve, lab + "/base"))
            r = dleq_prove(curve, ctx, x, H, w)
            assert dleq_verify(curve, ctx, H, r["X"], r["Y"], r["proof"])
            assert not dleq_verify(curve, ctx + b"!", H, r["X"], r["Y"], r["proof"])
            vectors.append(dict(curve=curve.name, context=ctx.hex(), secret=s32(x),
                                base=curve.compress(H).hex(), public=curve.compress(r["X"]).hex(),
                                image=curve.compress(r["Y"]).hex(), nonce=s32(w),
                                challenge=s32(r["c"]), response=s32(r["z"]),
                                proof=r["proof"].hex()))
        # Stand-alone hash_to_scalar vectors (to debug the transcript encoding in isolation).
        for dst, parts in [("tkms/v1/dleq", []), ("tkms/v1/dleq", [b""]),
                           ("tkms/v1/test", [b"abc", bytes(33)]),
                           ("tkms/v1/test", [label_bytes("tkms-kat/h2s/long", 300)])]:
            uniform, s = hash_to_scalar(curve, dst, parts)
            h2s.append(dict(curve=curve.name, suite=curve.name, dst=dst,
                            parts=[p.hex() for p in parts], uniform_bytes=uniform.hex(),
                            scalar=s32(s)))
    return dict(generator=GENERATOR,
                description="Chaum-Pedersen DLEQ: X=x*G, Y=x*H, T1=w*G, T2=w*H, c=hash_to_scalar("
                            "suite, 'tkms/v1/dleq', [ctx, X, H, Y, T1, T2]), z=w+c*x mod q; proof = "
                            "T1(33)||T2(33)||z(32). hash_to_scalar: msg = concat(I2OSP(len,4)||p for p "
                            "in [suite]+parts); uniform = expand_message_xmd_sha256(msg, dst, 48); "
                            "scalar = OS2IP(uniform) mod q.",
                vectors=vectors, hash_to_scalar=h2s)


# ---- One DLEQ proof for a node's batch of delegation partials (docs/PROTOCOL.md §5.1). --

DLEQ_BATCH_DST = "tkms/v1/dleq-batch"
DLEQ_BATCH_WEIGHT_DST = b"tkms/v1/dleq-batch-weight"


def frame(data):
    return len(data).to_bytes(4, "big") + data


def batch_transcript(curve, epoch, index, public, items):
    """tau = SHA-256(frame(dst) || frame(suite) || epoch(8) || index(2) || PK_i || m(4) ||
    concat(frame(id_j) || K_j || D_j)), points SEC1 compressed."""
    enc = curve.compress
    data = (frame(DLEQ_BATCH_DST.encode()) + frame(curve.name.encode()) + epoch.to_bytes(8, "big")
            + index.to_bytes(2, "big") + enc(public) + len(items).to_bytes(4, "big"))
    for rid, K, D in items:
        data += frame(rid) + enc(K) + enc(D)
    return sha256(data)


def batch_weights(tau, m):
    """w_1 = 1; w_j = first 16 bytes of SHA-256(dst || tau || j(4)), big-endian, for j >= 2."""
    return [1] + [int.from_bytes(sha256(DLEQ_BATCH_WEIGHT_DST + tau + j.to_bytes(4, "big"))[:16], "big")
                  for j in range(2, m + 1)]


def batch_prove(curve, epoch, index, x, items, r):
    enc = curve.compress
    public = curve.base_mul(x)
    tau = batch_transcript(curve, epoch, index, public, items)
    w = batch_weights(tau, len(items))
    K_star = None
    for wj, (_, K, _) in zip(w, items):
        K_star = curve.add(K_star, curve.mul(wj, K))
    T1, T2 = curve.base_mul(r), curve.mul(r, K_star)
    ctx = epoch.to_bytes(8, "big") + index.to_bytes(2, "big") + tau
    _, c = hash_to_scalar(curve, DLEQ_BATCH_DST, [ctx, enc(public), enc(T1), enc(T2)])
    z = (r + c * x) % curve.n
    proof = index.to_bytes(2, "big") + enc(T1) + enc(T2) + z.to_bytes(32, "big")
    return dict(tau=tau, weights=w, challenge=c, proof=proof, public=public)


def batch_verify(curve, epoch, items, public, proof):
    enc = curve.compress
    index = int.from_bytes(proof[:2], "big")
    T1, T2 = curve.decompress(proof[2:35]), curve.decompress(proof[35:68])
    z = int.from_bytes(proof[68:], "big")
    tau = batch_transcript(curve, epoch, index, public, items)
    w = batch_weights(tau, len(items))
    K_star = D_star = None
    for wj, (_, K, D) in zip(w, items):
        K_star = curve.add(K_star, curve.mul(wj, K))
        D_star = curve.add(D_star, curve.mul(wj, D))
    ctx = epoch.to_bytes(8, "big") + index.to_bytes(2, "big") + tau
    _, c = hash_to_scalar(curve, DLEQ_BATCH_DST, [ctx, enc(public), enc(T1), enc(T2)])
    return (curve.base_mul(z) == curve.add(T1, curve.mul(c, public))
            and curve.mul(z, K_star) == curve.add(T2, curve.mul(c, D_star)))


def uncompressed(curve, P):
    return b"\x04" + P[0].to_bytes(32, "big") + P[1].to_bytes(32, "big")


def gen_aggregate():
    vectors = []
    for curve in CURVES.values():
        for i, m in enumerate([1, 2, 5]):
            lab = f"tkms-kat/aggregate/{curve.name}/{i}"
            epoch, index = 7 + i, 3 + i
            x, r = label_scalar(curve, lab + "/share"), label_scalar(curve, lab + "/nonce")
            items = []
            for j in range(m):
                rid = label_bytes(f"{lab}/id/{j}", 32 if j % 2 == 0 else 3)
                K = curve.base_mul(label_scalar(curve, f"{lab}/ephemeral/{j}"))
                items.append((rid, K, curve.mul(x, K)))
            out = batch_prove(curve, epoch, index, x, items, r)
            assert batch_verify(curve, epoch, items, out["public"], out["proof"])
            # One wrong partial under the honest proof is refused.
            bad = list(items)
            bad[-1] = (bad[-1][0], bad[-1][1], curve.add(bad[-1][2], curve.G))
            assert not batch_verify(curve, epoch, bad, out["public"], out["proof"])
            vectors.append(dict(
                curve=curve.name, epoch=epoch, index=index, share=s32(x),
                public_share=curve.compress(out["public"]).hex(), nonce=s32(r),
                requests=[dict(id=rid.hex(), ephemeral=curve.compress(K).hex(),
                               partial=curve.compress(D).hex(),
                               partial_uncompressed=uncompressed(curve, D).hex())
                          for rid, K, D in items],
                transcript=out["tau"].hex(), weights=[s32(w) for w in out["weights"]],
                challenge=s32(out["challenge"]), proof=out["proof"].hex()))
    return dict(generator=GENERATOR,
                description="One DLEQ proof for a node's batch of delegation partials "
                            "(docs/PROTOCOL.md 5.1). D_j = share*K_j; tau = SHA-256(frame("
                            "'tkms/v1/dleq-batch') || frame(suite) || epoch(8) || index(2) || PK_i "
                            "|| m(4) || concat(frame(id_j) || K_j || D_j)), frame(x) = I2OSP(len(x),4) "
                            "|| x; w_1 = 1, w_j = OS2IP(SHA-256('tkms/v1/dleq-batch-weight' || tau || "
                            "I2OSP(j,4))[:16]); K* = sum w_j*K_j; T1 = r*G, T2 = r*K*; c = "
                            "hash_to_scalar(suite, 'tkms/v1/dleq-batch', [epoch(8)||index(2)||tau, "
                            "PK_i, T1, T2]); z = r + c*share mod q; proof = index(2)||T1||T2||z.",
                vectors=vectors)


def gen_lagrange():
    vectors = []
    for curve in CURVES.values():
        for i, idx in enumerate(LAGRANGE_SETS):
            lab = f"tkms-kat/lagrange/{curve.name}/{i}"
            poly = [label_scalar(curve, f"{lab}/coeff/{d}") for d in range(len(idx))]
            lam = lagrange_at_zero(curve, idx)
            shares = [poly_eval(curve, poly, j) for j in idx]
            assert sum(l * s for l, s in zip(lam, shares)) % curve.n == poly[0]
            vectors.append(dict(curve=curve.name, indices=idx, coefficients=[s32(l) for l in lam],
                                coefficients_poly=[s32(a) for a in poly],
                                shares=[s32(s) for s in shares], secret=s32(poly[0])))
    return dict(generator=GENERATOR,
                description="Lagrange coefficients at zero: lambda_i = prod_{j!=i} j/(j-i) mod q over "
                            "the given node indices (Shamir x-coordinates). shares[k] = f(indices[k]) "
                            "for f with coefficients_poly (constant term first); sum lambda_i*share_i "
                            "= secret = f(0).",
                vectors=vectors)


def cmd_gen():
    for name, fn in [("ecies.json", gen_ecies), ("dleq.json", gen_dleq), ("lagrange.json", gen_lagrange),
                     ("aggregate.json", gen_aggregate)]:
        (HERE / name).write_text(json.dumps(fn(), indent=2) + "\n")
        print(f"wrote {HERE / name}")


# ---- Self-test. ----------------------------------------------------------------------

XMD_DST = b"QUUX-V01-CS02-with-expander-SHA256-128"
XMD_KAT = [  # RFC 9380 Appendix K.1, expand_message_xmd(SHA-256)
    (b"", 0x20, "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"),
    (b"abc", 0x20, "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"),
    (b"", 0x80, "af84c27ccfd45d41914fdff5df25293e221afc53d8ad2ac06d5e3e29485dadbe"
                "e0d121587713a3e0dd4d5e69e93eb7cd4f5df4cd103e188cf60cb02edc3edf18"
                "eda8576c412b18ffb658e3dd6ec849469b979d444cf7b26911a08e63cf31f9dc"
                "c541708d3491184472c2c29bb749d4286b004ceb5ee6b9a7fa5b646c993f0ced"),
    (b"abc", 0x80, "abba86a6129e366fc877aab32fc4ffc70120d8996c88aee2fe4b32d6c7b6437a"
                   "647e6c3163d40b76a73cf6a5674ef1d890f95b664ee0afa5359a5c4e07985635"
                   "bbecbac65d747d3d2da7ec2b8221b17b0ca9dc8a1ac1c07ea6a1e60583e2cb00"
                   "058e77b7b72a298425cd1b941ad4ec65e8afc50303a22c0f99b0509b4c895f40"),
]


def cmd_selftest():
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    for msg, n, want in XMD_KAT:
        check(expand_message_xmd(msg, XMD_DST, n).hex() == want,
              f"expand_message_xmd msg={msg!r} len=0x{n:02x}")
    for curve in CURVES.values():
        check(curve.on_curve(curve.G) and curve.mul(curve.n, curve.G) is None
              and curve.add(curve.G, curve.neg(curve.G)) is None, f"{curve.name}: G on curve, n*G = O")
        for k in [1, 2, 3, curve.n - 1, label_scalar(curve, "tkms-kat/selftest/a"),
                  label_scalar(curve, "tkms-kat/selftest/b")]:
            ours = curve.compress(curve.base_mul(k))
            theirs = compressed(ec.derive_private_key(k, curve.crypto_curve()).public_key())
            check(ours == theirs and curve.decompress(ours) == curve.base_mul(k),
                  f"{curve.name}: k*G and compress/decompress match cryptography (k={hex(k)[:12]}..)")
        a, b = label_scalar(curve, "tkms-kat/selftest/a"), label_scalar(curve, "tkms-kat/selftest/b")
        check(curve.add(curve.base_mul(a), curve.base_mul(b)) == curve.base_mul(a + b),
              f"{curve.name}: a*G + b*G == (a+b)*G")
        pk = curve.compress(curve.base_mul(a))
        for pt in [b"", b"hello tkms", os.urandom(1000)]:
            container, _ = ecies_encrypt(curve, pk, pt)
            check(ecies_decrypt(curve, a, container) == pt, f"{curve.name}: ECIES round trip len={len(pt)}")
        lam = lagrange_at_zero(curve, [1, 2, 3])
        check(poly_eval(curve, [5, 7, 11], 0) == 5 and
              sum(l * poly_eval(curve, [5, 7, 11], j) for l, j in zip(lam, [1, 2, 3])) % curve.n == 5,
              f"{curve.name}: Lagrange interpolation of a small polynomial")
    if failures:
        print(f"{len(failures)} self-test failure(s)", file=sys.stderr)
        sys.exit(1)
    print("all self-tests passed")


# ---- CLI. ----------------------------------------------------------------------------

def parse_hex(s):
    s = s.strip()
    if s[:2] in ("0x", "0X"):
        s = s[2:]
    return bytes.fromhex(s)


def main(argv):
    usage = "usage: reference.py {gen|selftest|encrypt <pk_hex>|decrypt <sk_hex>} [--curve secp256k1|P-256]"
    curve = SECP256K1
    if "--curve" in argv:
        i = argv.index("--curve")
        if i + 1 >= len(argv) or argv[i + 1] not in CURVES:
            sys.exit(usage)
        curve = CURVES[argv[i + 1]]
        argv = argv[:i] + argv[i + 2:]
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "gen" and not args:
        cmd_gen()
    elif cmd == "selftest" and not args:
        cmd_selftest()
    elif cmd == "encrypt" and len(args) == 1:
        try:
            container, _ = ecies_encrypt(curve, parse_hex(args[0]), sys.stdin.buffer.read())
        except ValueError as e:
            sys.exit(f"error: {e}")
        print("0x" + container.hex())
    elif cmd == "decrypt" and len(args) == 1:
        try:
            sk_bytes = parse_hex(args[0])
            if len(sk_bytes) != 32:
                raise ValueError("secret key must be 32 bytes")
            container = parse_hex(sys.stdin.read())
            plaintext = ecies_decrypt(curve, int.from_bytes(sk_bytes, "big"), container)
        except ValueError as e:  # also covers bad hex (bytes.fromhex raises ValueError)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        sys.stdout.buffer.write(plaintext)
        sys.stdout.buffer.flush()
    else:
        sys.exit(usage)


if __name__ == "__main__":
    main(sys.argv[1:])
