//! The manager–node TLS channel over real loopback sockets: each side learns the other's
//! secp256k1 key from the handshake; a pinned node key that does not match is refused; the
//! bytes on the wire are not the plaintext.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use futures::StreamExt;
use rand_core::OsRng;
use tkms_crypto::{suite::Encoded, Secp256k1, SecretScalar};
use tkms_proto::tls::{self, ManagerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn peer_ids_carry_the_secp256k1_key() {
    let key = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let public = Encoded::new(key.public_point());
    let id = tls::peer_id(&public).unwrap();
    assert_eq!(tls::peer_key(&id).unwrap().as_slice(), public.bytes());
}

#[tokio::test]
async fn both_sides_authenticate_by_key_and_pinning_refuses_another_node() {
    let node = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let manager = SecretScalar::<Secp256k1>::random(&mut OsRng);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut incoming = Box::pin(tls::incoming(
        listener,
        tls::node_server_config(&node).unwrap(),
    ));

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut incoming = Box::pin(tls::incoming(
        listener,
        tls::node_server_config(&node).unwrap(),
    ));
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
