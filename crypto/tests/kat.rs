//! Known-answer tests against vectors produced by an independent implementation
//! (`tests/vectors/reference.py`: Python `cryptography` for ECIES, its own curve arithmetic and
//! RFC 9380 expand_message_xmd for the proofs). Checked both ways: Rust opens the Python
//! ciphertexts, and Rust, given the same ephemeral key and nonce, produces the same bytes.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use group::Group;
use serde_json::Value;
use tkms_crypto::{
    aggregate::{AggregateProof, BatchPartials},
    delegation::DelegationRequest,
    dleq::{DleqProof, Statement},
    ecies::{self, Ciphertext},
    hash::hash_to_scalar,
    shamir::{lagrange_coefficients, Commitment, KeyShare, NodeIndex, PublicKeySet},
    suite::Encoded,
    Error, Secp256k1, SecretScalar, SharedSecret, Suite, P256,
};

fn vectors(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn bytes(v: &Value, field: &str) -> Vec<u8> {
    hex::decode(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("missing {field}")),
    )
    .unwrap()
}

/// Run `f::<S>` for the suite named in the vector.
macro_rules! per_suite {
    ($v:expr, $f:ident) => {
        match $v["curve"].as_str().unwrap() {
            "secp256k1" => $f::<Secp256k1>($v),
            "P-256" => $f::<P256>($v),
            other => panic!("unknown curve {other}"),
        }
    };
}

fn ecies_valid<S: Suite>(v: &Value) {
    let sk = SecretScalar::<S>::from_bytes(&bytes(v, "secret_key")).unwrap();
    assert_eq!(
        S::encode_point(&sk.public_point()).to_vec(),
        bytes(v, "public_key")
    );
    let container = bytes(v, "container");
    let ct = Ciphertext::<S>::from_bytes(&container).unwrap();
    // Python → Rust.
    assert_eq!(
        &**ecies::decrypt(&sk, &ct).unwrap(),
        bytes(v, "plaintext").as_slice()
    );
    let shared = SharedSecret::from_slice(&bytes(v, "shared_secret_x")).unwrap();
    assert_eq!(
        &**ecies::open_with_shared_secret(&shared, &ct).unwrap(),
        bytes(v, "plaintext").as_slice()
    );
    // Rust → same bytes as Python.
    let k = SecretScalar::<S>::from_bytes(&bytes(v, "ephemeral_secret")).unwrap();
    let nonce: [u8; 12] = bytes(v, "nonce").try_into().unwrap();
    let ours =
        ecies::encrypt_with::<S>(&sk.public_point(), &bytes(v, "plaintext"), &k, nonce).unwrap();
    assert_eq!(ours.to_bytes(), container);
    assert_eq!(
        S::encode_point(ours.ephemeral()).to_vec(),
        bytes(v, "ephemeral_public")
    );
}

fn ecies_invalid<S: Suite>(v: &Value) {
    let sk = SecretScalar::<S>::from_bytes(&bytes(v, "secret_key")).unwrap();
    let result =
        Ciphertext::<S>::from_bytes(&bytes(v, "container")).and_then(|ct| ecies::decrypt(&sk, &ct));
    assert!(result.is_err(), "accepted invalid vector: {}", v["reason"]);
}

#[test]
fn ecies_vectors() {
    let doc = vectors("ecies");
    let valid = doc["vectors"].as_array().unwrap();
    let invalid = doc["invalid"].as_array().unwrap();
    assert!(valid.len() >= 16 && invalid.len() >= 12);
    for v in valid {
        per_suite!(v, ecies_valid);
    }
    for v in invalid {
        per_suite!(v, ecies_invalid);
    }
}

fn dleq_vector<S: Suite>(v: &Value) {
    let secret = SecretScalar::<S>::from_bytes(&bytes(v, "secret")).unwrap();
    let base = Encoded::<S>::from_bytes(&bytes(v, "base")).unwrap();
    let public = Encoded::<S>::from_bytes(&bytes(v, "public")).unwrap();
    let image = Encoded::<S>::from_bytes(&bytes(v, "image")).unwrap();
    assert_eq!(*public.point(), secret.public_point());
    assert_eq!(*image.point(), *base.point() * secret.expose());
    // Encoding a point computed here gives the reference's bytes.
    assert_eq!(Encoded::<S>::new(*image.point()), image);
    let context = bytes(v, "context");
    let statement = Statement {
        context: &context,
        base: &base,
        public: &public,
        image: &image,
    };
    let nonce = SecretScalar::<S>::from_bytes(&bytes(v, "nonce")).unwrap();
    let proof = DleqProof::prove_with_nonce(&secret, &statement, &nonce);
    assert_eq!(proof.to_bytes().to_vec(), bytes(v, "proof"));
    assert_eq!(
        S::encode_scalar(&proof.challenge(&statement)).to_vec(),
        bytes(v, "challenge")
    );
    assert_eq!(
        S::encode_scalar(proof.response()).to_vec(),
        bytes(v, "response")
    );
    let decoded = DleqProof::<S>::from_bytes(&bytes(v, "proof")).unwrap();
    assert!(decoded.verify(&statement));
    let other = [context.as_slice(), b"x"].concat();
    assert!(!decoded.verify(&Statement {
        context: &other,
        ..statement
    }));
}

fn hash_vector<S: Suite>(v: &Value) {
    assert_eq!(v["suite"].as_str().unwrap(), S::NAME);
    let parts: Vec<Vec<u8>> = v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let scalar = hash_to_scalar::<S>(v["dst"].as_str().unwrap().as_bytes(), &refs);
    assert_eq!(S::encode_scalar(&scalar).to_vec(), bytes(v, "scalar"));
}

#[test]
fn dleq_and_hash_vectors() {
    let doc = vectors("dleq");
    let proofs = doc["vectors"].as_array().unwrap();
    let hashes = doc["hash_to_scalar"].as_array().unwrap();
    assert!(proofs.len() >= 10 && hashes.len() >= 8);
    for v in proofs {
        per_suite!(v, dleq_vector);
    }
    for v in hashes {
        per_suite!(v, hash_vector);
    }
}

fn lagrange_vector<S: Suite>(v: &Value) {
    let indices: Vec<NodeIndex> = v["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| NodeIndex::new(u16::try_from(i.as_u64().unwrap()).unwrap()).unwrap())
        .collect();
    let expected: Vec<Vec<u8>> = v["coefficients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| hex::decode(c.as_str().unwrap()).unwrap())
        .collect();
    let ours = lagrange_coefficients::<S>(&indices).unwrap();
    for (k, (l, e)) in ours.iter().zip(&expected).enumerate() {
        assert_eq!(&S::encode_scalar(l).to_vec(), e);
        let single = tkms_crypto::shamir::lagrange_coefficient::<S>(indices[k], &indices).unwrap();
        assert_eq!(single, *l);
    }
    let shares: Vec<S::Scalar> = v["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| S::decode_scalar(&hex::decode(s.as_str().unwrap()).unwrap()).unwrap())
        .collect();
    let secret = ours
        .iter()
        .zip(&shares)
        .fold(S::Scalar::from(0u64), |acc, (l, s)| acc + *l * s);
    assert_eq!(S::encode_scalar(&secret).to_vec(), bytes(v, "secret"));
}

#[test]
fn lagrange_vectors() {
    let doc = vectors("lagrange");
    let all = doc["vectors"].as_array().unwrap();
    assert!(all.len() >= 12);
    for v in all {
        per_suite!(v, lagrange_vector);
    }
}

#[test]
fn duplicate_indices_are_rejected() {
    let i = NodeIndex::new(3).unwrap();
    assert_eq!(
        lagrange_coefficients::<Secp256k1>(&[i, i]),
        Err(Error::DuplicateIndex(i))
    );
}

/// One proof for a node's batch (docs/PROTOCOL.md §5.1): Rust verifies the Python proof,
/// makes the same bytes from the same nonce, and refuses it over one altered partial.
fn aggregate_vector<S: Suite>(v: &Value) {
    let index = NodeIndex::new(u16::try_from(v["index"].as_u64().unwrap()).unwrap()).unwrap();
    let epoch = v["epoch"].as_u64().unwrap();
    let share = KeyShare::new(
        index,
        SecretScalar::<S>::from_bytes(&bytes(v, "share")).unwrap(),
    );
    assert_eq!(
        share.public_share_encoded().bytes().to_vec(),
        bytes(v, "public_share")
    );
    // Threshold 1: every node's public share is the constant term.
    let keys = PublicKeySet::new(
        Commitment::new(vec![*share.public_share_encoded().point()]).unwrap(),
        [index],
    );
    let items = v["requests"].as_array().unwrap();
    let requests: Vec<DelegationRequest<S>> = items
        .iter()
        .map(|r| {
            DelegationRequest::with_encoded(
                epoch,
                bytes(r, "id"),
                Encoded::from_bytes(&bytes(r, "ephemeral")).unwrap(),
            )
        })
        .collect();
    let refs: Vec<_> = requests.iter().collect();
    let partials: Vec<Encoded<S>> = items
        .iter()
        .map(|r| {
            let wide = Encoded::<S>::from_uncompressed(&bytes(r, "partial_uncompressed")).unwrap();
            assert_eq!(wide.bytes().to_vec(), bytes(r, "partial"));
            wide
        })
        .collect();
    for (request, partial) in refs.iter().zip(&partials) {
        assert_eq!(tkms_crypto::aggregate::partial(&share, request), *partial);
    }
    // Python → Rust.
    let proof = AggregateProof::<S>::from_bytes(&bytes(v, "proof")).unwrap();
    let verified = BatchPartials::new(proof, partials.clone())
        .verify(&keys, &refs, &mut rand_core::OsRng)
        .unwrap();
    assert_eq!(verified.len(), requests.len());
    // Rust → same bytes as Python.
    let nonce = SecretScalar::<S>::from_bytes(&bytes(v, "nonce")).unwrap();
    let ours = BatchPartials::prove_with_nonce(&share, &refs, partials.clone(), &nonce).unwrap();
    assert_eq!(ours.proof().to_bytes().to_vec(), bytes(v, "proof"));
    // One altered partial under the same proof is refused, naming the node.
    let mut altered = partials;
    let last = altered.len() - 1;
    altered[last] = Encoded::new(*altered[last].point() + S::Point::generator());
    assert_eq!(
        BatchPartials::new(proof, altered)
            .verify(&keys, &refs, &mut rand_core::OsRng)
            .unwrap_err(),
        Error::InvalidProof { culprit: index }
    );
}

#[test]
fn aggregate_vectors() {
    let doc = vectors("aggregate");
    let all = doc["vectors"].as_array().unwrap();
    assert!(all.len() >= 6);
    for v in all {
        per_suite!(v, aggregate_vector);
    }
}
