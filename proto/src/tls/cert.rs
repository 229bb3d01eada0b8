//! The certificates of the manager–node channel, in the libp2p TLS format
//! (<https://github.com/libp2p/specs/blob/master/tls/tls.md>), restricted to what tkms uses:
//! secp256k1 identity keys, ECDSA P-256 certificate keys, TLS 1.3.
//!
//! A side presents a self-signed certificate for a fresh P-256 key. Its critical extension
//! `1.3.6.1.4.1.53594.1.1` holds `SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature
//! OCTET STRING }`: the identity key as libp2p's key protobuf, and its ECDSA signature (SHA-256,
//! DER) over `"libp2p-tls-handshake:" ‖ the certificate's SubjectPublicKeyInfo`. The
//! handshake's CertificateVerify proves possession of the P-256 key; the extension binds that
//! key to the identity key.
//!
//! Written here, on RustCrypto (`k256`, `p256`), `rcgen` and `x509-parser`, so that the
//! manager, meant for a TEE, links no libp2p crate (the format is what `libp2p-tls` makes; the
//! tests check both directions against it, so nodes and managers of either build interoperate).

use std::sync::Arc;

use k256::ecdsa::signature::{Signer as _, Verifier as _};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    sign::CertifiedKey,
    CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme,
};
use tkms_crypto::{Secp256k1, SecretScalar};
use x509_parser::{
    certificate::X509Certificate,
    der_parser::oid::Oid,
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256},
    prelude::FromDer as _,
};

use super::TlsError;

/// The libp2p public key extension (allocated by IANA to libp2p).
const EXTENSION_OID: [u64; 9] = [1, 3, 6, 1, 4, 1, 53594, 1, 1];
/// What the identity key signs, before the certificate key's SubjectPublicKeyInfo.
const SIGNING_PREFIX: &[u8] = b"libp2p-tls-handshake:";
/// libp2p's key protobuf for a secp256k1 key: `Type = Secp256k1 (2)`, `Data` = 33 bytes.
const KEY_PROTOBUF_PREFIX: [u8; 4] = [0x08, 0x02, 0x12, 33];
/// The one handshake signature scheme: the certificate keys are P-256.
const SCHEME: SignatureScheme = SignatureScheme::ECDSA_NISTP256_SHA256;

/// Why a peer's certificate was refused.
#[derive(Debug, thiserror::Error)]
enum CertRefused {
    #[error("not a DER X.509 certificate")]
    Encoding,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("not an ECDSA P-256 / SHA-256 certificate")]
    Algorithm,
    #[error("the self-signature does not verify")]
    SelfSignature,
    #[error("no libp2p key extension")]
    MissingExtension,
    #[error("the libp2p key extension twice")]
    DuplicateExtension,
    #[error("an unknown critical extension")]
    CriticalExtension,
    #[error("the key extension is malformed")]
    Extension,
    #[error("the identity key is not a secp256k1 key")]
    IdentityKey,
    #[error("the identity key's signature does not verify")]
    IdentitySignature,
}

impl From<CertRefused> for rustls::Error {
    fn from(e: CertRefused) -> Self {
        rustls::Error::InvalidCertificate(match e {
            CertRefused::Encoding => CertificateError::BadEncoding,
            CertRefused::Expired => CertificateError::Expired,
            CertRefused::NotYetValid => CertificateError::NotValidYet,
            CertRefused::SelfSignature | CertRefused::IdentitySignature => {
                CertificateError::BadSignature
            }
            other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
        })
    }
}

/// The TLS 1.3 cipher suites and key exchanges of the channel (aws-lc-rs, as libp2p-tls).
pub(super) fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

/// A fresh certificate for `identity`, with its P-256 key, ready for rustls.
pub(super) fn certified_key(
    identity: &SecretScalar<Secp256k1>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let failed = |e: &dyn std::fmt::Display| TlsError::Certificate(e.to_string());
    let tls_key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| failed(&e))?;
    let signing = k256::ecdsa::SigningKey::from_slice(identity.to_bytes().as_slice())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let mut message = SIGNING_PREFIX.to_vec();
    message.extend_from_slice(&tls_key.public_key_der());
    let signature: k256::ecdsa::Signature = signing.sign(&message);
    let mut public = KEY_PROTOBUF_PREFIX.to_vec();
    public.extend_from_slice(signing.verifying_key().to_encoded_point(true).as_bytes());
    let content = yasna::encode_der(&(public, signature.to_der().as_bytes().to_vec()));
    let mut extension = rcgen::CustomExtension::from_oid_content(&EXTENSION_OID, content);
    extension.set_criticality(true);

    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions.push(extension);
    let certificate = params.self_signed(&tls_key).map_err(|e| failed(&e))?;
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(tls_key.serialize_der()));
    let signer = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key).map_err(|e| failed(&e))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![certificate.der().clone()],
        signer,
    )))
}

/// The identity key (compressed SEC1) that a peer's certificate authenticates, after checking
/// the whole certificate: DER, validity period, algorithms, self-signature, extensions and the
/// identity key's signature.
pub fn verify_certificate(der: &[u8]) -> Result<[u8; 33], rustls::Error> {
    Ok(parse(der)?.identity)
}

struct Parsed {
    identity: [u8; 33],
    /// The certificate key, an uncompressed SEC1 P-256 point.
    point: Vec<u8>,
}

fn parse(der: &[u8]) -> Result<Parsed, CertRefused> {
    let (rest, x509) = X509Certificate::from_der(der).map_err(|_| CertRefused::Encoding)?;
    if !rest.is_empty() {
        return Err(CertRefused::Encoding);
    }
    let (validity, now) = (x509.validity(), x509_parser::time::ASN1Time::now());
    if now < validity.not_before {
        return Err(CertRefused::NotYetValid);
    }
    if now > validity.not_after {
        return Err(CertRefused::Expired);
    }
    let spki = x509.public_key();
    let curve = spki
        .algorithm
        .parameters
        .clone()
        .and_then(|p| Oid::try_from(p).ok());
    if x509.signature_algorithm.algorithm != OID_SIG_ECDSA_WITH_SHA256
        || spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY
        || curve != Some(OID_EC_P256)
    {
        return Err(CertRefused::Algorithm);
    }
    let point = spki.subject_public_key.data.to_vec();
    verify_p256(
        &point,
        x509.tbs_certificate.as_ref(),
        &x509.signature_value.data,
    )
    .map_err(|()| CertRefused::SelfSignature)?;

    let oid = Oid::from(&EXTENSION_OID).map_err(|_| CertRefused::Extension)?;
    let mut signed_key = None;
    for extension in x509.extensions() {
        if extension.oid == oid {
            if signed_key.is_some() {
                return Err(CertRefused::DuplicateExtension);
            }
            signed_key = Some(extension.value);
        } else if extension.critical {
            return Err(CertRefused::CriticalExtension);
        }
    }
    let signed_key = signed_key.ok_or(CertRefused::MissingExtension)?;
    let (public, signature): (Vec<u8>, Vec<u8>) =
        yasna::decode_der(signed_key).map_err(|_| CertRefused::Extension)?;
    let identity: [u8; 33] = public
        .strip_prefix(&KEY_PROTOBUF_PREFIX[..])
        .and_then(|key| key.try_into().ok())
        .ok_or(CertRefused::IdentityKey)?;
    let verifying = k256::ecdsa::VerifyingKey::from_sec1_bytes(&identity)
        .map_err(|_| CertRefused::IdentityKey)?;
    let signature =
        k256::ecdsa::Signature::from_der(&signature).map_err(|_| CertRefused::IdentitySignature)?;
    let mut message = SIGNING_PREFIX.to_vec();
    message.extend_from_slice(spki.raw);
    verifying
        .verify(&message, &signature)
        .map_err(|_| CertRefused::IdentitySignature)?;
    Ok(Parsed { identity, point })
}

/// ECDSA P-256 / SHA-256 with a DER signature.
fn verify_p256(point: &[u8], message: &[u8], signature: &[u8]) -> Result<(), ()> {
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| ())?;
    let signature = p256::ecdsa::Signature::from_der(signature).map_err(|_| ())?;
    key.verify(message, &signature).map_err(|_| ())
}

/// The handshake's CertificateVerify: made by the certificate's P-256 key.
fn verify_handshake(
    message: &[u8],
    certificate: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SCHEME {
        return Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::NoSignatureSchemesInCommon,
        ));
    }
    let parsed = parse(certificate)?;
    verify_p256(&parsed.point, message, dss.signature())
        .map_err(|()| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
    Ok(HandshakeSignatureValid::assertion())
}

/// The handshake-signature methods, the same for both sides' verifier traits.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.3 only".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_handshake(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SCHEME]
        }
    };
}

/// Checks a peer's single self-signed certificate, and on the manager's side that it is the
/// pinned node's.
#[derive(Debug)]
pub(super) struct PeerVerifier {
    /// The identity key the manager means to reach; `None` on a node (any key may connect;
    /// the service decides what it may call) or for a manager that accepts any node.
    pub(super) expected: Option<[u8; 33]>,
}

impl PeerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "the peer must present exactly one certificate".into(),
            ));
        }
        let identity = verify_certificate(end_entity)?;
        if self.expected.is_some_and(|expected| expected != identity) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Presents the one certificate, whatever the peer asks.
#[derive(Debug)]
pub(super) struct Presents(pub(super) Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(&self, _client_hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
