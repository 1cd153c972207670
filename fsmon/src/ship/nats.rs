//! Connecting to NATS and checking the stream: shared by the shipper and
//! the `fleet` commands.
use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use async_nats::{ConnectOptions, ServerAddr, jetstream, rustls};

use super::config::{NatsAuth, ShipConfig, subject_token};
use crate::{safefs, user::TargetUser};

/// The subject of one host's group: `<prefix>.<host>.<group>`.
pub fn subject(cfg: &ShipConfig, host: &str, group: &str) -> String {
    format!(
        "{}.{}.{}",
        cfg.subject_prefix,
        subject_token(host),
        subject_token(group)
    )
}

/// A secret file the daemon (root) reads for its user: it must belong to
/// that user or root, so the daemon cannot be made to read another user's
/// key.
fn read_secret(path: &Path, user: &TargetUser) -> Result<String, String> {
    let file = safefs::open_read(path).map_err(|e| e.to_string())?;
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.uid() != 0 && meta.uid() != user.uid {
        return Err(format!(
            "{}: belongs to uid {}, not to {} or root",
            path.display(),
            meta.uid(),
            user.name
        ));
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 1 << 20), &mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

/// The TLS configuration, from files read here (as [`read_secret`] does:
/// the user's or root's only), never by path in the client library, so
/// the daemon cannot be pointed at another user's key through a symlink
/// swapped in after a check.
fn tls_config(cfg: &ShipConfig, user: &TargetUser) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = read_secret(path, user)?;
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.tls_ca {
        Some(ca) => {
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match &cfg.tls_client {
        Some((cert, key)) => {
            let chain = certs(cert)?;
            let pem = read_secret(key, user)?;
            let key_der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{}: {e}", cert.display()))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The server addresses, parsed.
pub fn server_addrs(cfg: &ShipConfig) -> Result<Vec<ServerAddr>, String> {
    cfg.urls
        .iter()
        .map(|u| {
            u.parse::<ServerAddr>()
                .map_err(|e| format!("'{u}' is not a NATS URL: {e}"))
        })
        .collect()
}

/// Connection options from the config: name, TLS, credentials.
pub async fn connect_options(
    cfg: &ShipConfig,
    user: &TargetUser,
) -> Result<ConnectOptions, String> {
    let mut o = ConnectOptions::new()
        .name(format!("fsmon@{}", cfg.host))
        .connection_timeout(Duration::from_secs(5));
    o = match &cfg.auth {
        NatsAuth::None => o,
        NatsAuth::UserPassword(u, p) => o.user_and_password(u.clone(), p.clone()),
        NatsAuth::Token(t) => o.token(t.clone()),
        NatsAuth::NkeyFile(path) => {
            let seed = read_secret(path, user)?;
            let seed = seed.trim();
            if !seed.starts_with('S') {
                return Err(format!("{}: not an nkey seed", path.display()));
            }
            o.nkey(seed.to_string())
        }
        // Read here, on the calling thread (the shipper's has the user's
        // credentials), not by path in the client library, which reads on
        // a blocking-pool thread that would still be root's.
        NatsAuth::CredsFile(path) => o
            .credentials(&read_secret(path, user)?)
            .map_err(|e| format!("{}: {e}", path.display()))?,
    };
    if cfg.tls_ca.is_some() || cfg.tls_client.is_some() {
        o = o
            .tls_client_config(tls_config(cfg, user)?)
            .require_tls(true);
    }
    if cfg.tls_required {
        o = o.require_tls(true);
    }
    Ok(o)
}

/// Does the NATS subject pattern `pattern` (with `*` and `>`) match
/// `subject`?
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why the stream cannot be used.
#[derive(Debug)]
pub enum StreamProblem {
    /// The configuration is wrong (missing stream, wrong subjects): retrying
    /// will not help until someone changes it.
    Config(String),
    /// The server did not answer (yet).
    Unavailable(String),
}

/// Makes sure the stream exists and captures `sample_subject`: creates it
/// (subjects `<prefix>.>`) when missing and allowed.
pub async fn ensure_stream(
    js: &jetstream::Context,
    cfg: &ShipConfig,
    sample_subject: &str,
) -> Result<(), StreamProblem> {
    use jetstream::context::GetStreamErrorKind;
    match js.get_stream(&cfg.stream).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| StreamProblem::Unavailable(e.to_string()))?;
            let subjects = &info.config.subjects;
            if subjects.iter().any(|p| subject_matches(p, sample_subject)) {
                Ok(())
            } else {
                Err(StreamProblem::Config(format!(
                    "stream {} captures {:?}, not our subjects {}.>: fix its subjects or set another stream",
                    cfg.stream, subjects, cfg.subject_prefix
                )))
            }
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            if !cfg.create_stream {
                return Err(StreamProblem::Config(format!(
                    "stream {} does not exist (create it with subjects {}.>, or allow create_stream)",
                    cfg.stream, cfg.subject_prefix
                )));
            }
            let config = jetstream::stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![format!("{}.>", cfg.subject_prefix)],
                duplicate_window: cfg.duplicate_window,
                num_replicas: cfg.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => {
                    log::info!(
                        "ship: created stream {} (subjects {}.>, {} replica(s), duplicate window {} s)",
                        cfg.stream,
                        cfg.subject_prefix,
                        cfg.replicas,
                        cfg.duplicate_window.as_secs()
                    );
                    Ok(())
                }
                Err(e) => {
                    let text = e.to_string();
                    // Overlapping subjects, too many replicas for the cluster...
                    if text.contains("overlap") || text.contains("replicas") {
                        Err(StreamProblem::Config(format!(
                            "cannot create stream {}: {text}",
                            cfg.stream
                        )))
                    } else {
                        Err(StreamProblem::Unavailable(text))
                    }
                }
            }
        }
        Err(e) => Err(StreamProblem::Unavailable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("fsmon.>", "fsmon.h.g"));
        assert!(subject_matches("fsmon.*.g", "fsmon.h.g"));
        assert!(subject_matches("fsmon.h.g", "fsmon.h.g"));
        assert!(!subject_matches("fsmon.*", "fsmon.h.g"));
        assert!(!subject_matches("other.>", "fsmon.h.g"));
        assert!(!subject_matches("fsmon.h.g.x", "fsmon.h.g"));
    }
}
