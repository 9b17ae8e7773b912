//! `cvpn-pki`: the command line of the cvpn certificate authority.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cvpn_pki::issue::{DEFAULT_CA_DAYS, DEFAULT_CLIENT_DAYS, DEFAULT_SERVER_DAYS};
use cvpn_pki::store::{CrlStatus, Request};
use cvpn_pki::{CertState, Entry, KeyType, Store};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Warn when the CRL expires sooner than this: an expired CRL makes every
/// handshake fail.
const CRL_WARN_DAYS: i64 = 30;

#[derive(Parser)]
#[command(
    name = "cvpn-pki",
    version,
    about = "Certificate authority for cvpn endpoints"
)]
struct Cli {
    /// The CA directory
    #[arg(long, global = true, default_value = "pki")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA (certificate, key, empty CRL) in a new or empty directory
    Init {
        /// The CA certificate's common name
        #[arg(long, default_value = "cvpn CA")]
        cn: String,
        /// Validity of the CA certificate in days
        #[arg(long, default_value_t = DEFAULT_CA_DAYS)]
        days: u32,
        /// ecdsa-p256, ed25519 or rsa-2048
        #[arg(long, default_value = "ecdsa-p256")]
        key_type: KeyType,
    },
    /// Issue a server or client certificate and key
    Issue {
        #[command(subcommand)]
        what: IssueKind,
    },
    /// Revoke NAME's certificate and publish a new CRL
    Revoke {
        /// The certificate's name
        name: String,
    },
    /// Re-sign the CRL
    Crl {
        /// Validity in days (default: as last chosen, initially 180)
        #[arg(long)]
        days: Option<u32>,
    },
    /// List issued certificates and the CRL's next update
    List {
        /// One JSON document instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate
    Show {
        /// The certificate's name
        name: String,
    },
}

#[derive(Subcommand)]
enum IssueKind {
    /// serverAuth; NAME is a DNS SAN
    Server {
        /// The server's name: CN and first DNS SAN
        name: String,
        /// Another DNS SAN (repeatable)
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// An IP SAN (repeatable)
        #[arg(long = "ip")]
        ip: Vec<IpAddr>,
        /// Validity in days
        #[arg(long, default_value_t = DEFAULT_SERVER_DAYS)]
        days: u32,
        /// Default: the CA's key type
        #[arg(long)]
        key_type: Option<KeyType>,
    },
    /// clientAuth; CN = NAME, one Subject OU per group
    Client {
        /// The client's name: the certificate's CN
        name: String,
        /// A group, as a Subject OU (repeatable)
        #[arg(long = "group")]
        group: Vec<String>,
        /// Issue NAME-1 .. NAME-COUNT in one go (for load tests)
        #[arg(long)]
        count: Option<u32>,
        /// Validity in days
        #[arg(long, default_value_t = DEFAULT_CLIENT_DAYS)]
        days: u32,
        /// Default: the CA's key type
        #[arg(long)]
        key_type: Option<KeyType>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvpn-pki: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let store = Store::new(&cli.dir);
    match cli.command {
        Command::Init { cn, days, key_type } => {
            store.init(&cn, days, key_type)?;
            println!(
                "created CA {cn:?} ({key_type}) in {}: ca.crt, ca.key, crl.pem",
                cli.dir.display()
            );
        }
        Command::Issue { what } => {
            let (name, entry) = match what {
                IssueKind::Server {
                    name,
                    dns,
                    ip,
                    days,
                    key_type,
                } => {
                    let req = Request::Server {
                        dns: &dns,
                        ips: &ip,
                    };
                    let e = store.issue(&name, req, days, key_type)?;
                    (name, e)
                }
                IssueKind::Client {
                    name,
                    group,
                    count: Some(count),
                    days,
                    key_type,
                } => {
                    let names: Vec<String> = (1..=count).map(|i| format!("{name}-{i}")).collect();
                    let done = store.issue_many(
                        &names,
                        Request::Client { groups: &group },
                        days,
                        key_type,
                    )?;
                    println!(
                        "issued {} client certificates {name}-1 .. {name}-{count}",
                        done.len()
                    );
                    return Ok(());
                }
                IssueKind::Client {
                    name,
                    group,
                    count: None,
                    days,
                    key_type,
                } => {
                    let req = Request::Client { groups: &group };
                    let e = store.issue(&name, req, days, key_type)?;
                    (name, e)
                }
            };
            println!(
                "issued {name} serial {} until {}: {} {}",
                entry.serial,
                date(entry.not_after),
                store.cert_path(&name).display(),
                store.key_path(&name).display()
            );
        }
        Command::Revoke { name } => {
            let e = store.revoke(&name)?;
            println!(
                "revoked {name} (serial {}); {} updated",
                e.serial,
                store.crl_path().display()
            );
        }
        Command::Crl { days } => {
            let status = store.resign_crl(days)?;
            println!("re-signed {}", store.crl_path().display());
            print_crl(&status);
        }
        Command::List { json } => list(&store, json)?,
        Command::Show { name } => show(&store, &name)?,
    }
    Ok(())
}

fn date(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn days_left(status: &CrlStatus) -> Option<i64> {
    status
        .next_update
        .map(|n| (n - OffsetDateTime::now_utc()).whole_days())
}

fn print_crl(status: &CrlStatus) {
    match (status.next_update, days_left(status)) {
        (Some(next), Some(left)) => {
            println!("CRL next update: {} ({left} days left)", date(next));
            if left < CRL_WARN_DAYS {
                eprintln!(
                    "warning: the CRL expires in {left} days; gateways refuse every client once it has expired: run `cvpn-pki crl`"
                );
            }
        }
        _ => println!("CRL next update: none"),
    }
}

fn state(e: &Entry) -> &'static str {
    match e.state {
        CertState::Revoked => "revoked",
        CertState::Valid if e.is_expired(OffsetDateTime::now_utc()) => "expired",
        CertState::Valid => "valid",
    }
}

fn list(store: &Store, json: bool) -> Result<()> {
    let index = store.index()?;
    let status = store.crl_status()?;
    if json {
        let entries: Vec<_> = index
            .entries
            .iter()
            .map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["status"] = state(e).into();
                v
            })
            .collect();
        let out = serde_json::json!({
            "certificates": entries,
            "crl_next_update": status.next_update.map(date),
            "crl_days_left": days_left(&status),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        if days_left(&status).is_some_and(|d| d < CRL_WARN_DAYS) {
            eprintln!(
                "warning: the CRL expires in fewer than {CRL_WARN_DAYS} days: run `cvpn-pki crl`"
            );
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<7} {:<8} {:<40} {:<20} GROUPS",
        "NAME", "KIND", "STATE", "SERIAL", "NOT AFTER"
    );
    for e in &index.entries {
        let kind = serde_json::to_value(e.kind)?;
        println!(
            "{:<24} {:<7} {:<8} {:<40} {:<20} {}",
            e.name,
            kind.as_str().unwrap_or("?"),
            state(e),
            e.serial,
            date(e.not_after),
            e.groups.join(",")
        );
    }
    print_crl(&status);
    Ok(())
}

fn show(store: &Store, name: &str) -> Result<()> {
    let (entry, info) = store
        .show(name)
        .with_context(|| format!("showing {name}"))?;
    println!("name:       {}", entry.name);
    println!("subject:    {}", info.subject);
    println!("issuer:     {}", info.issuer);
    println!("groups:     {}", info.groups.join(", "));
    let mut sans: Vec<String> = info.dns_names.iter().map(|d| format!("DNS:{d}")).collect();
    sans.extend(info.ip_addresses.iter().map(|i| format!("IP:{i}")));
    println!("SANs:       {}", sans.join(", "));
    println!("usage:      {}", info.extended_key_usages.join(", "));
    println!("not before: {}", date(info.not_before));
    println!("not after:  {}", date(info.not_after));
    println!("serial:     {}", info.serial);
    let revoked = entry
        .revoked_at
        .map(|t| format!(" at {}", date(t)))
        .unwrap_or_default();
    println!("state:      {}{revoked}", state(&entry));
    Ok(())
}
