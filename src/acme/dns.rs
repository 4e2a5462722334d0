//! DNS-01 (RFC 8555 §8.4): the TXT record `_acme-challenge.<domain>` is placed before
//! the CA is asked and removed afterwards (also when the order fails), either
//! - by an RFC 2136 update signed with TSIG to the primary of an `[[acme.dns_update]]`
//!   zone (hickory), after which every authoritative server of the zone is queried until
//!   it serves the record (bounded; the error names the server that lags), or
//! - by `[acme] dns_command`, for any DNS provider with an API or `nsupdate` (as lego's
//!   exec provider does), then `dns_wait_secs`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use hickory_client::client::{Client, ClientHandle};
use hickory_client::proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_client::proto::dnssec::tsig::TSigner;
use hickory_client::proto::op::{Message, ResponseCode};
use hickory_client::proto::rr::rdata::TXT;
use hickory_client::proto::rr::{DNSClass, Name, RData, Record as DnsRecord, RecordType};
use hickory_client::proto::runtime::TokioRuntimeProvider;
use hickory_client::proto::tcp::TcpClientStream;

use crate::config::{Acme, DnsUpdate};

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

/// Places `record`: through its zone's primary if an `[[acme.dns_update]]` holds it
/// (then waits until every authoritative server serves it), else the command.
pub(super) async fn present(acme: &Acme, record: &Record, progress: super::Progress<'_>) -> Result<()> {
    match acme.dns_update_for(&record.domain) {
        Some(zone) => {
            update(zone, record, true).await?;
            progress(&format!("{}: TXT record {} placed at {} (RFC 2136)", record.domain, record.name, zone.server));
            propagated(zone, record, progress).await
        }
        None => {
            let command = acme.dns_command.as_deref().ok_or_else(|| {
                anyhow!(
                    "{}: no [[acme.dns_update]] zone holds it and there is no [acme] dns_command to place the TXT record",
                    record.domain
                )
            })?;
            run(command, "present", record).await?;
            progress(&format!("{}: TXT record {} placed by dns_command", record.domain, record.name));
            if !acme.dns_wait.is_zero() {
                tokio::time::sleep(acme.dns_wait).await;
            }
            Ok(())
        }
    }
}

/// Removes `record` the way [`present`] placed it.
pub(super) async fn cleanup(acme: &Acme, record: &Record) -> Result<()> {
    match acme.dns_update_for(&record.domain) {
        Some(zone) => update(zone, record, false).await,
        None => match acme.dns_command.as_deref() {
            Some(command) => run(command, "cleanup", record).await,
            None => Ok(()),
        },
    }
}

/// Longest wait for one DNS answer.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest TSIG secret file read (a base64 HMAC key is under 100 bytes).
const MAX_SECRET: u64 = 4096;

fn fqdn(name: &str) -> Result<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).map_err(|e| anyhow!("{name}: {e}"))
}

/// A client for plain queries (the propagation check).
async fn client(server: SocketAddr) -> Result<Client> {
    let (stream, sender) = TcpClientStream::new(server, None, Some(DNS_TIMEOUT), TokioRuntimeProvider::new());
    let (client, background) = Client::with_timeout(stream, sender, DNS_TIMEOUT, None)
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    tokio::spawn(background);
    Ok(client)
}

fn signer(zone: &DnsUpdate) -> Result<TSigner> {
    let file = &zone.secret_file;
    let text = crate::input::read_text(file, MAX_SECRET, crate::input::Links::Follow)
        .map_err(|e| anyhow!("[acme.dns_update] secret_file {}: {e}", file.display()))?;
    use base64::Engine;
    // `tsig-keygen` writes a whole key clause; a bare secret is accepted too.
    let secret = text
        .split('"')
        .map(str::trim)
        .rfind(|t| !t.is_empty() && !t.contains(char::is_whitespace) && !t.contains(['{', '}', ';']))
        .unwrap_or_else(|| text.trim());
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .map_err(|_| anyhow!("[acme.dns_update] secret_file {}: not a base64 TSIG secret", file.display()))?;
    // Checked when the configuration was loaded.
    let algorithm = match zone.algorithm.as_str() {
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => TsigAlgorithm::HmacSha256,
    };
    TSigner::new(key, algorithm, fqdn(&zone.key_name)?, 300).map_err(|e| anyhow!("TSIG key {}: {e}", zone.key_name))
}

/// Adds (`add`) or deletes the TXT record with one signed update to the zone's primary.
async fn update(zone: &DnsUpdate, record: &Record, add: bool) -> Result<()> {
    use hickory_client::proto::op::update_message;
    let what = if add { "adding" } else { "removing" };
    let go = async {
        let mut rr = DnsRecord::from_rdata(fqdn(&record.name)?, 60, RData::TXT(TXT::new(vec![record.value.clone()])));
        rr.set_dns_class(DNSClass::IN);
        let origin = fqdn(&zone.zone)?;
        let message = if add {
            update_message::append(rr.into(), origin, false, false)
        } else {
            update_message::delete_by_rdata(rr.into(), origin, false)
        };
        signed_exchange(zone.server, message, &signer(zone)?).await
    };
    tokio::time::timeout(DNS_TIMEOUT * 2, go)
        .await
        .map_err(|_| anyhow!("no answer within {} s", (DNS_TIMEOUT * 2).as_secs()))
        .flatten()
        .map_err(|e| {
            anyhow!(
                "[acme.dns_update] {what} TXT {} at {} (zone {}, key {}): {e:#}",
                record.name,
                zone.server,
                zone.zone,
                zone.key_name
            )
        })
}

/// Sends one TSIG-signed message over TCP and checks the answer. Not through hickory's
/// client: it cannot read a refusal's TSIG (an empty MAC), and the server's words (the
/// response code and the TSIG error, such as BADSIG) are what the operator needs.
async fn signed_exchange(server: SocketAddr, mut message: Message, signer: &TSigner) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut id = [0u8; 2];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| anyhow!("no random message id"))?;
    message.set_id(u16::from_be_bytes(id));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let verifier =
        message.finalize(signer, u32::try_from(now).unwrap_or(u32::MAX)).map_err(|e| anyhow!("signing: {e}"))?;
    let bytes = message.to_vec().map_err(|e| anyhow!("encoding: {e}"))?;
    let len = u16::try_from(bytes.len()).map_err(|_| anyhow!("update too large"))?;
    let mut tcp =
        tokio::net::TcpStream::connect(server).await.with_context(|| format!("cannot connect to {server}"))?;
    tcp.write_all(&len.to_be_bytes()).await?;
    tcp.write_all(&bytes).await?;
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.context("no answer")?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut answer).await.context("a cut-off answer")?;
    let response = Message::from_vec(&answer).map_err(|e| anyhow!("an unreadable answer: {e}"))?;
    if response.id() != message.id() {
        bail!("an answer to another message");
    }
    if response.response_code() != ResponseCode::NoError {
        // The TSIG error is the sixth field of the record's text form.
        let tsig = response
            .signature()
            .iter()
            .filter_map(|r| r.data().to_string().split(' ').nth(5).and_then(|e| e.parse::<u16>().ok()))
            .find(|&e| e != 0)
            .map(|e| match e {
                16 => " (TSIG BADSIG: the key's secret or algorithm does not match the server's)".to_owned(),
                17 => " (TSIG BADKEY: the server does not know this key name)".to_owned(),
                18 => " (TSIG BADTIME: this machine's clock is off)".to_owned(),
                other => format!(" (TSIG error {other})"),
            })
            .unwrap_or_default();
        bail!("the server answered {}{tsig}", response.response_code());
    }
    if let Some(mut verify) = verifier {
        verify(&answer).map_err(|e| anyhow!("the server's answer failed TSIG verification: {e}"))?;
    }
    Ok(())
}

/// The servers to check: `check_servers`, else the zone's NS names resolved at the
/// primary (port 53); the primary alone if that finds none.
async fn check_servers(zone: &DnsUpdate) -> Vec<(String, SocketAddr)> {
    if !zone.check_servers.is_empty() {
        return zone.check_servers.iter().map(|a| (a.to_string(), *a)).collect();
    }
    let mut out = Vec::new();
    if let Ok(mut c) = client(zone.server).await
        && let Ok(origin) = fqdn(&zone.zone)
        && let Ok(ns) = c.query(origin, DNSClass::IN, RecordType::NS).await
    {
        for host in ns.answers().iter().filter_map(|r| r.data().as_ns().map(|n| n.0.clone())) {
            for t in [RecordType::A, RecordType::AAAA] {
                if let Ok(a) = c.query(host.clone(), DNSClass::IN, t).await {
                    for ip in a.answers().iter().filter_map(|r| r.data().ip_addr()) {
                        out.push((host.to_ascii(), SocketAddr::new(ip, 53)));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        out.push((zone.server.to_string(), zone.server));
    }
    out
}

/// Whether `server` answers the TXT record with the value.
async fn serves(server: SocketAddr, record: &Record) -> bool {
    let ask = async {
        let mut c = client(server).await.ok()?;
        let r = c.query(fqdn(&record.name).ok()?, DNSClass::IN, RecordType::TXT).await.ok()?;
        Some(r.answers().iter().filter_map(|a| a.data().as_txt()).any(|t| t.to_string() == record.value))
    };
    tokio::time::timeout(DNS_TIMEOUT, ask).await.ok().flatten().unwrap_or(false)
}

/// Waits until every authoritative server serves the record, at most the zone's
/// `propagation_timeout`; the error names the servers that lag.
async fn propagated(zone: &DnsUpdate, record: &Record, progress: super::Progress<'_>) -> Result<()> {
    let mut waiting = check_servers(zone).await;
    let deadline = tokio::time::Instant::now() + zone.propagation_timeout;
    loop {
        let mut still = Vec::new();
        for (name, addr) in waiting {
            if !serves(addr, record).await {
                still.push((name, addr));
            }
        }
        waiting = still;
        if waiting.is_empty() {
            progress(&format!("{}: served by every authoritative server of {}", record.name, zone.zone));
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let lag: Vec<String> = waiting
                .iter()
                .map(|(n, a)| if n == &a.to_string() { n.clone() } else { format!("{n} ({a})") })
                .collect();
            bail!(
                "{}: not served by {} after {} s (propagation_timeout_secs of zone {})",
                record.name,
                lag.join(", "),
                zone.propagation_timeout.as_secs(),
                zone.zone
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
