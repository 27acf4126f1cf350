//! What [`crate::Config::validate`] asks of the TLS keys: consistent options,
//! and files that load (so `--check` and a config reload fail on a missing,
//! unreadable or mismatched certificate or key, naming the file).

use crate::backend::BackendUrl;
use crate::config::Config;

use super::{BackendTls, ServerTls};

/// Checks `[server.tls]` and the `tls_*` / `http2` keys of every backend, and
/// loads their files. An expired certificate is not an error here: it is
/// reported at start and in `/-/status` ([`super::CertInfo::problem`]).
pub fn validate(cfg: &Config) -> Result<(), String> {
    if let Some(tls) = &cfg.server.tls {
        if let Some(redirect) = tls.redirect_http_listen {
            let taken = [Some(cfg.server.listen), cfg.server.admin_listen];
            if redirect.port() != 0 && taken.contains(&Some(redirect)) {
                return Err(format!(
                    "server.tls.redirect_http_listen {redirect} is already used by another listener"
                ));
            }
        }
        ServerTls::load(tls).map_err(|e| format!("[server.tls]: {e}"))?;
    }
    for (i, b) in cfg.backends.iter().enumerate() {
        let url = BackendUrl::parse(&b.url).map_err(|e| format!("backends[{i}].url: {e}"))?;
        if !url.is_tls() {
            let set = [
                ("tls_ca_file", b.tls_ca_file.is_some()),
                ("tls_cert_file", b.tls_cert_file.is_some()),
                ("tls_key_file", b.tls_key_file.is_some()),
                ("tls_server_name", b.tls_server_name.is_some()),
                ("http2", b.http2),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(format!(
                    "backends[{i}].{key} needs an https:// url (url is {:?})",
                    b.url
                ));
            }
            continue;
        }
        if b.tls_cert_file.is_some() != b.tls_key_file.is_some() {
            return Err(format!(
                "backends[{i}]: set tls_cert_file and tls_key_file together (a client certificate needs its key)"
            ));
        }
        BackendTls::new(b, &url).map_err(|e| format!("backends[{i}] ({}): {e}", b.name))?;
    }
    Ok(())
}
