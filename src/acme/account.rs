//! The ACME account: stored in `store/acme/account.json` (0600) per directory, created
//! on first use (with EAB if configured), and the CA's problem documents as text.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use instant_acme::{Account, AccountBuilder, AccountCredentials, ExternalAccountKey, NewAccount};
use serde::{Deserialize, Serialize};

use super::{Progress, blocking};
use crate::config::Acme as AcmeConfig;
use crate::store::Store;

#[derive(Serialize, Deserialize)]
pub(super) struct StoredAccount {
    pub(super) directory: String,
    credentials: serde_json::Value,
}

pub(super) fn account_path(store: &Path) -> PathBuf {
    store.join("acme").join("account.json")
}

fn builder(acme: &AcmeConfig) -> Result<AccountBuilder> {
    let Some(bundle) = &acme.ca_bundle else {
        return Account::builder().map_err(|e| anyhow!("ACME HTTP client: {e}"));
    };
    use rustls_pki_types::pem::PemObject;
    let pem = crate::input::read(bundle, crate::input::MAX_PEM, crate::input::Links::Follow)
        .with_context(|| format!("acme.ca_bundle {}", bundle.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| anyhow!("acme.ca_bundle {}: {e}", bundle.display()))?;
        roots.add(cert).map_err(|e| anyhow!("acme.ca_bundle {}: {e}", bundle.display()))?;
    }
    if roots.is_empty() {
        bail!("acme.ca_bundle {}: no certificates in the file", bundle.display());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, instant_acme::BodyWrapper<bytes::Bytes>>(https);
    Ok(Account::builder_with_http(Box::new(client)))
}

/// The stored account for the configured directory, or a new one (saved 0600).
pub(super) async fn account(acme: &AcmeConfig, store_dir: &Path, progress: Progress<'_>) -> Result<Account> {
    let path = account_path(store_dir);
    match crate::input::read_text(&path, crate::input::MAX_TOML, crate::input::Links::Refuse) {
        Ok(text) => {
            let stored: StoredAccount =
                serde_json::from_str(&text).with_context(|| format!("{}: not an account file", path.display()))?;
            if stored.directory == acme.directory {
                let creds: AccountCredentials = serde_json::from_value(stored.credentials)
                    .with_context(|| format!("{}: damaged credentials", path.display()))?;
                return builder(acme)?
                    .from_credentials(creds)
                    .await
                    .map_err(|e| anyhow!("ACME directory {}: {}", acme.directory, describe(&e)));
            }
            progress(&format!("the directory changed from {}: creating a new account", stored.directory));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("{}: {e}", path.display())),
    }
    progress(&format!("creating an ACME account at {}", acme.directory));
    let eab = match &acme.eab {
        None => None,
        Some((kid, file)) => {
            use base64::Engine;
            let text = crate::input::read_text(file, crate::input::MAX_PASSWORD, crate::input::Links::Follow)
                .with_context(|| format!("acme.eab_hmac_key_file {}", file.display()))?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim().trim_end_matches('='))
                .map_err(|e| anyhow!("acme.eab_hmac_key_file {}: not base64url: {e}", file.display()))?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
    };
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder(acme)?
        .create(&new, acme.directory.clone(), eab.as_ref())
        .await
        .map_err(|e| anyhow!("creating an account at {}: {}", acme.directory, describe(&e)))?;
    let stored = StoredAccount { directory: acme.directory.clone(), credentials: serde_json::to_value(&creds)? };
    let json = serde_json::to_vec_pretty(&stored)?;
    let store_dir = store_dir.to_owned();
    blocking(move || {
        let mut store = Store::open_existing(&store_dir)?;
        store.write_acme_account(&json)?;
        Ok(())
    })
    .await?;
    progress(&format!("account {} saved in {}", account.id(), path.display()));
    Ok(account)
}

/// An ACME error as the CA said it: problem type, detail, subproblems.
pub fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        other => {
            // Connection errors hide their cause in the source chain.
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s = format!("{s}: {t}");
                }
                src = inner.source();
            }
            s
        }
    }
}

pub(super) fn problem(p: &instant_acme::Problem) -> String {
    let mut s = format!(
        "{}: {}",
        p.r#type.as_deref().unwrap_or("(no problem type)"),
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for sub in &p.subproblems {
        s.push_str(&format!("; {sub}"));
    }
    s
}
