//! DNS-01 (RFC 8555 §8.4) through `[acme] dns_command`: the command places the TXT
//! record `_acme-challenge.<domain>` before the CA is asked and removes it afterwards,
//! for any DNS provider with an API or `nsupdate` (as lego's exec provider does).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

/// Longest a command may run; a provider API that hangs fails the order instead.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Most of the command's stderr kept for the error.
const MAX_STDERR: usize = 4096;

/// One TXT record of an order.
pub(super) struct Record {
    /// `_acme-challenge.<domain>`, without the trailing dot.
    pub name: String,
    /// The key authorization's digest, base64url (RFC 8555 §8.4).
    pub value: String,
    /// The identifier validated (a wildcard's base domain).
    pub domain: String,
}

/// Runs `command` with `sh -c` for `action` (`present` or `cleanup`), the record in
/// PORTCULLIS_DNS_ACTION, _NAME (with the trailing dot), _VALUE and _DOMAIN.
pub(super) async fn run(command: &str, action: &str, record: &Record) -> Result<()> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("PORTCULLIS_DNS_ACTION", action)
        .env("PORTCULLIS_DNS_NAME", format!("{}.", record.name))
        .env("PORTCULLIS_DNS_VALUE", &record.value)
        .env("PORTCULLIS_DNS_DOMAIN", &record.domain)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow!("[acme] dns_command: cannot start /bin/sh: {e}"))?;
    let mut stderr = child.stderr.take();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(MAX_STDERR as u64).read_to_end(&mut buf).await;
        }
        buf
    };
    let done = tokio::time::timeout(COMMAND_TIMEOUT, async {
        let (buf, status) = tokio::join!(read, child.wait());
        (buf, status)
    })
    .await;
    let Ok((buf, status)) = done else {
        bail!("[acme] dns_command {action} {}: no exit after {} s", record.name, COMMAND_TIMEOUT.as_secs());
    };
    let status = status.map_err(|e| anyhow!("[acme] dns_command {action} {}: {e}", record.name))?;
    if !status.success() {
        let text = String::from_utf8_lossy(&buf);
        let said = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        bail!(
            "[acme] dns_command {action} {} failed ({status}){}",
            record.name,
            if said.is_empty() { String::new() } else { format!(": {said}") }
        );
    }
    Ok(())
}
