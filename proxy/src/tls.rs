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
    /// The files last asked for (by SIGHUP, or those in service) and their stamp at that
    /// attempt, good or bad: those files are the ones watched, so a broken pair named by a
    /// reload is tried again once it changes, and tried once per change rather than on
    /// every check.
    tried: Mutex<((PathBuf, PathBuf), Stamp)>,
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
        metrics::describe_counter!(
            "sluice_tls_reloads_total",
            "TLS certificate reloads (SIGHUP, or its files changed) by result"
        );
        metrics::describe_gauge!(
            "sluice_tls_certificate_expiry_timestamp_seconds",
            "Unix time of the served certificate chain's earliest notAfter"
        );
        // Present from the start, so that the first failure is an increase.
        for result in ["ok", "error"] {
            metrics::counter!("sluice_tls_reloads_total", "result" => result).increment(0);
        }
        Ok(ServingCert {
            current: ArcSwap::from_pointee(loaded),
            tried: Mutex::new((paths, stamp)),
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

    /// Re-reads the pair (from `paths`, or the files last asked for) and serves it if it
    /// loads; otherwise keeps the one being served and returns why. A pair already expired
    /// does not replace one still valid (an old secret restored by mistake).
    pub fn reload(&self, paths: Option<(PathBuf, PathBuf)>) -> Result<(), String> {
        let paths = paths.unwrap_or_else(|| self.tried.lock().0.clone());
        *self.tried.lock() = (paths.clone(), Stamp::of(&paths));
        let now = crate::store::unix_secs() as i64;
        let serving = self.current.load();
        let loaded = read_pair(&paths).and_then(|loaded| match (loaded.expires, serving.expires) {
            (Some(new), Some(old)) if new <= now && old > now => Err(format!(
                "{}: expired {} UTC, while the certificate in service is valid until {} UTC",
                loaded.paths.0.display(),
                crate::timefmt::datetime(new.max(0) as u64),
                crate::timefmt::datetime(old as u64)
            )),
            _ => Ok(loaded),
        });
        match loaded {
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

    /// Reloads if either watched file changed since the last attempt (cheap: two small
    /// reads). A change still under way is left to the next check: after one, the files
    /// must read the same again `settle` later (a renewal that swaps the certificate and
    /// then the key is not caught in between).
    pub fn reload_if_changed(&self, settle: std::time::Duration) {
        let (paths, tried) = self.tried.lock().clone();
        let now = Stamp::of(&paths);
        if now == tried {
            return;
        }
        if !settle.is_zero() {
            std::thread::sleep(settle);
            if Stamp::of(&paths) != now {
                return;
            }
        }
        let _ = self.reload(Some(paths));
    }
}

/// Reads and checks the pair `sluice serve` would serve (for `sluice config check`): what
/// it is, or what is wrong with it.
pub fn inspect(cert: &Path, key: &Path) -> Result<Loaded, String> {
    read_pair(&(cert.to_path_buf(), key.to_path_buf()))
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
    let key = CertifiedKey::from_der(chain, private_key, provider)
        .map_err(|e| format!("{}: {e}", which()))?;
    let (expires, subject) = validity(&key.cert);
    Ok(Loaded {
        key: Arc::new(key),
        expires,
        subject,
        loaded_at: crate::store::unix_secs(),
        paths: paths.clone(),
    })
}

/// The chain's earliest `notAfter` and the end-entity certificate's subject, from the
/// certificates x509-parser reads (rustls has accepted the chain; one it cannot read is
/// left out of these figures, not refused).
fn validity(chain: &[pingora::tls::CertificateDer<'static>]) -> (Option<i64>, String) {
    let mut earliest: Option<i64> = None;
    let mut subject = String::new();
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            continue;
        };
        let t = parsed.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
        if i == 0 {
            subject = parsed.subject().to_string();
        }
    }
    (earliest, subject)
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
        serving.reload_if_changed(std::time::Duration::ZERO);
        assert!(Arc::ptr_eq(&first, &serving.current()));
        // A new certificate with the old key (renewal caught half-written): refused.
        let other = rcgen::generate_simple_self_signed(vec!["two.test".into()]).expect("cert");
        std::fs::write(&cp, other.cert.pem()).expect("write");
        serving.reload_if_changed(std::time::Duration::ZERO);
        assert!(
            Arc::ptr_eq(&first, &serving.current()),
            "a mismatched pair was served"
        );
        let err = serving.last_error().expect("the failure is kept");
        assert!(err.contains("tls_cert"), "{err}");
        // Tried once per change, not on every check.
        serving.reload_if_changed(std::time::Duration::ZERO);
        assert!(serving.last_error().is_some());
        // The key arrives: the pair is served.
        std::fs::write(&kp, other.key_pair.serialize_pem()).expect("write");
        serving.reload_if_changed(std::time::Duration::ZERO);
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

        // A reload naming other files that do not load (SIGHUP after a config change):
        // the pair in service stays, and the named files are the ones watched from now on,
        // not the old ones.
        let other_dir = dir.path().join("next");
        std::fs::create_dir(&other_dir).expect("mkdir");
        let (ncp, nkp) = pair(&other_dir, "three.test");
        std::fs::write(&nkp, "not a key").expect("write");
        assert!(serving.reload(Some((ncp.clone(), nkp.clone()))).is_err());
        serving.reload_if_changed(std::time::Duration::ZERO);
        assert!(
            Arc::ptr_eq(&second, &serving.current()),
            "fell back to the old files"
        );
        assert!(serving.last_error().is_some(), "the failure was forgotten");
        let fixed = rcgen::generate_simple_self_signed(vec!["three.test".into()]).expect("cert");
        std::fs::write(&ncp, fixed.cert.pem()).expect("write");
        std::fs::write(&nkp, fixed.key_pair.serialize_pem()).expect("write");
        serving.reload_if_changed(std::time::Duration::ZERO);
        assert_eq!(
            serving.current().paths,
            (ncp, nkp),
            "the fixed files were not picked up"
        );
        assert!(serving.last_error().is_none());
    }

    #[test]
    fn a_renewal_still_being_written_is_left_to_the_next_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cp, kp) = pair(dir.path(), "one.test");
        let serving = ServingCert::load(&cp, &kp).expect("load");
        let first = serving.current();
        let next = rcgen::generate_simple_self_signed(vec!["two.test".into()]).expect("cert");
        std::fs::write(&cp, next.cert.pem()).expect("write");
        // The key follows 50 ms later, within the settle time: not read as a pair yet.
        let key = next.key_pair.serialize_pem();
        let writer = {
            let kp = kp.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                std::fs::write(&kp, key).expect("write");
            })
        };
        serving.reload_if_changed(std::time::Duration::from_millis(500));
        writer.join().expect("writer");
        assert!(Arc::ptr_eq(&first, &serving.current()));
        assert!(
            serving.last_error().is_none(),
            "a half-written renewal was counted as a failure"
        );
        serving.reload_if_changed(std::time::Duration::from_millis(10));
        assert_eq!(
            serving.current().key.cert[0].as_ref(),
            next.cert.der().as_ref()
        );
    }

    #[test]
    fn an_expired_pair_does_not_replace_a_valid_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cp, kp) = pair(dir.path(), "one.test");
        let serving = ServingCert::load(&cp, &kp).expect("load");
        let first = serving.current();
        let mut params =
            rcgen::CertificateParams::new(vec!["one.test".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let old = params.self_signed(&key).expect("cert");
        std::fs::write(&cp, old.pem()).expect("write");
        std::fs::write(&kp, key.serialize_pem()).expect("write");
        let err = serving
            .reload(None)
            .expect_err("an expired pair replaced a valid one");
        assert!(err.contains("expired 2021-01-01"), "{err}");
        assert!(Arc::ptr_eq(&first, &serving.current()));
        // At start there is nothing better: it is served (and logged as expired).
        let alone = ServingCert::load(&cp, &kp).expect("an expired pair alone loads");
        assert_eq!(alone.current().expires, Some(1_609_459_200));
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
