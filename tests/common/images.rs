//! Builds OCI images without Docker: an OCI image layout directory (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) with uncompressed tar layers written by hand, config
//! JSON, image manifests and multi-arch indexes; pushes and pulls them with `skopeo`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{run_ok, run_with_timeout, sha256_digest, XorShift};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest media type, for `Accept` headers.
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Generous: the large image moves 100+ MB several times on a 2-core machine.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(300);

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    fn to_json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// One ustar header block for a regular file (or directory when `dir`).
fn tar_header(name: &str, size: u64, dir: bool) -> [u8; 512] {
    assert!(name.len() < 100, "tar name too long: {name}");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, if dir { 0o755 } else { 0o644 });
    octal(&mut h, 108, 8, 0); // uid
    octal(&mut h, 116, 8, 0); // gid
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_700_000_000); // fixed mtime: reproducible layers
    h[156] = if dir { b'5' } else { b'0' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    // Checksum: sum of the header with the checksum field read as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

fn pad512(len: u64) -> usize {
    ((512 - (len % 512)) % 512) as usize
}

/// An uncompressed tar archive holding `files` (name, contents); parent directories of
/// nested names get their own entries.
pub fn tar_bytes(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs_done: Vec<String> = Vec::new();
    for (name, data) in files {
        let mut prefix = String::new();
        for part in name
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            prefix.push_str(part);
            prefix.push('/');
            if !dirs_done.contains(&prefix) {
                out.extend_from_slice(&tar_header(&prefix, 0, true));
                dirs_done.push(prefix.clone());
            }
        }
        out.extend_from_slice(&tar_header(name, data.len() as u64, false));
        out.extend_from_slice(data);
        out.resize(out.len() + pad512(data.len() as u64), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// An OCI image layout directory being built.
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<(String, Desc)>,
}

impl Layout {
    pub fn create(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs").join("sha256")).expect("mkdir layout");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        let l = Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        };
        l.write_index();
        l
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// Stores `bytes` as a blob; returns its descriptor with `media_type`.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let digest = sha256_digest(bytes);
        fs::write(self.blob_path(&digest), bytes).expect("write blob");
        Desc {
            media_type: media_type.to_string(),
            digest,
            size: bytes.len() as u64,
        }
    }

    /// Reads a blob back.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).expect("read layout blob")
    }

    /// A tar layer holding `files`.
    pub fn tar_layer(&self, files: &[(String, Vec<u8>)]) -> Desc {
        self.put_blob(OCI_LAYER_TAR, &tar_bytes(files))
    }

    /// A tar layer with one file `name` of `size` incompressible bytes, streamed to disk
    /// (never held in memory) and hashed on the way.
    pub fn large_layer(&self, name: &str, size: u64, seed: u64) -> Desc {
        let tmp = self.dir.join("blobs").join("sha256").join(".large.tmp");
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).expect("create tmp"));
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut emit = |w: &mut BufWriter<File>, b: &[u8]| {
            hasher.update(b);
            w.write_all(b).expect("write layer");
            total += b.len() as u64;
        };
        emit(&mut w, &tar_header(name, size, false));
        let mut rng = XorShift::new(seed);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            emit(&mut w, &buf[..n]);
            left -= n as u64;
        }
        emit(&mut w, &vec![0u8; pad512(size) + 1024]);
        w.flush().expect("flush layer");
        drop(w);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        fs::rename(&tmp, self.blob_path(&digest)).expect("rename layer");
        Desc {
            media_type: OCI_LAYER_TAR.to_string(),
            digest,
            size: total,
        }
    }

    /// Config + manifest for `layers` (uncompressed, so diff_ids are the layer digests).
    pub fn image(&self, arch: &str, layers: &[Desc], label: &str) -> Desc {
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"sluice.test": label},
            },
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({"created": "2024-01-01T00:00:00Z", "created_by": "sluice test harness"})).collect::<Vec<_>>(),
        });
        let config = self.put_blob(OCI_CONFIG, &serde_json::to_vec(&config).expect("json"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": layers.iter().map(Desc::to_json).collect::<Vec<_>>(),
            "annotations": {"org.opencontainers.image.title": label},
        });
        // Pretty-printed on purpose: a proxy that re-serialises would change the digest.
        self.put_blob(
            OCI_MANIFEST,
            &serde_json::to_vec_pretty(&manifest).expect("json"),
        )
    }

    /// An OCI index over `(manifest, architecture)` pairs, all `linux`.
    pub fn index(&self, manifests: &[(Desc, &str)]) -> Desc {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests.iter().map(|(d, arch)| {
                let mut v = d.to_json();
                v["platform"] = json!({"architecture": arch, "os": "linux"});
                v
            }).collect::<Vec<_>>(),
        });
        self.put_blob(OCI_INDEX, &serde_json::to_vec_pretty(&index).expect("json"))
    }

    /// Points `tag` at `desc` in `index.json`.
    pub fn tag(&mut self, tag: &str, desc: &Desc) {
        self.refs.retain(|(t, _)| t != tag);
        self.refs.push((tag.to_string(), desc.clone()));
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({
            "schemaVersion": 2,
            "manifests": self.refs.iter().map(|(tag, d)| {
                let mut v = d.to_json();
                v["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
                v
            }).collect::<Vec<_>>(),
        });
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("write index.json");
    }
}

/// Deterministic small files for a layer: content depends on `seed`.
pub fn sample_files(seed: u64, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = XorShift::new(seed);
    (0..n)
        .map(|i| {
            let len = 100 + (rng.next_u64() % 20_000) as usize;
            let mut data = vec![0u8; len];
            rng.fill(&mut data);
            (format!("opt/sluice-test/{seed}/file-{i}.bin"), data)
        })
        .collect()
}

/// A layout with one single-arch image (two layers) tagged `tag`; returns the manifest.
pub fn build_single_arch(dir: &Path, tag: &str, seed: u64) -> (Layout, Desc) {
    let mut l = Layout::create(dir);
    let l1 = l.tar_layer(&sample_files(seed, 3));
    let l2 = l.tar_layer(&[(
        "etc/sluice-release".to_string(),
        format!("seed={seed}\n").into_bytes(),
    )]);
    let m = l.image("amd64", &[l1, l2], &format!("single-{seed}"));
    l.tag(tag, &m);
    (l, m)
}

/// A layout with an OCI index (linux/amd64 + linux/arm64) tagged `tag`; returns the index.
pub fn build_multi_arch(dir: &Path, tag: &str, seed: u64) -> (Layout, Desc) {
    let mut l = Layout::create(dir);
    let shared = l.tar_layer(&sample_files(seed, 2));
    let amd = l.tar_layer(&sample_files(seed + 1000, 2));
    let arm = l.tar_layer(&sample_files(seed + 2000, 2));
    let m_amd = l.image(
        "amd64",
        &[shared.clone(), amd],
        &format!("multi-{seed}-amd64"),
    );
    let m_arm = l.image("arm64", &[shared, arm], &format!("multi-{seed}-arm64"));
    let idx = l.index(&[(m_amd, "amd64"), (m_arm, "arm64")]);
    l.tag(tag, &idx);
    (l, idx)
}

/// A layout with an image whose one layer holds `size` bytes of incompressible data.
pub fn build_large(dir: &Path, tag: &str, size: u64, seed: u64) -> (Layout, Desc) {
    let mut l = Layout::create(dir);
    let big = l.large_layer("opt/sluice-test/large.bin", size, seed);
    let small = l.tar_layer(&sample_files(seed, 1));
    let m = l.image("amd64", &[big, small], &format!("large-{seed}"));
    l.tag(tag, &m);
    (l, m)
}

/// `skopeo` with no signature policy file needed and no proxy in its environment.
pub fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

/// Manifest format to push as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFormat {
    /// Keep the layout's OCI manifests and layers byte for byte (`--preserve-digests`).
    Oci,
    /// Convert to Docker schema 2 (`--format v2s2`); layers get gzip-compressed.
    V2s2,
}

/// Pushes `layout:tag` to `registry_host/repo:dest_tag` over plain HTTP.
pub fn push(layout: &Path, tag: &str, registry_host: &str, repo_tag: &str, format: PushFormat) {
    let mut c = skopeo();
    c.args([
        "copy",
        "--retry-times",
        "0",
        "--dest-tls-verify=false",
        "--all",
    ]);
    match format {
        PushFormat::Oci => {
            c.args(["--preserve-digests"]);
        }
        PushFormat::V2s2 => {
            c.args(["--format", "v2s2"]);
        }
    }
    c.arg(format!("oci:{}:{tag}", layout.display()));
    c.arg(format!("docker://{registry_host}/{repo_tag}"));
    run_ok(&mut c, SKOPEO_TIMEOUT);
}

/// `skopeo copy --all` from a plain-HTTP registry (`host/repo:tag`) to `dest` (a transport
/// reference such as `oci:DIR:tag` or `dir:DIR`); returns the output whatever the status.
pub fn pull_raw(src_host_repo_tag: &str, dest: &str) -> Output {
    let mut c = skopeo();
    c.args([
        "copy",
        "--retry-times",
        "0",
        "--all",
        "--src-tls-verify=false",
    ]);
    c.arg(format!("docker://{src_host_repo_tag}"));
    c.arg(dest);
    run_with_timeout(&mut c, SKOPEO_TIMEOUT)
}

/// Pulls into an OCI layout `dir` keeping every manifest and layer byte for byte (no
/// recompression, no manifest rewriting), so the result can be compared with the source.
pub fn pull_oci_exact(src_host_repo_tag: &str, dir: &Path, tag: &str) -> Output {
    let mut c = skopeo();
    c.args([
        "copy",
        "--retry-times",
        "0",
        "--all",
        "--preserve-digests",
        "--dest-oci-accept-uncompressed-layers",
        "--src-tls-verify=false",
    ]);
    c.arg(format!("docker://{src_host_repo_tag}"));
    c.arg(format!("oci:{}:{tag}", dir.display()));
    let out = run_with_timeout(&mut c, SKOPEO_TIMEOUT);
    assert!(
        out.status.success(),
        "skopeo copy docker://{src_host_repo_tag} oci:{}:{tag} failed ({}):\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Like [`pull_raw`], panicking unless it succeeded.
pub fn pull(src_host_repo_tag: &str, dest: &str) -> Output {
    let out = pull_raw(src_host_repo_tag, dest);
    assert!(
        out.status.success(),
        "skopeo copy docker://{src_host_repo_tag} {dest} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file below `dir` as (relative path, bytes), for comparing two pulled trees.
pub fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    super::files_under(dir)
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            let bytes = fs::read(&p).expect("read pulled file");
            (rel, bytes)
        })
        .collect()
}
