//! Private-key encodings that no maintained pure-Rust crate decrypts: PEM with
//! `Proc-Type: 4,ENCRYPTED` (OpenSSL's traditional encryption, e.g. `openssl rsa -aes256`
//! from OpenSSL 1.x) and PKCS#8 encrypted with PBES1 (`-v1 PBE-SHA1-3DES`, OpenSSL 1.0's
//! default). AWS-LC, already linked for TLS, reads both; this is the only `unsafe` code,
//! kept to the calls and their frees.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::ptr;

use aws_lc_sys as sys;

/// Why AWS-LC could not read the key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LegacyError {
    /// Decryption failed, or decrypted to something that is not a key: a wrong password
    /// (or damaged ciphertext, which no one can tell apart from it).
    BadDecrypt,
    /// The input is not a key AWS-LC understands (e.g. an unsupported cipher).
    Unreadable,
}

struct Password<'a>(&'a [u8]);

/// AWS-LC's password callback: copies the password into its buffer.
unsafe extern "C" fn password_cb(buf: *mut c_char, size: c_int, _rwflag: c_int, userdata: *mut c_void) -> c_int {
    // SAFETY: `userdata` is the `Password` passed to PEM_read_bio_PrivateKey below, alive
    // for the duration of that call; `buf` has room for `size` bytes.
    unsafe {
        let pass = &*(userdata as *const Password<'_>);
        let Ok(len) = c_int::try_from(pass.0.len()) else { return -1 };
        if len > size {
            return -1;
        }
        ptr::copy_nonoverlapping(pass.0.as_ptr(), buf.cast::<u8>(), pass.0.len());
        len
    }
}

/// Serialises a parsed key as unencrypted PKCS#8 DER and frees it.
unsafe fn marshal_and_free(pkey: *mut sys::EVP_PKEY) -> Result<Vec<u8>, LegacyError> {
    // SAFETY: `pkey` is a valid key owned by us; every path frees it and the CBB.
    unsafe {
        let mut cbb: sys::CBB = std::mem::zeroed();
        if sys::CBB_init(&mut cbb, 1024) != 1 {
            sys::EVP_PKEY_free(pkey);
            return Err(LegacyError::Unreadable);
        }
        let ok = sys::EVP_marshal_private_key(&mut cbb, pkey) == 1;
        sys::EVP_PKEY_free(pkey);
        let mut out: *mut u8 = ptr::null_mut();
        let mut len = 0usize;
        if !ok || sys::CBB_finish(&mut cbb, &mut out, &mut len) != 1 {
            sys::CBB_cleanup(&mut cbb);
            return Err(LegacyError::Unreadable);
        }
        let der = std::slice::from_raw_parts(out, len).to_vec();
        sys::OPENSSL_cleanse(out.cast(), len);
        sys::OPENSSL_free(out.cast());
        Ok(der)
    }
}

/// Why reading an encrypted key failed, from AWS-LC's error queue (which it clears).
/// CBC padding is the only check a wrong password must pass, and a random one passes it
/// one time in 256: the "decrypted" bytes then fail to parse as a key. So every failure
/// is a wrong password except a structure AWS-LC cannot read or an algorithm it does not
/// support.
fn failure() -> LegacyError {
    // SAFETY: reading and clearing the thread's error queue has no preconditions.
    unsafe {
        let mut unsupported = false;
        loop {
            let e = sys::ERR_get_error();
            if e == 0 {
                break;
            }
            // ERR_GET_LIB and ERR_GET_REASON are C macros: lib in the top byte, reason low.
            let (lib, reason) = ((e >> 24) & 0xff, e & 0xfff);
            let pem = [
                sys::PEM_R_UNSUPPORTED_CIPHER,
                sys::PEM_R_UNSUPPORTED_ENCRYPTION,
                sys::PEM_R_BAD_IV_CHARS,
                sys::PEM_R_NOT_DEK_INFO,
                sys::PEM_R_NOT_PROC_TYPE,
                sys::PEM_R_SHORT_HEADER,
            ];
            let pkcs8 = [
                sys::PKCS8_R_DECODE_ERROR,
                sys::PKCS8_R_UNKNOWN_CIPHER,
                sys::PKCS8_R_UNSUPPORTED_CIPHER,
                sys::PKCS8_R_UNKNOWN_ALGORITHM,
                sys::PKCS8_R_UNKNOWN_CIPHER_ALGORITHM,
                sys::PKCS8_R_UNSUPPORTED_KEY_DERIVATION_FUNCTION,
                sys::PKCS8_R_UNSUPPORTED_PRF,
                sys::PKCS8_R_UNSUPPORTED_KEYLENGTH,
            ];
            unsupported |= (lib == sys::ERR_LIB_PEM as u32 && pem.iter().any(|r| *r as u32 == reason))
                || (lib == sys::ERR_LIB_PKCS8 as u32 && pkcs8.iter().any(|r| *r as u32 == reason));
        }
        if unsupported { LegacyError::Unreadable } else { LegacyError::BadDecrypt }
    }
}

/// Reads one PEM private key, encrypted the traditional way or not; returns PKCS#8 DER.
pub(super) fn read_pem_key(pem: &[u8], password: &[u8]) -> Result<Vec<u8>, LegacyError> {
    let Ok(len) = isize::try_from(pem.len()) else { return Err(LegacyError::Unreadable) };
    let pass = Password(password);
    // SAFETY: the BIO borrows `pem`, which outlives it; the callback's userdata points at
    // `pass`, which outlives the call; the BIO and the key are freed on every path.
    unsafe {
        sys::ERR_clear_error();
        let bio = sys::BIO_new_mem_buf(pem.as_ptr().cast(), len);
        if bio.is_null() {
            return Err(LegacyError::Unreadable);
        }
        let pkey = sys::PEM_read_bio_PrivateKey(
            bio,
            ptr::null_mut(),
            Some(password_cb),
            (&pass as *const Password<'_>).cast_mut().cast(),
        );
        sys::BIO_free(bio);
        if pkey.is_null() {
            return Err(failure());
        }
        marshal_and_free(pkey)
    }
}

/// Decrypts an EncryptedPrivateKeyInfo (PBES1 or PBES2); returns PKCS#8 DER.
pub(super) fn decrypt_pkcs8(der: &[u8], password: &[u8]) -> Result<Vec<u8>, LegacyError> {
    // SAFETY: the CBS borrows `der` and the password for the duration of the call; the
    // returned key is owned by us and freed by `marshal_and_free`.
    unsafe {
        sys::ERR_clear_error();
        let mut cbs: sys::CBS = std::mem::zeroed();
        sys::CBS_init(&mut cbs, der.as_ptr(), der.len());
        let pkey = sys::PKCS8_parse_encrypted_private_key(&mut cbs, password.as_ptr().cast(), password.len());
        if pkey.is_null() {
            return Err(failure());
        }
        marshal_and_free(pkey)
    }
}
