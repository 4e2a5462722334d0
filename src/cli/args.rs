//! The command line's shape: clap types for every command and flag, shared by the CLI
//! and the job runner (a job file is parsed by this parser, so it accepts exactly what
//! the command accepts). Parsing only; `cli` runs the commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::ops::CreateParams;
use crate::pki::{IdentityRequest, KeyType, Subject};

const EXAMPLES: &str = "\
Examples:
  portcullis cert create-self-signed --name 'Support site' --common-name support.example.com --san '*.example.com'
  portcullis cert request --name 'Support 2027' --key rsa-3072 --country DE --org 'Example GmbH' --san support.example.com > support.csr
  portcullis cert list --json
  portcullis cert set-default support-site
  portcullis acme request --hostname support.example.com
  portcullis job submit renew-lab.toml --wait
  portcullis --config /etc/portcullis/portcullis.toml status

Exit status: 0 success, 1 an error (one line on stderr naming the flag, file or id), 2 a usage error.";

#[derive(Debug, Parser)]
#[command(name = "portcullis", version = crate::VERSION, long_version = crate::LONG_VERSION, about = "A TLS edge proxy that owns its certificates", after_help = EXAMPLES)]
pub struct Cli {
    /// Configuration file (default: $PORTCULLIS_CONFIG, else /etc/portcullis/portcullis.toml if present, else built-in defaults with the store under ./portcullis-data)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Store directory; overrides the configuration
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print listings and results as JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: listeners, admin endpoint; SIGHUP reloads, SIGTERM drains and exits
    #[command(
        after_help = "Examples:\n  portcullis run                                        # built-in defaults: https://127.0.0.1:8443\n  portcullis --config /etc/portcullis/portcullis.toml run\n  RUST_LOG=debug portcullis --config portcullis.toml run"
    )]
    Run,
    /// Create the certificate store (and its factory default certificate) if it does not exist
    #[command(
        after_help = "Examples:\n  portcullis --config /etc/portcullis/portcullis.toml init\n  portcullis --store /var/lib/portcullis/store init\n\nEvery other command except `run` refuses to work on a store that does not exist."
    )]
    Init,
    /// Show the node: version, hostname, listeners, certificates in use with fingerprints
    #[command(
        after_help = "Examples:\n  portcullis --config /etc/portcullis/portcullis.toml status\n  portcullis status --json"
    )]
    Status,
    /// Validate the configuration and the store; print every problem
    #[command(
        after_help = "Example:\n  portcullis --config /etc/portcullis/portcullis.toml check-config && systemctl reload portcullis"
    )]
    CheckConfig {
        /// Also fail (exit status 1) on warnings about served certificates: expired, expiring, chain incomplete
        #[arg(long)]
        strict: bool,
    },
    /// Manage certificates and certificate signing requests
    #[command(subcommand)]
    Cert(Box<CertCommand>),
    /// Let's Encrypt and other ACME CAs: request, renew, show renewal status
    #[command(subcommand)]
    Acme(AcmeCommand),
    /// Admin jobs by file drop ([jobs] dir): submit a job file to the running daemon
    #[command(subcommand)]
    Job(JobCommand),
    /// Several nodes serving one certificate set through etcd ([cluster]; docs/CLUSTER.md)
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  portcullis completions bash > /etc/bash_completion.d/portcullis\n  portcullis completions zsh > \"${fpath[1]}/_portcullis\"\n  portcullis completions fish > ~/.config/fish/completions/portcullis.fish"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Push this node's store into an empty [cluster] prefix: the cluster starts from it
    #[command(
        after_help = "Example (on the first node, once):\n  portcullis --config /etc/portcullis/portcullis.toml cluster init\n\nRefuses a prefix that already holds keys; the other nodes run `cluster join`."
    )]
    Init,
    /// Replace this node's store with the cluster's (materialise it from etcd)
    #[command(
        after_help = "Example (on every other node):\n  portcullis --config /etc/portcullis/portcullis.toml cluster join\n\nA running daemon keeps its copy up to date by itself; join is for a new node."
    )]
    Join,
    /// Members, each node's applied revision and lag, the renewer, last errors
    #[command(
        after_help = "Examples:\n  portcullis --config /etc/portcullis/portcullis.toml cluster status\n  portcullis cluster status --json"
    )]
    Status,
    /// Seal every private key in etcd again with the current secret_key_file (key rotation)
    #[command(
        after_help = "Example (after every node has the new key as secret_key_file and the old one in\nprevious_secret_key_files):\n  portcullis --config /etc/portcullis/portcullis.toml cluster rekey"
    )]
    Rekey,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Validate FILE and drop it into [jobs] dir/incoming atomically
    #[command(
        after_help = "A job file holds `action` and the flags of the matching command, - as _ and repeated\nflags as arrays. Actions: create-self-signed, request, import, export, set-default,\nassign, unassign, replace, delete, acme-request. Example (lab.toml):\n\n  action = \"create-self-signed\"\n  name = \"Lab\"\n  common_name = \"lab.example.com\"\n  san = [\"lab.example.com\", \"*.lab.example.com\"]\n\n  portcullis --config /etc/portcullis/portcullis.toml job submit lab.toml --wait\n\nPasswords only through password_file; paths are relative to the jobs directory."
    )]
    Submit {
        /// The job file (TOML): `action` and the command's flags
        file: PathBuf,
        /// Wait for the result and print it (exit status 1 if the job failed)
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AcmeCommand {
    /// Get a certificate from the ACME CA of [acme]: over HTTP-01 (port 80), TLS-ALPN-01 (port 443) or DNS-01 ([acme] dns_command)
    #[command(
        after_help = "Examples:\n  portcullis acme request --hostname support.example.com\n  portcullis acme request --hostname example.com --hostname www.example.com --key rsa-2048\n\nIf the daemon is running it answers the challenge; otherwise this command binds\n[acme] http_listen itself for the duration of the order. Running it again for the same\nhostnames does nothing while the certificate is valid."
    )]
    Request {
        /// Fully qualified DNS name (repeat for more; wildcards such as '*.example.com' only with --challenge dns-01)
        #[arg(long = "hostname", value_name = "FQDN", required = true)]
        hostnames: Vec<String>,
        /// Key type: ecdsa-p256 (default), ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096
        #[arg(long)]
        key: Option<String>,
        /// Friendly name (default: the first hostname)
        #[arg(long)]
        name: Option<String>,
        /// Assign it to this listener (repeat for more; default: none, so every listener without assignments serves it)
        #[arg(long = "listener", value_name = "NAME")]
        listeners: Vec<String>,
        /// Reissue an existing ACME certificate of this name even if the new hostnames drop some of its names
        #[arg(long)]
        replace: bool,
        /// How the CA validates the names: http-01 (port 80), tls-alpn-01 (the TLS listeners, no port 80) or dns-01 ([acme] dns_command; wildcards); default: http-01 when a plain-HTTP listener is configured, else tls-alpn-01
        #[arg(long)]
        challenge: Option<String>,
    },
    /// Renew ACME certificates that are due (or ID now, with --force)
    #[command(after_help = "Examples:\n  portcullis acme renew\n  portcullis acme renew support.example.com --force")]
    Renew {
        /// Id or friendly name (default: every ACME certificate that is due)
        id: Option<String>,
        /// Renew even if not due
        #[arg(long)]
        force: bool,
    },
    /// Every ACME certificate: hostnames, expiry, next renewal, last attempt and result
    #[command(after_help = "Examples:\n  portcullis acme status\n  portcullis acme status --json")]
    Status,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// List certificates (or, with --requests, pending certificate signing requests)
    #[command(
        after_help = "Examples:\n  portcullis cert list\n  portcullis cert list --requests\n  portcullis cert list --trust\n  portcullis cert list --filter example.com --limit 20\n  portcullis cert list --wide\n  portcullis cert list --json"
    )]
    List {
        /// List pending certificate signing requests instead
        #[arg(long, conflicts_with = "trust")]
        requests: bool,
        /// List the trust pool instead: imported roots and intermediates
        #[arg(long)]
        trust: bool,
        /// Every column in full (the table is cut to 120 columns otherwise)
        #[arg(long)]
        wide: bool,
        /// Only certificates whose id, friendly name, issued-to name or a SAN contains TEXT (case-insensitive)
        #[arg(long, value_name = "TEXT", conflicts_with_all = ["requests", "trust"])]
        filter: Option<String>,
        /// At most N certificates, in id order (a note on stderr says how many matched)
        #[arg(long, value_name = "N", conflicts_with_all = ["requests", "trust"])]
        limit: Option<usize>,
    },
    /// Show one certificate or request by id or friendly name
    #[command(
        after_help = "Examples:\n  portcullis cert show support-site\n  portcullis cert show support-site --pem > chain.pem"
    )]
    Show {
        /// Id or friendly name of a certificate or request
        id: String,
        /// Print PEM only: the certificate then its chain (or the CSR)
        #[arg(long, conflicts_with = "csr")]
        pem: bool,
        /// Print the CSR the certificate was issued for (kept when its answer was imported)
        #[arg(long)]
        csr: bool,
    },
    /// Create a key and a self-signed certificate
    #[command(
        after_help = "Example:\n  portcullis cert create-self-signed --name Lab --key ed25519 --common-name lab.example.com --days 90"
    )]
    CreateSelfSigned {
        #[command(flatten)]
        new: NewArgs,
        /// Validity in days
        #[arg(long, default_value_t = crate::pki::DEFAULT_DAYS)]
        days: u32,
    },
    /// Create a key and a certificate signing request; prints the CSR PEM for your CA
    #[command(
        after_help = "Example:\n  portcullis cert request --name 'Support 2027' --country US --org Example --common-name support.example.com > support.csr"
    )]
    Request {
        #[command(flatten)]
        new: NewArgs,
        /// Reuse this certificate's private key, subject and names (same-key renewal); other flags override them
        #[arg(long, value_name = "ID", conflicts_with = "key")]
        from: Option<String>,
    },
    /// Import certificates, chains and keys: PEM, DER, PKCS#7, PKCS#8, PKCS#12, legacy keys
    #[command(
        after_help = "Formats are detected by content, never by file name. Examples:\n  portcullis cert import signed.crt intermediate.crt root.crt\n  portcullis cert import server.pfx --password-file pfx.pass --name 'Support 2027'\n  portcullis cert import bundle.p7b server.key"
    )]
    Import {
        /// Certificates, chains and keys to import, in any order and format
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Friendly name of the imported identity certificate (default: from the file or its subject)
        #[arg(long)]
        name: Option<String>,
        /// File whose first line is the password of encrypted keys or PKCS#12 files
        #[arg(long, value_name = "F")]
        password_file: Option<PathBuf>,
    },
    /// Export a certificate (with chain and key on request) for another node or system
    #[command(
        after_help = "Examples:\n  portcullis cert export support-site --format p12 --include-chain --password-file pass --out support.p12\n  portcullis cert export support-site --format p7b --out support.p7b\n  portcullis cert export support-site --format pem --include-chain --out chain.pem"
    )]
    Export {
        /// Id or friendly name of the certificate
        id: String,
        /// der, pem, p7b, p8 or p12
        #[arg(long)]
        format: String,
        /// Where to write; never overwritten without --force
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Include the private key (pem); p8 and p12 always hold it
        #[arg(long)]
        include_key: bool,
        /// Include the chain: intermediates and, when known, the root
        #[arg(long)]
        include_chain: bool,
        /// File whose first line is the password that protects the exported key
        #[arg(long, value_name = "F", conflicts_with = "no_password")]
        password_file: Option<PathBuf>,
        /// Write the private key unencrypted
        #[arg(long)]
        no_password: bool,
        /// Overwrite FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Move OLD's default role and listener assignments to NEW (e.g. after a renewal)
    #[command(
        after_help = "Example:\n  portcullis cert replace support-2026 support-2027 && portcullis cert delete support-2026"
    )]
    Replace {
        /// The certificate being replaced (id or friendly name)
        old: String,
        /// The certificate that takes over its default role and assignments
        new: String,
        /// Replace even if NEW does not cover all of OLD's names
        #[arg(long)]
        force: bool,
    },
    /// Make a certificate the default (served without SNI or for unknown names)
    #[command(
        after_help = "Examples:\n  portcullis cert set-default support-site\n  portcullis cert set-default support-site --listener public"
    )]
    SetDefault {
        /// Id or friendly name of the certificate
        id: String,
        /// Set the default of this listener instead of the global one
        #[arg(long, value_name = "NAME")]
        listener: Option<String>,
        /// Make it the default even if clients would reject it (expired, not yet valid, intermediate missing)
        #[arg(long)]
        force: bool,
    },
    /// Serve a certificate on listeners (a listener with assignments serves only those)
    #[command(after_help = "Example:\n  portcullis cert assign support-site --listener public --listener internal")]
    Assign {
        /// Id or friendly name of the certificate
        id: String,
        /// Listener to serve it on (repeat for more); a listener with assignments serves only those
        #[arg(long = "listener", value_name = "NAME", required = true)]
        listeners: Vec<String>,
        /// Assign it even if clients would reject it (expired, not yet valid, intermediate missing)
        #[arg(long)]
        force: bool,
    },
    /// Stop serving a certificate on listeners
    #[command(after_help = "Example:\n  portcullis cert unassign support-2026 --listener public")]
    Unassign {
        /// Id or friendly name of the certificate
        id: String,
        /// Listener to stop serving it on (repeat for more); with none left assigned, the listener serves every certificate
        #[arg(long = "listener", value_name = "NAME", required = true)]
        listeners: Vec<String>,
    },
    /// Which certificate a listener serves for HOSTNAME, and why ("" for no SNI)
    #[command(
        after_help = "Examples:\n  portcullis cert which support.example.com\n  portcullis cert which '' --listener public"
    )]
    Which {
        /// The name a client sends as SNI ("" for a client that sends none)
        hostname: String,
        /// The listener to ask (default: the first configured)
        #[arg(long, value_name = "NAME")]
        listener: Option<String>,
    },
    /// Delete a certificate or a pending request (never the factory default)
    #[command(
        after_help = "Examples:\n  portcullis cert delete support-2026\n  portcullis cert delete support-2027   # a pending request: its key goes too"
    )]
    Delete {
        /// Id or friendly name of the certificate or request
        id: String,
        /// Delete a certificate that is served (a default, assigned, or the only one for a name)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Friendly name, unique in the store (e.g. the main DNS name, or the month and year)
    #[arg(long)]
    pub name: String,
    /// Key type: ecdsa-p256 (default), ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096
    #[arg(long)]
    pub key: Option<String>,
    /// Country: ISO 3166-1 alpha-2 code (e.g. US, DE)
    #[arg(long)]
    pub country: Option<String>,
    /// State or province, written out in full
    #[arg(long)]
    pub state: Option<String>,
    /// City (locality)
    #[arg(long)]
    pub locality: Option<String>,
    /// Organization
    #[arg(long)]
    pub org: Option<String>,
    /// Organizational unit
    #[arg(long)]
    pub org_unit: Option<String>,
    /// Common name; if it is a DNS name it also becomes the first SAN (default: the friendly name)
    #[arg(long)]
    pub common_name: Option<String>,
    /// Subject alternative name: DNS name, *.wildcard, or IP address (repeat for more)
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
}

/// A flag value that does not parse: `--key "dsa-1024": ...`.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

/// `--challenge`.
pub fn challenge(value: &str) -> Result<crate::config::Challenge, FlagError> {
    crate::config::Challenge::parse(value).map_err(|reason| FlagError {
        flag: "--challenge",
        value: value.to_owned(),
        reason,
    })
}

/// `--key`.
pub fn key_type(value: &str) -> Result<KeyType, FlagError> {
    value.parse().map_err(|reason| FlagError { flag: "--key", value: value.to_owned(), reason })
}

impl NewArgs {
    pub fn params(&self, days: u32) -> Result<CreateParams, FlagError> {
        let key_type = key_type(self.key.as_deref().unwrap_or("ecdsa-p256"))?;
        Ok(CreateParams {
            identity: IdentityRequest {
                friendly_name: self.name.clone(),
                subject: Subject {
                    country: self.country.clone(),
                    state: self.state.clone(),
                    locality: self.locality.clone(),
                    org: self.org.clone(),
                    org_unit: self.org_unit.clone(),
                    common_name: self.common_name.clone(),
                },
                sans: self.sans.clone(),
            },
            key_type,
            days,
        })
    }
}
