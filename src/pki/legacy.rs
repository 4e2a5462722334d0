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
    /// Decryption failed: almost always a wrong password.
    BadDecrypt,
    /// The input is not a key AWS-LC understands.
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

/// AWS-LC reports a failed decryption as a BAD_DECRYPT error on its queue.
fn last_error_is_bad_decrypt() -> bool {
    // SAFETY: reading and clearing the thread's error queue has no preconditions.
    unsafe {
        let mut bad_decrypt = false;
        loop {
            let e = sys::ERR_get_error();
            if e == 0 {
                break;
            }
            // ERR_GET_LIB and ERR_GET_REASON are C macros: lib in the top byte, reason low.
            let (lib, reason) = ((e >> 24) & 0xff, e & 0xfff);
            bad_decrypt |= lib == sys::ERR_LIB_CIPHER as u32 && reason == sys::CIPHER_R_BAD_DECRYPT as u32;
        }
        bad_decrypt
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
            return Err(if last_error_is_bad_decrypt() { LegacyError::BadDecrypt } else { LegacyError::Unreadable });
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
            return Err(if last_error_is_bad_decrypt() { LegacyError::BadDecrypt } else { LegacyError::Unreadable });
        }
        marshal_and_free(pkey)
    }
}
