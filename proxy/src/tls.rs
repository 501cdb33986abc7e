//! The certificate sluice serves over TLS (`server.tls_cert` / `tls_key`).
//!
//! Loaded and checked at start (a bad pair stops sluice with a message), then re-read on
//! SIGHUP and when either file changes on disk (certbot's renewal, a Kubernetes secret's
//! symlink swap), so a renewed certificate is served without a restart. A new pair is
//! swapped in only once it loads and its key matches its certificate: a renewal caught
//! half-written keeps the previous pair serving, and is tried again when the files change
//! once more. Handshakes pick the pair up through [`ServingCert`], rustls' certificate
//! resolver; connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

/// The pair being served, and what is known of it.
pub struct Loaded {
    /// What rustls presents.
    pub key: Arc<CertifiedKey>,
    /// The earliest `notAfter` of the chain (unix seconds): when clients stop accepting it.
    pub expires: Option<i64>,
    /// The end-entity certificate's subject, for the log and the dashboard.
    pub subject: String,
    /// When it was loaded (unix seconds).
    pub loaded_at: u64,
    /// The files it came from.
    pub paths: (PathBuf, PathBuf),
}

/// What the files held when last read: a change to either means a reload. Their contents
/// (a few KB, hashed), not their modification times: a renewal that rewrites a file twice
/// within the clock's tick, to the same length, is still seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(u64);

impl Stamp {
    /// A hash of both files' contents (following symlinks); a missing file hashes as such.
    fn of(paths: &(PathBuf, PathBuf)) -> Stamp {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in [&paths.0, &paths.1] {
            std::fs::read(p).ok().hash(&mut h);
        }
        Stamp(h.finish())
    }
}

/// The served certificate: rustls asks it for the pair at each handshake.
pub struct ServingCert {
    current: ArcSwap<Loaded>,
    /// The files' stamp at the last attempt (good or bad), so a broken renewal is tried
    /// once per change rather than on every check.
    tried: Mutex<Stamp>,
    /// Why the last attempt failed, until one succeeds.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("subject", &self.current.load().subject)
            .finish()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

impl ServingCert {
    /// Loads the pair, or says what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<ServingCert> {
        let paths = (cert.to_path_buf(), key.to_path_buf());
        let stamp = Stamp::of(&paths);
        let loaded = read_pair(&paths).map_err(|e| anyhow::anyhow!(e))?;
        report(&loaded, "TLS certificate loaded");
        Ok(ServingCert {
            current: ArcSwap::from_pointee(loaded),
            tried: Mutex::new(stamp),
            last_error: Mutex::new(None),
        })
    }

    /// The pair being served.
    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Why the last reload failed, if the one before the next success did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    /// Re-reads the pair (from `paths`, or the files it was loaded from) and serves it if it
    /// loads; otherwise keeps the one being served and returns why.
    pub fn reload(&self, paths: Option<(PathBuf, PathBuf)>) -> Result<(), String> {
        let paths = paths.unwrap_or_else(|| self.current.load().paths.clone());
        *self.tried.lock() = Stamp::of(&paths);
        match read_pair(&paths) {
            Ok(loaded) => {
                metrics::counter!("sluice_tls_reloads_total", "result" => "ok").increment(1);
                report(&loaded, "TLS certificate reloaded");
                self.current.store(Arc::new(loaded));
                *self.last_error.lock() = None;
                Ok(())
            }
            Err(e) => {
                metrics::counter!("sluice_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "TLS certificate reload failed; still serving the previous certificate");
                *self.last_error.lock() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Reloads if either file changed since the last attempt (cheap: two small reads).
    pub fn reload_if_changed(&self) {
        let paths = self.current.load().paths.clone();
        if Stamp::of(&paths) != *self.tried.lock() {
            let _ = self.reload(Some(paths));
        }
    }
}

/// Logs a pair just put in service and publishes its expiry.
fn report(loaded: &Loaded, what: &str) {
    if let Some(t) = loaded.expires {
        metrics::gauge!("sluice_tls_certificate_expiry_timestamp_seconds").set(t as f64);
    }
    let now = crate::store::unix_secs() as i64;
    match loaded.expires {
        Some(t) if t <= now => tracing::error!(subject = %loaded.subject, expires = t,
            cert = %loaded.paths.0.display(), "{what}, but it has EXPIRED: clients will refuse it"),
        _ => tracing::info!(subject = %loaded.subject, expires = ?loaded.expires,
            cert = %loaded.paths.0.display(), "{what}"),
    }
}

/// Reads and checks a certificate chain and its private key.
fn read_pair(paths: &(PathBuf, PathBuf)) -> Result<Loaded, String> {
    let (cert, key) = (paths.0.display().to_string(), paths.1.display().to_string());
    let which = || format!("tls_cert {cert:?} / tls_key {key:?}");
    pingora::tls::install_default_crypto_provider();
    let (chain, private_key) = pingora::tls::load_certs_and_key_files(&cert, &key)
        .map_err(|e| format!("{}: {e}", which()))?
        .ok_or_else(|| {
            format!(
                "{}: no PEM certificate in the first, or no PEM private key (PKCS#8, PKCS#1, \
                 SEC1) in the second",
                which()
            )
        })?;
    let chain: Vec<_> = chain.into_iter().map(|c| c.into_owned()).collect();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| format!("{}: no TLS crypto provider installed", which()))?;
    let (expires, subject) = validity(&chain).map_err(|e| format!("{}: {e}", which()))?;
    let key = CertifiedKey::from_der(chain, private_key, provider)
        .map_err(|e| format!("{}: {e}", which()))?;
    Ok(Loaded {
        key: Arc::new(key),
        expires,
        subject,
        loaded_at: crate::store::unix_secs(),
        paths: paths.clone(),
    })
}

/// The chain's earliest `notAfter` and the end-entity certificate's subject; an error for
/// a certificate that is not X.509 DER.
fn validity(
    chain: &[pingora::tls::CertificateDer<'static>],
) -> Result<(Option<i64>, String), String> {
    let mut earliest: Option<i64> = None;
    let mut subject = String::new();
    for (i, der) in chain.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))?;
        let t = parsed.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
        if i == 0 {
            subject = parsed.subject().to_string();
        }
    }
    Ok((earliest, subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        let (cp, kp) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cp, c.cert.pem()).expect("write cert");
        std::fs::write(&kp, c.key_pair.serialize_pem()).expect("write key");
        (cp, kp)
    }

    #[test]
    fn a_renewed_pair_is_served_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cp, kp) = pair(dir.path(), "one.test");
        let serving = ServingCert::load(&cp, &kp).expect("load");
        let first = serving.current();
        assert!(first.expires.is_some_and(|t| t > 0));
        assert!(first.subject.contains("rcgen"), "{}", first.subject);
        // Unchanged files: nothing happens.
        serving.reload_if_changed();
        assert!(Arc::ptr_eq(&first, &serving.current()));
        // A new certificate with the old key (renewal caught half-written): refused.
        let other = rcgen::generate_simple_self_signed(vec!["two.test".into()]).expect("cert");
        std::fs::write(&cp, other.cert.pem()).expect("write");
        serving.reload_if_changed();
        assert!(
            Arc::ptr_eq(&first, &serving.current()),
            "a mismatched pair was served"
        );
        let err = serving.last_error().expect("the failure is kept");
        assert!(err.contains("tls_cert"), "{err}");
        // Tried once per change, not on every check.
        serving.reload_if_changed();
        assert!(serving.last_error().is_some());
        // The key arrives: the pair is served.
        std::fs::write(&kp, other.key_pair.serialize_pem()).expect("write");
        serving.reload_if_changed();
        let second = serving.current();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the renewed pair was not picked up"
        );
        assert_eq!(
            second.key.cert[0].as_ref(),
            other.cert.der().as_ref(),
            "the new certificate is the one presented"
        );
        assert!(serving.last_error().is_none());
    }

    #[test]
    fn not_pem_is_refused_with_both_paths_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cp, kp) = pair(dir.path(), "one.test");
        std::fs::write(&cp, "not a certificate").expect("write");
        let err = ServingCert::load(&cp, &kp)
            .expect_err("garbage loads")
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        assert!(err.contains("cert.pem") && err.contains("key.pem"), "{err}");
    }
}
