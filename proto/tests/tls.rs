//! The manager–node TLS channel over real loopback sockets: each side learns the other's
//! secp256k1 key from the handshake; a pinned node key that does not match is refused; the
//! bytes on the wire are not the plaintext. The certificates are checked against the
//! independent implementation of their format (`libp2p-tls`) both ways, certificates and whole
//! handshakes, so peers built before and after tkms wrote its own interoperate.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use futures::StreamExt;
use rand_core::OsRng;
use tkms_crypto::{suite::Encoded, Secp256k1, SecretScalar};
use tkms_proto::tls::{self, ManagerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener on a loopback port serving TLS with `config`: its port and its connections.
async fn listening(
    config: std::sync::Arc<rustls::ServerConfig>,
) -> (
    u16,
    std::pin::Pin<Box<impl futures::Stream<Item = std::io::Result<tls::PeerStream>>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, Box::pin(tls::incoming(listener, config)))
}

/// The libp2p identity of a tkms key.
fn libp2p_keypair(key: &SecretScalar<Secp256k1>) -> libp2p_identity::Keypair {
    let mut bytes = *key.to_bytes();
    let secret = libp2p_identity::secp256k1::SecretKey::try_from_bytes(&mut bytes[..]).unwrap();
    libp2p_identity::secp256k1::Keypair::from(secret).into()
}

/// A certificate as libp2p-tls makes it for `key`.
fn libp2p_certificate(key: &SecretScalar<Secp256k1>) -> Vec<u8> {
    let (certificate, _) = libp2p_tls::certificate::generate(&libp2p_keypair(key)).unwrap();
    certificate.as_ref().to_vec()
}

#[test]
fn certificates_from_libp2p_tls_are_read_as_its_key() {
    let key = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let certificate = libp2p_certificate(&key);
    assert_eq!(
        tls::cert::verify_certificate(&certificate)
            .unwrap()
            .as_slice(),
        Encoded::<Secp256k1>::new(key.public_point()).bytes()
    );
}

#[test]
fn a_changed_byte_anywhere_in_a_certificate_is_refused() {
    let key = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let certificate = libp2p_certificate(&key);
    let public = Encoded::<Secp256k1>::new(key.public_point());
    let mut accepted = Vec::new();
    for at in 0..certificate.len() {
        let mut changed = certificate.clone();
        changed[at] ^= 0x01;
        // The self-signature covers everything but the outer algorithm and the signature; a
        // flip may still land where no check looks (an unused-bits count), but it must never
        // give another key.
        if let Ok(read) = tls::cert::verify_certificate(&changed) {
            assert_eq!(read.as_slice(), public.bytes(), "byte {at}");
            accepted.push(at);
        }
    }
    assert!(accepted.len() <= 2, "flips accepted at {accepted:?}");
}

/// How a test certificate is made: by default a good one for `claimed`.
struct Make<'a> {
    claimed: &'a SecretScalar<Secp256k1>,
    /// Who signs the key extension (default: `claimed`).
    signer: Option<&'a SecretScalar<Secp256k1>>,
    /// The certificate key's algorithm.
    algorithm: &'static rcgen::SignatureAlgorithm,
    /// The key protobuf's type and data length (default: secp256k1, 33 bytes).
    key_type: (u8, usize),
    /// Any other change to the certificate.
    edit: fn(&mut rcgen::CertificateParams),
}

impl<'a> Make<'a> {
    fn good(claimed: &'a SecretScalar<Secp256k1>) -> Self {
        Self {
            claimed,
            signer: None,
            algorithm: &rcgen::PKCS_ECDSA_P256_SHA256,
            key_type: (2, 33),
            edit: |_| {},
        }
    }

    /// The certificate, for a fresh key of `self.algorithm`.
    fn der(&self) -> Vec<u8> {
        self.der_for(&rcgen::KeyPair::generate_for(self.algorithm).unwrap())
    }

    /// The certificate, for `tls_key`.
    fn der_for(&self, tls_key: &rcgen::KeyPair) -> Vec<u8> {
        use k256::ecdsa::signature::Signer as _;
        let mut message = b"libp2p-tls-handshake:".to_vec();
        message.extend_from_slice(&tls_key.public_key_der());
        let signer = self.signer.unwrap_or(self.claimed);
        let signing = k256::ecdsa::SigningKey::from_slice(signer.to_bytes().as_slice()).unwrap();
        let signature: k256::ecdsa::Signature = signing.sign(&message);
        let (key_type, key_len) = self.key_type;
        let key = Encoded::<Secp256k1>::new(self.claimed.public_point());
        let mut public = vec![0x08, key_type, 0x12, u8::try_from(key_len).unwrap()];
        public.extend_from_slice(&key.bytes()[..key_len]);
        let content = yasna::encode_der(&(public, signature.to_der().as_bytes().to_vec()));
        let mut extension =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 53594, 1, 1], content);
        extension.set_criticality(true);
        let mut params = rcgen::CertificateParams::default();
        params.custom_extensions.push(extension);
        (self.edit)(&mut params);
        params.self_signed(tls_key).unwrap().der().to_vec()
    }
}

/// A certificate for a fresh P-256 key naming `claimed`, its key extension signed by `signer`
/// (the certificate a thief of nothing but a public key could make).
fn forged_certificate(
    claimed: &SecretScalar<Secp256k1>,
    signer: &SecretScalar<Secp256k1>,
) -> Vec<u8> {
    Make {
        signer: Some(signer),
        ..Make::good(claimed)
    }
    .der()
}

#[test]
fn certificates_outside_the_format_are_refused_and_named() {
    let key = SecretScalar::<Secp256k1>::random(&mut OsRng);
    assert!(tls::cert::verify_certificate(&Make::good(&key).der()).is_ok());
    let cases: [(&str, Make<'_>); 6] = [
        (
            "Expired",
            Make {
                edit: |p| {
                    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2001, 1, 1);
                },
                ..Make::good(&key)
            },
        ),
        (
            "NotValidYet",
            Make {
                edit: |p| p.not_before = rcgen::date_time_ymd(2999, 1, 1),
                ..Make::good(&key)
            },
        ),
        (
            "CriticalExtension",
            Make {
                edit: |p| {
                    let mut other =
                        rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4], vec![5, 0]);
                    other.set_criticality(true);
                    p.custom_extensions.push(other);
                },
                ..Make::good(&key)
            },
        ),
        (
            "DuplicateExtension",
            Make {
                edit: |p| {
                    let again = p.custom_extensions[0].content().to_vec();
                    let mut twice = rcgen::CustomExtension::from_oid_content(
                        &[1, 3, 6, 1, 4, 1, 53594, 1, 1],
                        again,
                    );
                    twice.set_criticality(true);
                    p.custom_extensions.push(twice);
                },
                ..Make::good(&key)
            },
        ),
        (
            "Algorithm",
            Make {
                algorithm: &rcgen::PKCS_ECDSA_P384_SHA384,
                ..Make::good(&key)
            },
        ),
        // An Ed25519 identity (type 1, 32 bytes): tkms keys are secp256k1.
        (
            "IdentityKey",
            Make {
                key_type: (1, 32),
                ..Make::good(&key)
            },
        ),
    ];
    for (why, make) in cases {
        let refused = tls::cert::verify_certificate(&make.der()).unwrap_err();
        assert!(format!("{refused:?}").contains(why), "{why}: {refused:?}");
    }
}

/// Presents `certificate` with `key` whatever the peer asks.
#[derive(Debug)]
struct Presents(std::sync::Arc<rustls::sign::CertifiedKey>);

impl Presents {
    /// `certificate` with a P-256 `key` that may not be the certificate's.
    fn new(certificate: Vec<u8>, key: &rcgen::KeyPair) -> std::sync::Arc<Self> {
        let key = rustls::pki_types::PrivateKeyDer::from(
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        );
        let signer = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key).unwrap();
        std::sync::Arc::new(Self(std::sync::Arc::new(rustls::sign::CertifiedKey::new(
            vec![certificate.into()],
            signer,
        ))))
    }
}

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(std::sync::Arc::clone(&self.0))
    }
}

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        Some(std::sync::Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A copy of `victim`'s certificate (they are sent to anyone who connects) and the P-256 key
/// it was made for; the thief has the first and not the second.
fn certificate_of(victim: &SecretScalar<Secp256k1>) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (Make::good(victim).der_for(&key), key)
}

#[test]
fn a_certificate_claiming_a_key_it_cannot_sign_for_is_refused() {
    let victim = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let thief = SecretScalar::<Secp256k1>::random(&mut OsRng);
    // Made the same way, signed by the key it names: accepted (the forgery below differs
    // only in the signer).
    let honest = forged_certificate(&victim, &victim);
    assert!(tls::cert::verify_certificate(&honest).is_ok());
    let forged = forged_certificate(&victim, &thief);
    let refused = tls::cert::verify_certificate(&forged).unwrap_err();
    assert!(refused.to_string().contains("BadSignature"), "{refused}");
    assert!(
        libp2p_tls::certificate::parse(&rustls::pki_types::CertificateDer::from(forged)).is_err()
    );
}

#[tokio::test]
async fn managers_and_nodes_built_on_libp2p_tls_interoperate() {
    let node = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let manager = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let node_public = Encoded::<Secp256k1>::new(node.public_point());
    let manager_public = Encoded::<Secp256k1>::new(manager.public_point());

    // A node of an older build (libp2p-tls) and this build's manager, pinned to it.
    let mut old_node = libp2p_tls::make_server_config(&libp2p_keypair(&node)).unwrap();
    old_node.alpn_protocols = vec![b"h2".to_vec()];
    let (port, mut incoming) = listening(std::sync::Arc::new(old_node)).await;
    let client = ManagerTls::pinned(&manager, &node_public).unwrap();
    let (connected, accepted) = tokio::join!(client.connect("127.0.0.1", port), incoming.next());
    connected.unwrap();
    let accepted = accepted.unwrap().unwrap();
    let peer = tonic::transport::server::Connected::connect_info(&accepted);
    assert_eq!(peer.key.as_slice(), manager_public.bytes());

    // This build's node and a manager of an older build (libp2p-tls), pinned to it.
    let (port, mut incoming) = listening(tls::node_server_config(&node).unwrap()).await;
    let node_id = libp2p_identity::PublicKey::from(
        libp2p_identity::secp256k1::PublicKey::try_from_bytes(node_public.bytes()).unwrap(),
    )
    .to_peer_id();
    let mut old_manager =
        libp2p_tls::make_client_config(&libp2p_keypair(&manager), Some(node_id)).unwrap();
    old_manager.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(old_manager));
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("tkms-node").unwrap();
        connector.connect(name, tcp).await
    };
    let (connected, accepted) = tokio::join!(connect, incoming.next());
    let mut connected = connected.unwrap();
    let mut accepted = accepted.unwrap().unwrap();
    let peer = tonic::transport::server::Connected::connect_info(&accepted);
    assert_eq!(peer.key.as_slice(), manager_public.bytes());
    connected.write_all(b"partial").await.unwrap();
    connected.flush().await.unwrap();
    let mut got = [0u8; 7];
    accepted.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");

    // libp2p-tls reads this build's certificate (the node's, from the handshake) as its key.
    let presented = connected.get_ref().1.peer_certificates().unwrap()[0].clone();
    let parsed = libp2p_tls::certificate::parse(&presented).unwrap();
    assert_eq!(parsed.peer_id(), node_id);
}

#[tokio::test]
async fn both_sides_authenticate_by_key_and_pinning_refuses_another_node() {
    let node = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let manager = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let (port, mut incoming) = listening(tls::node_server_config(&node).unwrap()).await;

    // Pinned to the right node: the handshake completes and the node sees the manager's key.
    let client = ManagerTls::pinned(&manager, &Encoded::new(node.public_point())).unwrap();
    let (connected, accepted) = tokio::join!(client.connect("127.0.0.1", port), incoming.next());
    let mut connected = connected.unwrap();
    let mut accepted = accepted.unwrap().unwrap();
    let peer = tonic::transport::server::Connected::connect_info(&accepted);
    assert_eq!(
        peer.key.as_slice(),
        Encoded::<Secp256k1>::new(manager.public_point()).bytes()
    );
    connected.write_all(b"partial").await.unwrap();
    connected.flush().await.unwrap();
    let mut got = [0u8; 7];
    accepted.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");

    // Pinned to another node's key: refused by the manager's side.
    let stranger = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let wrong = ManagerTls::pinned(&manager, &Encoded::new(stranger.public_point())).unwrap();
    assert!(wrong.connect("127.0.0.1", port).await.is_err());
}

#[tokio::test]
async fn a_plaintext_client_gets_nothing() {
    let node = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let (port, mut incoming) = listening(tls::node_server_config(&node).unwrap()).await;
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // An HTTP/2 preface in the clear is not a TLS handshake: the connection is dropped and
    // never handed to the gRPC server.
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), incoming.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_copied_certificate_without_its_key_authenticates_nobody() {
    let node = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let manager = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let node_public = Encoded::<Secp256k1>::new(node.public_point());
    let thief = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();

    // A server presenting the node's certificate, with the certificate's own key (control) and
    // with the thief's: the manager pinned to the node accepts only the first.
    let (certificate, key) = certificate_of(&node);
    for (presented, accepted) in [(&key, true), (&thief, false)] {
        let mut server = libp2p_tls::make_server_config(&libp2p_keypair(&node)).unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        server.cert_resolver = Presents::new(certificate.clone(), presented);
        let (port, mut incoming) = listening(std::sync::Arc::new(server)).await;
        let client = ManagerTls::pinned(&manager, &node_public).unwrap();
        let connecting = client.connect("127.0.0.1", port);
        let (connected, _) = tokio::join!(connecting, async {
            tokio::time::timeout(std::time::Duration::from_secs(2), incoming.next()).await
        });
        assert_eq!(connected.is_ok(), accepted, "{:?}", connected.err());
    }

    // A client presenting the manager's certificate to a node, with its key (control) and with
    // the thief's: the node hands on only the first connection.
    let (certificate, key) = certificate_of(&manager);
    for (presented, accepted) in [(&key, true), (&thief, false)] {
        let (port, mut incoming) = listening(tls::node_server_config(&node).unwrap()).await;
        let mut client = libp2p_tls::make_client_config(&libp2p_keypair(&manager), None).unwrap();
        client.alpn_protocols = vec![b"h2".to_vec()];
        client.client_auth_cert_resolver = Presents::new(certificate.clone(), presented);
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from("tkms-node").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            // TLS 1.3: the client's certificate is checked after the client's handshake ends;
            // a refused one shows as the node closing the connection.
            tls.write_all(b"x").await?;
            tls.flush().await
        };
        let (_, handed_on) = tokio::join!(connect, async {
            tokio::time::timeout(std::time::Duration::from_secs(2), incoming.next()).await
        });
        let handed_on = handed_on.ok().flatten().is_some_and(|c| c.is_ok());
        assert_eq!(handed_on, accepted);
    }
}
