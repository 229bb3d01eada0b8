//! The Nox-compatible `/v0/delegate` wire layer against `docs/NOX-COMPAT.md` ("NC §n"):
//! known-answer vectors from the Nox sources, round trips, and malformed input.

use alloy_primitives::{address, b256, keccak256, Address, B256};
use alloy_sol_types::SolStruct;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use k256::ecdsa::SigningKey;
use serde_json::json;
use tkms_crypto::{ecies, Secp256k1, SecretScalar, SharedSecret, Suite};
use tkms_manager::nox::{
    authorization_domain, authorization_header, authorization_signing_hash, encrypt_shared_secret,
    response_domain, response_signing_hash, sign_response, verify_response, wallet_address,
    DelegateAuthorization, DelegateRequest, DelegateResponse, DelegateResponseProof, NoxError,
    MALFORMED_STATUS, UNAUTHORIZED_STATUS,
};

/// Arbitrum Sepolia, the chain of the NC §6.3 digests.
const CHAIN: u64 = 421_614;

/// NC §6.1 (nox-protocol-contracts test helper): sk 1 is the gateway, sk 2 the KMS wallet.
const TEST_GATEWAY_ADDRESS: Address = address!("7E5F4552091A69125d5DfCb7b8C2659029395Bdf");
const TEST_KMS_SIGNER_ADDRESS: Address = address!("2B5AD5c4795c026514f8317c7a215E218DcCD6cF");
const TEST_KMS_EC_PUBLIC_KEY_HEX: &str =
    "0x0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798";

/// NC §6.2 / §6.3: the ephemeral key of the KAT (`02be9a…c807`, on the curve).
const EPHEMERAL: &str = "0x02be9a93b92278142c7a9c82d45d81f4dea995d4446c3a439a1204b8fe15d9c807";

/// NC §6.2: the SDK's RSA-2048 test key (PKCS#8 DER), one of its ciphertexts and plaintext.
const SDK_PKCS8: &str = "0x308204be020100300d06092a864886f70d0101010500048204a8308204a40201000282010100ea518f56d262ec34b2e8283c4c89caad8cc35735c7d4710140fc4bcbbfbefd1393a69cf5d291e88ad7263a53a5b5a411390a934ee29342a7f1c28c92e67430b4e7515d0781601312d00205bb00241cf5c50eaed75d7c69a8202241afd24ab259873b8f0bc8aafecc73b9b2af2b6c241f29f783a66563e97a511f0d931924ebc4577670ff797c93943a8bec54ca1fade1f658b5904c25bf767a70ef975c88c1b3bccf94619aa2b18cc1ca1bb53779c45eebf94832d27eef16612e4f4098e3ca9eeead07a030fc8c79fef2d5a079aec4cf712c9e656035d496fb81a554248480f001188595ab709d9fba1dc5f91b22669046f12aea6ee2968722c933c8e4b8b6c1020301000102820100286f0c8a11e1ea1aa9e8afd0bff0631e11953fbe530e50b5c3ae05b2521335fea3d2f370e3f633a789bada03c72b91f53adf9d4dd6814cd6483ca71f4e4f2c7c7b122a387a55c6d4cf3a1a1d0bc82f8b2587041abbd2153562de26719d9b302d8ccd7540b64ef38afa4948113c2ffc07b8a932798b33737d9cf3fbd6af5714abc74f0e4aa111d918e92cf5f1de32428e390077926c66b9d077f16d17afa60baa68ef0d1598f55c38870d634719d1bd8fe94e69cd2f883fc49fea757e6e1517c448bf97f1b9b71bb77db9b74149a0a7ca481375114d3bd3ffcfe18922989ade67e47258910b305b8461ad2090141326f0f8477e21e6cfc9a9ca46d8d8a290600102818100eda1690afdd71170fc87cf738900e000e688e961c0e3e9df6ee343c676791dea0532d5c4517492f0d657ae60a86839c4108d82dbf1fe68d5677f7ab1f4c10843a1d4717dcf0608ca77818f37eed348d624e8f6efa7f05545020eedda59336cc1a58c8534c9b12bd63e06cf445c5aea1b12342cb0e4fb5f6f9badb1dad1cdb58102818100fc6e9bc210052af7fa218f84481cba2c96993509c27cd7fc3127d3c47a16e62be6fb1266bae899081850ab06faefc800ff5c65e38eaec3c2ce03bb579edf483eb888415a2518a4168a104c9c5c5cd25b7fe1d64d08db0dbc98bc54d24998dc290a91cbd45b9d90547e4056a2e499a56d812655e933a9f2fcba239bd6971821410281803ca5933f80e560c82b4b2600e0985e931c4318fd1fd38b1ec1183375f54a97fddff1c768e139153f6e14d6a64894c1196ef80ecbbf89248c426be08e865eb5933d3c10f300e1136148fac1e88e8551f3855c0799c68ca9d680ddfa8a5d75a86e0ba83f5ee792d61349a54744b52566d61de13efeae92111b54ea11983d2f79010281810098f4f0be6b74a62fb249e9ab8f029130f96406464ea9d53a04130cf78dbf18635bc7a0c3ccd7a9fac4b90498eb2ea5f32cc8b1186cd9aad6fc7c38658467e95fcff3081e7641f313913f051cedbe74dc6aa5ce73c93cea9aefb596740192753d0d2180efc13fbd37e57458cac557f06c650874a024e502ce6e7fab2b214cc6c102818100c1c9c73ba2eee47c9257ef6448e6b32a85b21e04f1a7731bdb11da7f2c8024da346d5ecf737169fae230cbb6b6ea187373557c51d48ea75714ed3e097bb658f6fa0bc77b35051e63142dabc4be50d8554b607a187f9cf8bca92f24e6e28fd1948b74b742761b8dfe17254e0ebd46d5e76600b4a2f15618a8c83b064d2ce7770e";
const SDK_CIPHERTEXT: &str = "0x2c8ae13670a29bdc7b677fb0778180840583a5b0851c1e0353bfdb9b9331ce4bd5a542960b8f0f01cc875d49d42f57dff178fbc9a943f2c503718432078dd27e7fab9eecd3afce26b0824eb21e0bcecea772a82c2cae3f189f0b324e926fbbb1c9534034732b0fc4938aca3d8b43c3f72dda438a295927fedf49d22250981b93291df41601484004ede0e42884f69da0f1c6f24fc6cbc6a1d9fd83b3293b79f687b0fe08a73936f1a7cbf1bc9992c6aca987456f49eab22e3b6a9489d78c102287a7f5827ae57f656b788e6ed42f04c0150ab424a1af7c2fad40bd1799918ac9923f23239b9ebecb009b5170b1c9d714f223441378c9cb856b88c16dc8747c29";
const SDK_PLAINTEXT: &str = "0x02be9a93b92278142c7a9c82d45d81f4dea995d4446c3a439a1204b8fe15d9c807";
/// NC §6.2 (DERIVED there): the SPKI DER of that key, without `0x`.
const SDK_SPKI: &str = "30820122300d06092a864886f70d01010105000382010f003082010a0282010100ea518f56d262ec34b2e8283c4c89caad8cc35735c7d4710140fc4bcbbfbefd1393a69cf5d291e88ad7263a53a5b5a411390a934ee29342a7f1c28c92e67430b4e7515d0781601312d00205bb00241cf5c50eaed75d7c69a8202241afd24ab259873b8f0bc8aafecc73b9b2af2b6c241f29f783a66563e97a511f0d931924ebc4577670ff797c93943a8bec54ca1fade1f658b5904c25bf767a70ef975c88c1b3bccf94619aa2b18cc1ca1bb53779c45eebf94832d27eef16612e4f4098e3ca9eeead07a030fc8c79fef2d5a079aec4cf712c9e656035d496fb81a554248480f001188595ab709d9fba1dc5f91b22669046f12aea6ee2968722c933c8e4b8b6c10203010001";

/// 1024-bit RSA SPKI (openssl): shorter than Nox's 512-hex-digit minimum.
const RSA_1024_SPKI: &str = "30819f300d06092a864886f70d010101050003818d0030818902818100c32d8be97cdf319b575b828d27fdcd1b64fc4be88658c14801694ec0949731e4fef2ce1176853c67e4eae257ebd382a89d42019483e921884c233a7b3ecd1c9e3399cfa64cf7fd994360e54ce73bfab3a7ff83c5b343d4919ab84c5dad2e845d261b408b5e19837c82e02b615bf4761e63db3f6d9aa3293c8b3963830ed1c6950203010001";
/// 1984-bit RSA SPKI (openssl): passes Nox's length rule, fails the 2048-bit modulus rule.
const RSA_1984_SPKI: &str = "30820119300d06092a864886f70d01010105000382010600308201010281f900e8fd841500181faa44148d1547568432dc36e84dc7455eb4e68cd25d3bc4f461938f1143babb4f1d37ba30b2ab79d4a33a88efbdd99181d900de2ed7f26fbc432e8e28f4f2e0cd005c1200a6aa63a15a7782d5fcf2f9d30d7ec5124545facd2744ad08fee7487c0d3e28559ff69c37ccade63f80cbc83ca0c2fc23a1ae83632979fc0e6043c970c2a1e883165d1d73d843d4ebff28f1a66eca190b864acd534ff74050c102dd95e013586e01b7e06839bb930493e13612109a6fcfa977f20416a0988a99a4679afc01620dba81a3cdd91ec8c5d738cf43b144f8a7f9bb356fb6123d7e6799a99ff9c617c4571f01c2b58e16aa888ab73a330203010001";
/// 4160-bit RSA SPKI (openssl): above the 4096-bit cap.
const RSA_4160_SPKI: &str = "3082022a300d06092a864886f70d01010105000382021700308202120282020900abb626f5c541f291d8d965e985d1db9a80dd9332a85da8518318d152e613261be58735ed3c45db76987c639ba745d929abe5d81586143b89c4aed2239cc8ea93af2a28abed74d718e7b48551490a45d1ad655cbb2fbab14b1a71b228bc9e2f4b1c25e43fac18a697d9f701045fd46596985a6dae6681b60ccf03ae5230e303001921ef89e15366d775381dcf6fdb403c9958d9fecd894101328f721e1d3efb3a019b1360440ed4645a48ef03c71477fb2b02e5fb9385cc4fa156dcc2da06181a18715f75e781cb4a9a67901b6f84809b2f91871c8f0233b265ddceb759a36b2d260fbb3a2cb00a4919a70a1c24dccee335ccc8d18f4d039508b59d3297dfa77daca9fce063542fee9da858b22fc9569d5e2157034a15da4844d52412356b17fd2dde704aab2eace23b708b045ae355085663cb2a599a12bea77759b943daa1bcce19862b0d662f21321c8b46d1c747a58fd0f369d4a5e316a61cffcaeae86e722a7e2ee5a3360491011f1d09f5bf62ee7146fb8b75608b668125b74ac7b451abaec282e432b5f85bbf29014c45e06bf76b5d6ec91dc9f4f03882f52892d599016780a19331f22f9744f17cfad97af4f6eb6d7421800ef2de61315547ca289e89ad78eeba39b91e163b9cf48f4d1710a3838500d0a6fb472a5b2b33526f1f9cd59d26ec5dfc88fa05a7d3f32ac96542729074732380d5e2c22ae220827dd551ec0ffb39c9d2bc46f30203010001";
/// 2048-bit RSA-PSS SPKI (openssl, OID 1.2.840.113549.1.1.10): not an encryption key.
const RSA_PSS_SPKI: &str = "30820120300b06092a864886f70d01010a0382010f003082010a02820101009351acc765e2eca635934c134dd83131551b5745296cb8532e88bb135ba498c51757e9baa8bc5b82e698c774e4b26a6225525a3eb34532700b7d16d65cc522ffa8c9c1eb7e34e4599a76366930c16ea6834ffc6b32d475644f2b68e7c08247afc32fee104c7210a18894e7cd48063b431ecce0f15131fc637d9352b03846df936af6d9d51a2063fcfe313234890f9e23829e98a4b0bc9ef0ce9c862e8d8c1e98804a855348ae6685c0a6d8ede4d19893f3e2d5650fd0b904de6a0d64a71a1083be66f7af71d538a6094d9bc0ca7294bb71e5dcde727d128bebc584872b247a018370b44ca3aef7a5fe522e8442539e34312aab883b8979a1d8a66d36b3d18e1f0203010001";

const SALT_11: B256 = b256!("1111111111111111111111111111111111111111111111111111111111111111");

fn key(scalar: u8) -> SigningKey {
    let mut bytes = [0u8; 32];
    bytes[31] = scalar;
    SigningKey::from_slice(&bytes).expect("1..=255 is a valid secp256k1 key")
}

fn target() -> String {
    format!("0x{SDK_SPKI}")
}

fn body(ephemeral: &str, target: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "ephemeralPubKey": ephemeral, "targetPubKey": target }))
        .expect("JSON")
}

fn query(salt: B256) -> String {
    format!("chain_id={CHAIN}&salt={salt}")
}

/// A request signed by the test gateway (sk 1) over these exact strings.
fn signed(ephemeral: &str, target: &str) -> Result<DelegateRequest, NoxError> {
    let header = authorization_header(&key(1), CHAIN, ephemeral, target);
    DelegateRequest::parse(
        &query(SALT_11),
        &body(ephemeral, target),
        Some(header.as_bytes()),
    )
}

/// Parse with a valid header and body but this query.
fn with_query(q: &str) -> Result<DelegateRequest, NoxError> {
    let header = authorization_header(&key(1), CHAIN, EPHEMERAL, &target());
    DelegateRequest::parse(q, &body(EPHEMERAL, &target()), Some(header.as_bytes()))
}

/// Parse with a valid query and body but this `Authorization` value.
fn with_header(header: Option<&[u8]>) -> Result<DelegateRequest, NoxError> {
    DelegateRequest::parse(&query(SALT_11), &body(EPHEMERAL, &target()), header)
}

/// Parse with a valid query and header but this body.
fn with_body(raw: &[u8]) -> Result<DelegateRequest, NoxError> {
    let header = authorization_header(&key(1), CHAIN, EPHEMERAL, &target());
    DelegateRequest::parse(&query(SALT_11), raw, Some(header.as_bytes()))
}

fn rsa_decrypt(private: &PrivateDecryptingKey, ciphertext: &[u8]) -> Vec<u8> {
    let key = OaepPrivateDecryptingKey::new(private.clone()).expect("OAEP key");
    let mut out = vec![0u8; key.min_output_size()];
    let plain = key
        .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
        .expect("RSA-OAEP-SHA256 decryption");
    plain.to_vec()
}

fn sdk_private_key() -> PrivateDecryptingKey {
    let der = hex::decode(&SDK_PKCS8[2..]).expect("hex");
    PrivateDecryptingKey::from_pkcs8(&der).expect("the SDK's PKCS#8 RSA-2048 key")
}

fn expect_err(result: Result<DelegateRequest, NoxError>) -> NoxError {
    match result {
        Ok(_) => panic!("request accepted"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(!e.code().is_empty());
            e
        }
    }
}

// ---- Known answers (NC §6) ----

#[test]
fn fixed_test_keys_give_the_nox_addresses() {
    assert_eq!(wallet_address(&key(1)), TEST_GATEWAY_ADDRESS);
    assert_eq!(wallet_address(&key(2)), TEST_KMS_SIGNER_ADDRESS);
    let kms_ec = SecretScalar::<Secp256k1>::from_bytes(&key(1).to_bytes()).unwrap();
    let encoded = Secp256k1::encode_point(&kms_ec.public_point());
    assert_eq!(
        format!("0x{}", hex::encode(encoded)),
        TEST_KMS_EC_PUBLIC_KEY_HEX
    );
}

#[test]
fn eip712_type_strings_and_hashes_match_nox_compat() {
    assert_eq!(
        DelegateAuthorization::eip712_encode_type(),
        "DelegateAuthorization(string ephemeralPubKey,string targetPubKey)"
    );
    assert_eq!(
        DelegateResponseProof::eip712_encode_type(),
        "DelegateResponseProof(string encryptedSharedSecret)"
    );
    let auth = DelegateAuthorization {
        ephemeralPubKey: String::new(),
        targetPubKey: String::new(),
    };
    assert_eq!(
        auth.eip712_type_hash(),
        b256!("49a1e1eaf70b3d754bba9bf8763124010c67c1e2352abd3901fe6e3eb3bc40e4")
    );
    let proof = DelegateResponseProof {
        encryptedSharedSecret: String::new(),
    };
    assert_eq!(
        proof.eip712_type_hash(),
        b256!("d6e647a028af1512fb0d9d53037bbf74f1adbacf0fd92f91e039e285544cd399")
    );

    let plain = authorization_domain(CHAIN);
    assert_eq!(
        plain.encode_type(),
        "EIP712Domain(string name,string version,uint256 chainId)"
    );
    assert_eq!(
        plain.type_hash(),
        b256!("c2f8787176b8ac6bf7215b4adcc1e069bf4ab82d9ab1df05a57a91d425935b6e")
    );
    let salted = response_domain(CHAIN, B256::ZERO);
    assert_eq!(
        salted.encode_type(),
        "EIP712Domain(string name,string version,uint256 chainId,bytes32 salt)"
    );
    assert_eq!(
        salted.type_hash(),
        b256!("a604fff5a27d5951f334ccda7abff3286a8af29caeeb196a6f2b40a1dce7612b")
    );
    // NC §6.3's self-check of its Keccak: keccak256("").
    assert_eq!(
        keccak256(b""),
        b256!("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470")
    );
}

#[test]
fn domain_separators_match_nox_compat() {
    assert_eq!(
        authorization_domain(CHAIN).separator(),
        b256!("6311cf1aea3a46c139160f2d4239172cef6af33e617b1564bb5e41eaf21b1bce")
    );
    assert_eq!(
        response_domain(CHAIN, B256::ZERO).separator(),
        b256!("133d8961d06f4c16ec0a01b25d781250770509f453961f77cab628e0cbb03d33")
    );
    assert_eq!(
        response_domain(CHAIN, SALT_11).separator(),
        b256!("bb646b3f03fe5ffacf71e3257ae557465866f35ea4bdc30e9f19d81e6c6c89ae")
    );
}

#[test]
fn authorization_digest_matches_nox_compat() {
    let auth = DelegateAuthorization {
        ephemeralPubKey: EPHEMERAL.into(),
        targetPubKey: target(),
    };
    assert_eq!(
        auth.eip712_hash_struct(),
        b256!("904a19a3d71162acb8b4c0d524063901cbebc5a528bb020fef077e6f745317da")
    );
    assert_eq!(
        authorization_signing_hash(CHAIN, EPHEMERAL, &target()),
        b256!("839c1d6889de0a280ee8bd19a88455c8bbb427054c26c16d7eafb33be0fdb990")
    );
    // The pre-#24 KMS signed the strings without `0x`: a different digest.
    assert_eq!(
        authorization_signing_hash(CHAIN, &EPHEMERAL[2..], SDK_SPKI),
        b256!("b45359cb60f769c83a93d2b93be65eb101be0a3e01b1f062d5fd81378628b5b2")
    );
}

#[test]
fn response_digest_matches_nox_compat() {
    let proof = DelegateResponseProof {
        encryptedSharedSecret: SDK_CIPHERTEXT.into(),
    };
    assert_eq!(
        proof.eip712_hash_struct(),
        b256!("c5270886929ee4e676bd73fffe0e868a6e36b67c38888f69cc86ce96ceb66daa")
    );
    assert_eq!(
        response_signing_hash(CHAIN, B256::ZERO, SDK_CIPHERTEXT),
        b256!("e0f36f055cdc804efe7603f69bc26d74ddb55ba17254c6e695f54776024ce7e4")
    );
    assert_eq!(
        response_signing_hash(CHAIN, SALT_11, SDK_CIPHERTEXT),
        b256!("95e58e711fe1bf3a778c8a3d417dd5893fc0f170e01c36560a1c2a3a9ca669dd")
    );
}

#[test]
fn sdk_rsa_vector_decrypts_with_oaep_sha256_and_its_spki_matches() {
    let private = sdk_private_key();
    let plain = rsa_decrypt(&private, &hex::decode(&SDK_CIPHERTEXT[2..]).unwrap());
    assert_eq!(format!("0x{}", hex::encode(plain)), SDK_PLAINTEXT);
    let spki = private.public_key().as_der().unwrap();
    assert_eq!(hex::encode(spki.as_ref()), SDK_SPKI);
}

/// NC §6.3 "suggested end-to-end KAT": EC sk 1 (so S = K), gateway sk 1, wallet sk 2.
#[test]
fn end_to_end_known_answer() {
    let request = signed(EPHEMERAL, &target()).unwrap();
    assert_eq!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS);
    assert_eq!(request.chain_id(), CHAIN);
    assert_eq!(request.salt(), SALT_11);

    let kms_ec = SecretScalar::<Secp256k1>::from_bytes(&key(1).to_bytes()).unwrap();
    let s = *request.ephemeral() * kms_ec.expose();
    let shared = ecies::shared_secret::<Secp256k1>(&s).unwrap();
    let response = request.respond(&key(2), &shared).unwrap();

    // Wire shape (NC §4.1): fields in order, `0x` + lowercase hex, 512 digits for RSA-2048.
    let json = serde_json::to_string(&response).unwrap();
    assert!(
        json.starts_with(r#"{"encryptedSharedSecret":"0x"#),
        "{json}"
    );
    assert!(json.contains(r#"","proof":"0x"#), "{json}");
    assert_eq!(response.encrypted_shared_secret.len(), 2 + 512);
    assert_eq!(response.proof.len(), 2 + 130);
    for field in [&response.encrypted_shared_secret, &response.proof] {
        assert!(field[2..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
    assert!(
        matches!(&response.proof[130..], "1b" | "1c"),
        "v must be 27/28"
    );
    let back: DelegateResponse = serde_json::from_str(&json).unwrap();
    assert_eq!(back, response);

    let ct = hex::decode(&response.encrypted_shared_secret[2..]).unwrap();
    let plain = rsa_decrypt(&sdk_private_key(), &ct);
    assert_eq!(
        format!("0x{}", hex::encode(plain)),
        "0xbe9a93b92278142c7a9c82d45d81f4dea995d4446c3a439a1204b8fe15d9c807"
    );

    let signer = verify_response(
        CHAIN,
        SALT_11,
        &response.encrypted_shared_secret,
        &response.proof,
    )
    .unwrap();
    assert_eq!(signer, TEST_KMS_SIGNER_ADDRESS);
}

// ---- Request authorization ----

#[test]
fn manual_k256_signature_recovers_the_gateway() {
    // Sign independently of `authorization_header`: k256 over the alloy digest.
    let gateway = key(7);
    let digest = DelegateAuthorization {
        ephemeralPubKey: EPHEMERAL.into(),
        targetPubKey: target(),
    }
    .eip712_signing_hash(&alloy_sol_types::eip712_domain! {
        name: "ProtocolDelegate",
        version: "1",
        chain_id: CHAIN,
    });
    let (sig, recid) = gateway.sign_prehash_recoverable(digest.as_slice()).unwrap();
    let mut raw = sig.to_bytes().to_vec();
    raw.push(27 + u8::from(recid.is_y_odd()));
    let header = format!("Bearer 0x{}", hex::encode(raw));
    let request = with_header(Some(header.as_bytes())).unwrap();
    assert_eq!(request.signer().unwrap(), wallet_address(&gateway));
    assert_eq!(request.ephemeral_pub_key(), EPHEMERAL);
    assert_eq!(request.target_pub_key(), target());
}

#[test]
fn tampered_body_strings_change_the_signer() {
    let header = authorization_header(&key(1), CHAIN, EPHEMERAL, &target());
    // Same key bytes, other spellings: upper-case digits, no `0x`. Nox signs the strings
    // verbatim, so each recovers to some other address (NC §1.1).
    let upper = format!("0x{}", EPHEMERAL[2..].to_uppercase());
    for (eph, tgt) in [
        (upper.as_str(), target()),
        (&EPHEMERAL[2..], target()),
        (EPHEMERAL, SDK_SPKI.to_owned()),
    ] {
        let request =
            DelegateRequest::parse(&query(SALT_11), &body(eph, &tgt), Some(header.as_bytes()))
                .unwrap();
        assert_ne!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS);
    }
    // Another chain: another domain, another signer.
    let request = with_query(&format!("chain_id={}&salt={SALT_11}", CHAIN + 1)).unwrap();
    assert_ne!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS);
}

#[test]
fn v_values_0_1_27_28_are_accepted_and_others_refused() {
    let header = authorization_header(&key(1), CHAIN, EPHEMERAL, &target());
    let mut raw = hex::decode(&header["Bearer 0x".len()..]).unwrap();
    let parity = raw[64] - 27;
    for v in [parity, parity + 27] {
        raw[64] = v;
        let h = format!("Bearer 0x{}", hex::encode(&raw));
        let request = with_header(Some(h.as_bytes())).unwrap();
        assert_eq!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS, "v = {v}");
    }
    // The other parity is accepted as syntax but recovers to someone else.
    for v in [1 - parity, 28 - parity] {
        raw[64] = v;
        let h = format!("Bearer 0x{}", hex::encode(&raw));
        let signer = with_header(Some(h.as_bytes())).unwrap().signer();
        assert_ne!(signer, Ok(TEST_GATEWAY_ADDRESS), "v = {v}");
    }
    for v in [2u8, 26, 29, 35, 36, 37, 255] {
        raw[64] = v;
        let h = format!("Bearer 0x{}", hex::encode(&raw));
        let err = expect_err(with_header(Some(h.as_bytes())));
        assert!(matches!(err, NoxError::Unauthorized(_)), "v = {v}: {err}");
        assert_eq!(err.status(), UNAUTHORIZED_STATUS);
    }
}

#[test]
fn high_s_signatures_are_accepted_like_nox() {
    // Nox (alloy) normalises s before recovery (NC §2); so does tkms.
    let header = authorization_header(&key(1), CHAIN, EPHEMERAL, &target());
    let raw = hex::decode(&header["Bearer 0x".len()..]).unwrap();
    let sig = k256::ecdsa::Signature::from_slice(&raw[..64]).unwrap();
    let (r, s) = sig.split_scalars();
    let high = k256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    assert!(high.normalize_s().is_some(), "s is now high");
    let mut flipped = high.to_bytes().to_vec();
    flipped.push(if raw[64] == 27 { 28 } else { 27 });
    let h = format!("Bearer 0x{}", hex::encode(flipped));
    let request = with_header(Some(h.as_bytes())).unwrap();
    assert_eq!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS);
}

#[test]
fn malformed_authorization_headers_are_refused() {
    let good = authorization_header(&key(1), CHAIN, EPHEMERAL, &target());
    let digits = &good["Bearer 0x".len()..];
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        format!("bearer 0x{digits}").into_bytes(),
        format!("BEARER 0x{digits}").into_bytes(),
        format!("Bearer  0x{digits}").into_bytes(),
        format!("Bearer 0X{digits}").into_bytes(),
        format!("Bearer {digits}").into_bytes(),
        format!("Bearer0x{digits}").into_bytes(),
        format!("Basic 0x{digits}").into_bytes(),
        format!("0x{digits}").into_bytes(),
        format!("Bearer 0x0x{digits}").into_bytes(),
        format!("Bearer 0x{}", &digits[..128]).into_bytes(),
        format!("Bearer 0x{digits}00").into_bytes(),
        format!("Bearer 0x{}zz", &digits[..128]).into_bytes(),
        format!("Bearer 0x{digits} ").into_bytes(),
        format!("Bearer 0x{}", "a".repeat(100_000)).into_bytes(),
        b"Bearer 0x\xff\xfe".to_vec(),
    ];
    for header in &cases {
        let err = expect_err(with_header(Some(header)));
        assert!(
            matches!(err, NoxError::Unauthorized(_)),
            "{:?}: {err}",
            String::from_utf8_lossy(header)
        );
    }
    let err = expect_err(with_header(None));
    assert!(matches!(err, NoxError::Unauthorized(_)));
    assert_eq!(err.code(), "unauthorized");
    // Upper-case signature digits are fine (const-hex in Nox).
    let upper = format!("Bearer 0x{}", digits.to_uppercase());
    let request = with_header(Some(upper.as_bytes())).unwrap();
    assert_eq!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS);
}

#[test]
fn zero_r_signature_is_refused_at_recovery() {
    let mut raw = [0u8; 65];
    raw[63] = 1;
    raw[64] = 27;
    let h = format!("Bearer 0x{}", hex::encode(raw));
    let request = with_header(Some(h.as_bytes())).unwrap();
    assert!(matches!(request.signer(), Err(NoxError::Unauthorized(_))));
}

// ---- RSA ----

#[test]
fn rsa_2048_round_trip_returns_x_of_s() {
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let spki = private.public_key().as_der().unwrap();
    let x = [0x5au8; 32];
    let encrypted = encrypt_shared_secret(spki.as_ref(), &SharedSecret::from_bytes(x)).unwrap();
    assert!(encrypted.starts_with("0x"));
    assert_eq!(encrypted.len(), 2 + 512);
    assert_eq!(encrypted, encrypted.to_lowercase());
    let plain = rsa_decrypt(&private, &hex::decode(&encrypted[2..]).unwrap());
    assert_eq!(plain, x);
    // OAEP is randomised.
    let again = encrypt_shared_secret(spki.as_ref(), &SharedSecret::from_bytes(x)).unwrap();
    assert_ne!(encrypted, again);

    // The same key accepted through the request path, with or without `0x`.
    let hex_spki = hex::encode(spki.as_ref());
    for tgt in [
        format!("0x{hex_spki}"),
        hex_spki.clone(),
        hex_spki.to_uppercase(),
    ] {
        let request = signed(EPHEMERAL, &tgt).unwrap();
        assert_eq!(request.target_spki_der(), spki.as_ref());
        assert_eq!(request.signer().unwrap(), TEST_GATEWAY_ADDRESS);
    }
}

#[test]
fn rsa_4096_is_accepted() {
    let private = PrivateDecryptingKey::generate(KeySize::Rsa4096).unwrap();
    let spki = hex::encode(private.public_key().as_der().unwrap().as_ref());
    signed(EPHEMERAL, &format!("0x{spki}")).unwrap();
}

#[test]
fn weak_odd_and_garbage_rsa_keys_are_refused() {
    let cases = [
        RSA_1024_SPKI.to_owned(),
        RSA_1984_SPKI.to_owned(),
        RSA_4160_SPKI.to_owned(),
        RSA_PSS_SPKI.to_owned(),
        "00".repeat(300),
        "30".repeat(300),
        format!("{SDK_SPKI}00"),
        SDK_SPKI[..SDK_SPKI.len() - 2].to_owned(),
        format!("{}zz", &SDK_SPKI[..SDK_SPKI.len() - 2]),
        format!("{SDK_SPKI}0"),
        "ab".repeat(5000),
        format!("0X{SDK_SPKI}"),
        format!("0x0x{SDK_SPKI}"),
        String::new(),
        "0x".into(),
    ];
    for tgt in &cases {
        for prefixed in [tgt.clone(), format!("0x{tgt}")] {
            let err = expect_err(signed(EPHEMERAL, &prefixed));
            assert!(
                matches!(err, NoxError::InvalidTargetPubKey(_)),
                "{}…: {err}",
                &prefixed[..prefixed.len().min(24)]
            );
            assert_eq!(err.status(), MALFORMED_STATUS);
        }
    }
    // The encryption entry point applies the same rules to raw DER.
    for der in [RSA_1024_SPKI, RSA_1984_SPKI, RSA_PSS_SPKI] {
        let der = hex::decode(der).unwrap();
        let err = encrypt_shared_secret(&der, &SharedSecret::from_bytes([1; 32])).unwrap_err();
        assert!(matches!(err, NoxError::InvalidTargetPubKey(_)), "{err}");
    }
    let err = encrypt_shared_secret(b"garbage", &SharedSecret::from_bytes([1; 32])).unwrap_err();
    assert_eq!(err.code(), "invalid_target_pub_key");
}

// ---- Response proof ----

#[test]
fn response_proof_round_trip_and_salt_binding() {
    let wallet = key(9);
    let secret = "0xdeadbeef";
    let proof = sign_response(&wallet, CHAIN, SALT_11, secret);
    assert_eq!(proof.len(), 132);
    assert!(proof.starts_with("0x"));
    assert_eq!(
        proof,
        sign_response(&wallet, CHAIN, SALT_11, secret),
        "RFC 6979"
    );
    assert_eq!(
        verify_response(CHAIN, SALT_11, secret, &proof).unwrap(),
        wallet_address(&wallet)
    );
    // The gateway's decoder takes `0X`, no prefix, and upper case too.
    for spelling in [
        proof[2..].to_owned(),
        format!("0X{}", &proof[2..]),
        proof.to_uppercase().replacen("0X", "0x", 1),
    ] {
        assert_eq!(
            verify_response(CHAIN, SALT_11, secret, &spelling).unwrap(),
            wallet_address(&wallet)
        );
    }
    // Anything else signed differently recovers to someone else.
    let me = Ok(wallet_address(&wallet));
    assert_ne!(verify_response(CHAIN, B256::ZERO, secret, &proof), me);
    assert_ne!(verify_response(CHAIN + 1, SALT_11, secret, &proof), me);
    assert_ne!(verify_response(CHAIN, SALT_11, "0xDEADBEEF", &proof), me);
    assert_ne!(verify_response(CHAIN, SALT_11, "deadbeef", &proof), me);

    for bad in [
        "",
        "0x",
        "0x1234",
        "zz",
        &proof[..130],
        &format!("{proof}00"),
    ] {
        let err = verify_response(CHAIN, SALT_11, secret, bad).unwrap_err();
        assert!(matches!(err, NoxError::InvalidProof(_)), "{bad}: {err}");
    }
}

// ---- Malformed requests ----

#[test]
fn ephemeral_key_rules() {
    // Upper-case digits are fine; no prefix is fine (NC §3).
    for ok in [
        EPHEMERAL.to_owned(),
        EPHEMERAL[2..].to_owned(),
        format!("0x{}", EPHEMERAL[2..].to_uppercase()),
    ] {
        signed(&ok, &target()).unwrap();
    }
    let g = &TEST_KMS_EC_PUBLIC_KEY_HEX[4..];
    let uncompressed =
        format!("0x04{g}483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8");
    let off_curve = format!("0x02{}", "00".repeat(31) + "05");
    let cases = [
        uncompressed,
        off_curve,
        format!("0x05{g}"),
        format!("0x00{}", "00".repeat(32)),
        format!("0X{}", &EPHEMERAL[2..]),
        format!("0x0x{}", &EPHEMERAL[2..]),
        format!("{EPHEMERAL}00"),
        EPHEMERAL[..EPHEMERAL.len() - 2].to_owned(),
        format!("{}zz", &EPHEMERAL[..EPHEMERAL.len() - 2]),
        format!("{} ", &EPHEMERAL[..EPHEMERAL.len() - 1]),
        "0x".to_owned() + &"é".repeat(33),
        "0x".to_owned() + &"0".repeat(10_000),
        String::new(),
        "0x".into(),
    ];
    for eph in &cases {
        let err = expect_err(signed(eph, &target()));
        assert!(
            matches!(err, NoxError::InvalidEphemeralPubKey(_)),
            "{}: {err}",
            &eph[..eph.len().min(80)]
        );
        assert_eq!(err.code(), "invalid_ephemeral_pub_key");
        assert_eq!(err.status(), MALFORMED_STATUS);
    }
}

#[test]
fn query_rules() {
    // Salt: `0x` optional, either case; absent means bytes32(0).
    let digits = "11".repeat(32);
    for q in [
        format!("chain_id={CHAIN}&salt=0x{digits}"),
        format!("chain_id={CHAIN}&salt={digits}"),
        format!("salt=0X{digits}&chain_id={CHAIN}"),
        format!(
            "chain_id={CHAIN}&salt=0x{}",
            "AA".repeat(16) + &"aa".repeat(16)
        ),
        format!("chain_id={CHAIN}&salt=%30x{digits}&other=1"),
    ] {
        let request = with_query(&q).unwrap();
        assert_eq!(request.chain_id(), CHAIN, "{q}");
        assert_ne!(request.salt(), B256::ZERO);
    }
    for q in [
        format!("chain_id={CHAIN}"),
        "chain_id=%34%32%31%36%31%34".to_owned(),
    ] {
        let request = with_query(&q).unwrap();
        assert_eq!(request.chain_id(), CHAIN);
        assert_eq!(request.salt(), B256::ZERO);
    }
    assert_eq!(with_query("chain_id=0").unwrap().chain_id(), 0);
    assert_eq!(
        with_query("chain_id=18446744073709551615")
            .unwrap()
            .chain_id(),
        u64::MAX
    );

    let cases = [
        String::new(),
        format!("salt=0x{digits}"),
        "chain_id=".into(),
        "chain_id".into(),
        "chain_id=0x66eee".into(),
        "chain_id=-1".into(),
        "chain_id=+1".into(),
        "chain_id=%2B1".into(),
        "chain_id=1.0".into(),
        "chain_id=1e3".into(),
        "chain_id= 1".into(),
        "chain_id=18446744073709551616".into(),
        "chain_id=١".into(),
        format!("chain_id={CHAIN}&chain_id={CHAIN}"),
        format!("chain_id={CHAIN}&salt="),
        format!("chain_id={CHAIN}&salt=0x"),
        format!("chain_id={CHAIN}&salt=0x{}", "11".repeat(31)),
        format!("chain_id={CHAIN}&salt=0x{}", "11".repeat(33)),
        format!("chain_id={CHAIN}&salt=0x{}zz", "11".repeat(31)),
        format!("chain_id={CHAIN}&salt=0x0x{}", "11".repeat(31)),
        format!("chain_id={CHAIN}&salt=0x{digits}&salt=0x{digits}"),
        format!("chain_id={CHAIN}&salt={}", "1".repeat(100_000)),
    ];
    for q in &cases {
        let err = expect_err(with_query(q));
        assert!(
            matches!(err, NoxError::InvalidQuery(_)),
            "{}: {err}",
            &q[..q.len().min(80)]
        );
        assert_eq!(err.code(), "invalid_query");
        assert_eq!(err.status(), MALFORMED_STATUS);
    }
}

#[test]
fn body_rules() {
    // Unknown fields are ignored (NC §4.1).
    let extra = json!({ "ephemeralPubKey": EPHEMERAL, "targetPubKey": target(), "x": [1, 2] });
    with_body(&serde_json::to_vec(&extra).unwrap()).unwrap();

    let t = target();
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        b"{".to_vec(),
        b"\xff\xfe".to_vec(),
        serde_json::to_vec(&json!({ "ephemeralPubKey": EPHEMERAL })).unwrap(),
        serde_json::to_vec(&json!({ "targetPubKey": t })).unwrap(),
        serde_json::to_vec(&json!({ "ephemeral_pub_key": EPHEMERAL, "target_pub_key": t }))
            .unwrap(),
        serde_json::to_vec(&json!({ "ephemeralPubKey": 2, "targetPubKey": t })).unwrap(),
        serde_json::to_vec(&json!({ "ephemeralPubKey": EPHEMERAL, "targetPubKey": null }))
            .unwrap(),
        format!(r#"{{"ephemeralPubKey":"{EPHEMERAL}","ephemeralPubKey":"{EPHEMERAL}","targetPubKey":"{t}"}}"#)
            .into_bytes(),
        serde_json::to_vec(&json!({
            "ephemeralPubKey": EPHEMERAL, "targetPubKey": t, "pad": "x".repeat(100_000)
        }))
        .unwrap(),
    ];
    for raw in &cases {
        let err = expect_err(with_body(raw));
        assert!(
            matches!(err, NoxError::InvalidBody(_)),
            "{}: {err}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        );
        assert_eq!(err.code(), "invalid_body");
        assert_eq!(err.status(), MALFORMED_STATUS);
    }
}

#[test]
fn error_codes_and_statuses_are_stable() {
    let signer = NoxError::SignerNotAuthorized {
        signer: TEST_KMS_SIGNER_ADDRESS,
        chain_id: CHAIN,
    };
    assert_eq!(signer.code(), "signer_not_authorized");
    assert_eq!(signer.status(), UNAUTHORIZED_STATUS);
    assert!(signer.to_string().starts_with("Unauthorized: "));
    assert_eq!(NoxError::UnknownChain(5).to_string(), "Unknown Chain ID 5");
    assert_eq!(NoxError::UnknownChain(5).status(), MALFORMED_STATUS);
    assert_eq!(NoxError::Encryption.status(), 500);
    // Every authorization failure is a 401 (NC §4.3).
    assert_eq!(UNAUTHORIZED_STATUS, 401);
}
