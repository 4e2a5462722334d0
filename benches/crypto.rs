//! The crypto ceiling of a full handshake with aws-lc (what rustls uses here): one
//! signature (ECDSA P-256 or RSA-2048 PSS-SHA256) and one X25519 key agreement per
//! full TLS 1.3 handshake. docs/PERFORMANCE.md compares handshake rates with these.

use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn crypto(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let msg = [7u8; 130];
    let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    c.bench_function("ecdsa_p256_sign", |b| b.iter(|| black_box(ec.sign(&rng, black_box(&msg)).unwrap())));
    let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let mut sig = vec![0u8; rsa.public_modulus_len()];
    c.bench_function("rsa2048_pss_sign", |b| {
        b.iter(|| rsa.sign(&signature::RSA_PSS_SHA256, &rng, black_box(&msg), &mut sig).unwrap())
    });
    let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
    let peer_pub = peer.compute_public_key().unwrap();
    c.bench_function("x25519_keygen_and_agree", |b| {
        b.iter(|| {
            let mine = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let _ = mine.compute_public_key().unwrap();
            agreement::agree_ephemeral(mine, UnparsedPublicKey::new(&X25519, peer_pub.as_ref()), (), |k| {
                black_box(k.len());
                Ok(())
            })
            .unwrap()
        })
    });
    let _ = ec.public_key();
}

criterion_group!(benches, crypto);
criterion_main!(benches);
