//! Key-derivation cost limits for encrypted private keys, checked before any derivation
//! runs: a file is attacker-chosen input, and its parameters choose how much memory and
//! time the derivation takes (scrypt with N = 2^40 asks for a petabyte; PBKDF2 with
//! 2^31 iterations runs for minutes). PKCS#12's own KDF is capped by p12-keystore at
//! the same iteration count.

use der::asn1::{ObjectIdentifier, UintRef};
use der::{Decode, Encode, Reader};

/// PBKDF2 and PBES1 / PKCS#12-PBE iterations: OpenSSL writes 2,048, we write 100,000.
pub const MAX_ITERATIONS: u64 = 1_000_000;
/// scrypt work N·r·p: OpenSSL's default (N = 2^14, r = 8, p = 1) is 2^17.
pub const MAX_SCRYPT_WORK: u64 = 1 << 22;
/// scrypt memory, 128·N·r bytes: OpenSSL's default needs 16 MiB and refuses over 32 MiB.
pub const MAX_SCRYPT_MEMORY: u64 = 64 << 20;

const PBES2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.13");
const PBKDF2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.5.12");
const SCRYPT: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11591.4.11");

#[derive(der::Sequence)]
struct EncryptedInfo<'a> {
    algorithm: AlgorithmRef<'a>,
    data: &'a der::asn1::OctetStringRef,
}

#[derive(der::Sequence)]
struct AlgorithmRef<'a> {
    oid: ObjectIdentifier,
    parameters: Option<der::AnyRef<'a>>,
}

#[derive(der::Sequence)]
struct Pbes2Params<'a> {
    kdf: AlgorithmRef<'a>,
    cipher: AlgorithmRef<'a>,
}

/// Checks the cost an EncryptedPrivateKeyInfo asks of its key derivation. `Err` names
/// the parameter and its limit; a structure this does not recognise is left to the
/// decoder, which refuses it without deriving anything.
pub fn check(der: &[u8]) -> Result<(), String> {
    let Ok(info) = EncryptedInfo::from_der(der) else { return Ok(()) };
    let Some(params) = info.algorithm.parameters else { return Ok(()) };
    let params = params.to_der().map_err(|e| e.to_string())?;
    if info.algorithm.oid != PBES2 {
        // PBES1 (RFC 8018 §6.1) and PKCS#12 PBE (RFC 7292 Appendix C): salt, iterations.
        return salt_then::<1>(&params).map_or(Ok(()), |[count]| iterations(count));
    }
    let Ok(pbes2) = Pbes2Params::from_der(&params) else { return Ok(()) };
    let Some(kdf_params) = pbes2.kdf.parameters else { return Ok(()) };
    let kdf_params = kdf_params.to_der().map_err(|e| e.to_string())?;
    if pbes2.kdf.oid == PBKDF2 {
        return salt_then::<1>(&kdf_params).map_or(Ok(()), |[count]| iterations(count));
    }
    if pbes2.kdf.oid == SCRYPT
        && let Some([n, r, p]) = salt_then::<3>(&kdf_params)
    {
        let work = n.saturating_mul(r).saturating_mul(p);
        if work > MAX_SCRYPT_WORK {
            return Err(format!("scrypt cost N·r·p = {n}·{r}·{p} exceeds the limit of {MAX_SCRYPT_WORK}"));
        }
        let memory = n.saturating_mul(r).saturating_mul(128);
        if memory > MAX_SCRYPT_MEMORY {
            return Err(format!(
                "scrypt memory 128·N·r = {} MiB (N = {n}, r = {r}) exceeds the limit of {} MiB",
                memory >> 20,
                MAX_SCRYPT_MEMORY >> 20
            ));
        }
    }
    Ok(())
}

/// The `K` integers after the salt in a KDF's parameter sequence (PBKDF2: the count;
/// scrypt: N, r, p; PBES1: the count). Optional fields after them are skipped.
fn salt_then<const K: usize>(der: &[u8]) -> Option<[u64; K]> {
    let mut reader = der::SliceReader::new(der).ok()?;
    reader
        .sequence(|r| {
            der::AnyRef::decode(r)?;
            let mut out = [0u64; K];
            for v in &mut out {
                *v = value(UintRef::decode(r)?);
            }
            r.read_slice(r.remaining_len())?;
            Ok::<_, der::Error>(out)
        })
        .ok()
}

fn iterations(count: u64) -> Result<(), String> {
    if count > MAX_ITERATIONS {
        return Err(format!("key-derivation iterations {count} exceed the limit of {MAX_ITERATIONS}"));
    }
    Ok(())
}

/// An unsigned integer's value, saturating at `u64::MAX` (N = 2^100 is as refused as 2^40).
fn value(n: UintRef<'_>) -> u64 {
    let bytes = n.as_bytes();
    if bytes.len() > 8 {
        return u64::MAX;
    }
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pkcs8::pkcs5::{EncryptionScheme, pbes2};

    fn encrypted(scheme: pbes2::Parameters) -> Vec<u8> {
        use der::Encode;
        let info = pkcs8::EncryptedPrivateKeyInfo {
            encryption_algorithm: EncryptionScheme::Pbes2(scheme),
            encrypted_data: der::asn1::OctetString::new(vec![0u8; 48]).unwrap(),
        };
        info.to_der().unwrap()
    }

    #[test]
    fn costs_over_the_limits_are_refused_before_deriving() {
        let iv = [7u8; 16];
        let salt = [1u8; 16];
        let ok = pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(100_000, &salt, iv).unwrap();
        assert_eq!(check(&encrypted(ok)), Ok(()));
        let slow = pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(50_000_000, &salt, iv).unwrap();
        let e = check(&encrypted(slow)).unwrap_err();
        assert!(e.contains("iterations 50000000") && e.contains("1000000"), "{e}");

        let default = pkcs8::pkcs5::scrypt::Params::new(14, 8, 1).unwrap();
        let ok = pbes2::Parameters::generate_scrypt_aes256cbc(default, &salt, iv).unwrap();
        assert_eq!(check(&encrypted(ok)), Ok(()));
        let huge = pkcs8::pkcs5::scrypt::Params::new(30, 8, 1).unwrap();
        let e = check(&encrypted(pbes2::Parameters::generate_scrypt_aes256cbc(huge, &salt, iv).unwrap())).unwrap_err();
        assert!(e.contains("N·r·p = 1073741824·8·1"), "{e}");
        // Within the work limit, over the memory limit: N = 2^20, r = 1 needs 128 MiB.
        let wide = pkcs8::pkcs5::scrypt::Params::new(20, 1, 1).unwrap();
        let e = check(&encrypted(pbes2::Parameters::generate_scrypt_aes256cbc(wide, &salt, iv).unwrap())).unwrap_err();
        assert!(e.contains("memory 128·N·r = 128 MiB"), "{e}");
    }

    #[test]
    fn unrecognised_structures_are_left_to_the_decoder() {
        assert_eq!(check(b""), Ok(()));
        assert_eq!(check(&[0x30, 0x03, 0x02, 0x01, 0x00]), Ok(()));
    }
}
