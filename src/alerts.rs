//! Alerts about failing ACME renewals: an email through SMTP (`[alerts.smtp]`) and/or an
//! `alert_command` run with the details in `PORTCULLIS_ALERT_*` environment variables.
//! Never a key or a password in either.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use time::OffsetDateTime;

use crate::config::{Alerts, Smtp, SmtpSecurity};
use crate::pki::rfc3339;

/// One alert.
#[derive(Clone, Debug)]
pub struct Alert {
    /// "renewal-failed" (first failure), "error" (below the alert threshold, daily) or
    /// "order-failed" (a configured certificate could not be obtained).
    pub kind: &'static str,
    pub id: String,
    pub friendly_name: String,
    pub hostnames: Vec<String>,
    pub not_after: Option<OffsetDateTime>,
    pub error: String,
}

impl Alert {
    fn subject(&self) -> String {
        let what = match self.kind {
            "error" => "certificate renewal failing, expiry near",
            "renewal-failed" => "certificate renewal failed",
            _ => "certificate order failed",
        };
        format!("[portcullis] {what}: {} ({})", self.friendly_name, self.hostnames.join(", "))
    }

    fn body(&self) -> String {
        let host = crate::hostname().unwrap_or_else(|| "this node".into());
        if self.kind == "order-failed" {
            return format!(
                "Portcullis on {host} could not obtain an ACME certificate.\n\n\
                 certificate: {} (configured in [[acme.certificate]])\nhostnames:   {}\n\n\
                 The CA said:\n{}\n\n\
                 The order is retried with backoff; nothing is served for these names until it succeeds.\n\
                 Check with: portcullis acme status, and the daemon's log\n",
                self.friendly_name,
                self.hostnames.join(", "),
                self.error,
            );
        }
        let expiry = self.not_after.map_or_else(
            || "no certificate yet".to_owned(),
            |t| format!("{} ({} days left)", rfc3339(t), (t - OffsetDateTime::now_utc()).whole_days()),
        );
        format!(
            "Portcullis on {host} could not renew an ACME certificate.\n\n\
             certificate: {} ({})\nhostnames:   {}\nexpires:     {expiry}\nalert:       {}\n\n\
             The CA said:\n{}\n\n\
             The current certificate keeps being served until a renewal succeeds.\n\
             Check with: portcullis acme status\n",
            if self.id.is_empty() { "-" } else { &self.id },
            self.friendly_name,
            self.hostnames.join(", "),
            self.kind,
            self.error,
        )
    }
}

/// Sends `alert` through every configured channel. True if one delivered it (or none is
/// configured, so there is nothing to retry); failures are logged.
pub async fn send(alerts: &Alerts, alert: &Alert) -> bool {
    tracing::warn!(kind = alert.kind, id = %alert.id, hostnames = %alert.hostnames.join(","), error = %alert.error, "alert");
    if alerts.smtp.is_none() && alerts.command.is_none() {
        return true;
    }
    let mut delivered = false;
    if let Some(smtp) = &alerts.smtp {
        match mail(smtp, alert).await {
            Ok(()) => {
                delivered = true;
                tracing::info!(to = %smtp.to.join(","), "alert mailed");
            }
            Err(e) => tracing::error!(host = %smtp.host, error = %e, "alert mail failed"),
        }
    }
    if let Some(command) = &alerts.command {
        match run(command, alert).await {
            Ok(()) => delivered = true,
            Err(e) => tracing::error!(command = %command, error = %e, "alert_command failed"),
        }
    }
    delivered
}

async fn mail(smtp: &Smtp, alert: &Alert) -> Result<(), String> {
    let from: Mailbox = smtp.from.parse().map_err(|e| format!("alerts.smtp.from: {e}"))?;
    let mut message = Message::builder().from(from).subject(alert.subject()).header(ContentType::TEXT_PLAIN);
    for to in &smtp.to {
        message = message.to(to.parse().map_err(|e| format!("alerts.smtp.to {to:?}: {e}"))?);
    }
    let message = message.body(alert.body()).map_err(|e| e.to_string())?;
    let tls = || -> Result<TlsParameters, String> {
        let mut params = TlsParameters::builder(smtp.host.clone());
        if let Some(bundle) = &smtp.ca_bundle {
            let pem = crate::input::read(bundle, crate::input::MAX_PEM, crate::input::Links::Follow)
                .map_err(|e| format!("alerts.smtp.ca_bundle {}: {e}", bundle.display()))?;
            for block in pem::parse_many(&pem).map_err(|e| format!("alerts.smtp.ca_bundle: {e}"))? {
                let cert = lettre::transport::smtp::client::Certificate::from_der(block.contents().to_vec())
                    .map_err(|e| format!("alerts.smtp.ca_bundle: {e}"))?;
                params = params.add_root_certificate(cert);
            }
        }
        params.build_rustls().map_err(|e| e.to_string())
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(30)));
    transport = match smtp.security {
        SmtpSecurity::None => transport,
        SmtpSecurity::StartTls => transport.tls(Tls::Required(tls()?)),
        SmtpSecurity::Tls => transport.tls(Tls::Wrapper(tls()?)),
    };
    if let (Some(user), Some(file)) = (&smtp.username, &smtp.password_file) {
        let password = crate::input::read_text(file, crate::input::MAX_PASSWORD, crate::input::Links::Follow)
            .map_err(|e| format!("alerts.smtp.password_file {}: {e}", file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        transport = transport.credentials(Credentials::new(user.clone(), password));
    }
    transport.build().send(message).await.map(|_| ()).map_err(|e| e.to_string())
}

async fn run(command: &str, alert: &Alert) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("PORTCULLIS_ALERT_KIND", alert.kind)
        .env("PORTCULLIS_ALERT_ID", &alert.id)
        .env("PORTCULLIS_ALERT_NAME", &alert.friendly_name)
        .env("PORTCULLIS_ALERT_HOSTNAMES", alert.hostnames.join(","))
        .env("PORTCULLIS_ALERT_NOT_AFTER", alert.not_after.map(rfc3339).unwrap_or_default())
        .env("PORTCULLIS_ALERT_ERROR", &alert.error)
        .env("PORTCULLIS_ALERT_SUBJECT", alert.subject())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(60), cmd.status())
        .await
        .map_err(|_| "timed out after 60 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if status.success() { Ok(()) } else { Err(format!("exited with {status}")) }
}
