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

/// A self-signed certificate for a fresh P-256 key whose key extension names `claimed` but is
/// signed by `signer` (the certificate a thief of nothing but a public key could make).
fn forged_certificate(
    claimed: &SecretScalar<Secp256k1>,
    signer: &SecretScalar<Secp256k1>,
) -> Vec<u8> {
    use k256::ecdsa::signature::Signer as _;
    let tls_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut message = b"libp2p-tls-handshake:".to_vec();
    message.extend_from_slice(&tls_key.public_key_der());
    let signing = k256::ecdsa::SigningKey::from_slice(signer.to_bytes().as_slice()).unwrap();
    let signature: k256::ecdsa::Signature = signing.sign(&message);
    let mut public = vec![0x08, 0x02, 0x12, 33];
    public.extend_from_slice(Encoded::<Secp256k1>::new(claimed.public_point()).bytes());
    let content = yasna::encode_der(&(public, signature.to_der().as_bytes().to_vec()));
    let mut extension =
        rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 53594, 1, 1], content);
    extension.set_criticality(true);
    let mut params = rcgen::CertificateParams::default();
    params.custom_extensions.push(extension);
    params.self_signed(&tls_key).unwrap().der().to_vec()
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
