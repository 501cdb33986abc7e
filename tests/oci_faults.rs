//! OCI pull-through behaviour under upstream faults, proven against the in-process
//! simulator (`common::sim`): single flight, digest verification, truncated bodies, bearer
//! tokens, cross-host redirects, ranges, byte-exact manifests, errors, stale-if-error.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::images::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use common::sim::{Fault, Gate, Sim, SimAuth, SimConfig};
use common::{
    blob_files, blob_path, eventually, header, http_client, json_body, random_bytes, sha256_digest,
    sluice_cache_header, tmp_files, within, Sluice,
};

/// sluice with the simulator as its default OCI upstream; `extra` adds upstream keys.
fn sluice_for(sim: &Sim, extra: &str) -> Sluice {
    Sluice::start(&sim.upstream_toml(&format!("tag_ttl = \"1s\"\n{extra}")))
}

/// The simulator demanding the bearer `token`, which its `/token` gives only for the basic
/// credentials `basic`; blob GETs redirected to its CDN when `redirect_blobs`.
async fn sim_with_credentials(token: &str, basic: (&str, &str), redirect_blobs: bool) -> Sim {
    Sim::start_with(SimConfig {
        auth: Some(SimAuth {
            token: token.into(),
            basic: Some((basic.0.into(), basic.1.into())),
        }),
        redirect_blobs,
    })
    .await
}

/// What a client got: status, cache header, and the body or the error that cut it.
struct Fetched {
    status: u16,
    cache: String,
    headers: reqwest::header::HeaderMap,
    body: Result<Vec<u8>, String>,
}

/// GETs `url` (optionally with extra headers) and reads the whole body, bounded in time: a
/// response that neither completes nor aborts within 30 s fails the test.
async fn get(c: &reqwest::Client, url: &str, extra: &[(&str, &str)]) -> Fetched {
    let mut rb = c.get(url);
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let resp = within(30, &format!("response head for GET {url}"), rb.send())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let cache = sluice_cache_header(&resp);
    let headers = resp.headers().clone();
    let body = match tokio::time::timeout(Duration::from_secs(30), resp.bytes()).await {
        Ok(Ok(b)) => Ok(b.to_vec()),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(_) => panic!("GET {url}: sluice neither completed nor aborted the body within 30s"),
    };
    Fetched {
        status,
        cache,
        headers,
        body,
    }
}

fn hdr(f: &Fetched, name: &str) -> String {
    f.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_a_missing_blob_cause_exactly_one_upstream_fetch() {
    const CLIENTS: usize = 100;
    let sim = Sim::start().await;
    let blob = Arc::new(random_bytes(8 << 20, 11));
    let digest = sim.add_blob(blob.to_vec());
    // The upstream sends 256 KiB, then stalls until the gate opens: every client arrives
    // while the one fill is still in progress.
    let gate = Gate::new();
    sim.fault(
        &digest,
        Fault::Hold {
            gate: gate.clone(),
            after: 256 << 10,
        },
    );
    let s = sluice_for(&sim, "");
    within(120, "100 concurrent pulls", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        let heads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (c, url, heads) = (c.clone(), url.clone(), heads.clone());
            tasks.push(tokio::spawn(async move {
                let resp = c.get(&url).send().await;
                heads.fetch_add(1, Ordering::SeqCst);
                let resp = resp.map_err(|e| format!("send: {e:?}"))?;
                let status = resp.status().as_u16();
                let cache = header(&resp, "x-sluice-cache");
                let body = resp.bytes().await.map_err(|e| format!("body: {e:?}"))?;
                Ok::<_, String>((status, cache, body))
            }));
        }
        assert!(
            eventually(Duration::from_secs(15), || sim.blob_gets(&digest) >= 1).await,
            "sluice never asked the upstream for the blob"
        );
        // Give all clients time to attach to the fill (they get their response heads while
        // the upstream is stalled if sluice streams to followers; if it holds heads until
        // the end, carry on after the wait — single flight is still what is measured).
        let all_attached = eventually(Duration::from_secs(10), || {
            heads.load(Ordering::SeqCst) == CLIENTS
        })
        .await;
        // While the upstream is stalled, no second fetch may have started, and no client
        // asked the upstream whether the repository holds the blob (the fill itself shows
        // it).
        assert_eq!(
            sim.blob_gets(&digest),
            1,
            "upstream blob GETs while {CLIENTS} clients wait on one fill"
        );
        assert_eq!(
            sim.count("HEAD", &digest),
            0,
            "upstream HEADs of the filling blob"
        );
        eprintln!(
            "{} of {CLIENTS} clients had response heads while the upstream was stalled",
            heads.load(Ordering::SeqCst)
        );
        gate.open();
        let want = sha256_digest(&blob);
        let mut failures = Vec::new();
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.expect("client task") {
                Ok((200, _, body)) if body.len() == blob.len() && sha256_digest(&body) == want => {}
                Ok((status, cache, body)) => failures.push(format!(
                    "client {i}: status {status}, cache {cache}, {} bytes, sha256 {}",
                    body.len(),
                    sha256_digest(&body)
                )),
                Err(e) => failures.push(format!("client {i}: {e}")),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {CLIENTS} clients did not get the right body (heads before release: {}):\n{}",
            failures.len(),
            if all_attached { "all" } else { "not all" },
            failures.join("\n")
        );
        assert_eq!(
            sim.blob_gets(&digest),
            1,
            "upstream blob GETs for {CLIENTS} clients"
        );
        // Stored once, verified, and a later pull is a hit without touching the upstream.
        assert!(
            eventually(Duration::from_secs(5), || blob_path(&s.data_dir(), &digest)
                .exists())
            .await,
            "blob not stored at {}",
            blob_path(&s.data_dir(), &digest).display()
        );
        let again = get(&c, &url, &[]).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.cache, "HIT");
        assert_eq!(again.body.expect("body"), *blob);
        assert_eq!(sim.blob_gets(&digest), 1);
        assert_eq!(
            std::fs::read(blob_path(&s.data_dir(), &digest)).expect("stored blob"),
            *blob
        );
        assert!(
            tmp_files(&s.data_dir()).is_empty(),
            "tmp/ not empty after the fill"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_receive_bytes_before_the_fill_completes() {
    let sim = Sim::start().await;
    let blob = random_bytes(4 << 20, 12);
    let digest = sim.add_blob(blob.clone());
    let gate = Gate::new();
    sim.fault(
        &digest,
        Fault::Hold {
            gate: gate.clone(),
            after: 512 << 10,
        },
    );
    let s = sluice_for(&sim, "");
    within(60, "streaming follower", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        let mut resp = within(
            10,
            "response head while the upstream body is stalled (first byte must not wait for the whole download)",
            c.get(&url).send(),
        )
        .await
        .expect("send");
        assert_eq!(resp.status(), 200);
        sluice_cache_header(&resp);
        let first = within(
            10,
            "first body bytes while the upstream body is stalled",
            resp.chunk(),
        )
        .await
        .expect("chunk")
        .expect("some body");
        assert!(!first.is_empty());
        assert!(!gate.is_open());
        // A HEAD meanwhile is answered from the fill in progress, not by asking upstream.
        let h = within(10, "HEAD during the fill", c.head(&url).send())
            .await
            .expect("HEAD");
        assert_eq!(h.status(), 200);
        assert_eq!(header(&h, "content-length"), blob.len().to_string());
        assert_eq!(header(&h, "docker-content-digest"), digest);
        assert_eq!(sluice_cache_header(&h), "MISS");
        assert_eq!(sim.count("HEAD", &digest), 0, "HEAD went upstream");
        let mut got = first.to_vec();
        gate.open();
        while let Some(ch) = resp.chunk().await.expect("rest of body") {
            got.extend_from_slice(&ch);
        }
        assert_eq!(got.len(), blob.len());
        assert!(got == blob, "streamed body differs from the blob");
    })
    .await;
}

/// A bad upstream body must never reach the store nor be served as complete, and must not
/// poison the cache: once the upstream is healthy again, the blob is fetched afresh.
async fn bad_upstream_body_is_never_stored_or_served(fault: Fault) {
    let sim = Sim::start().await;
    let blob = random_bytes(2 << 20, 13);
    let digest = sim.add_blob(blob.clone());
    sim.fault(&digest, fault.clone());
    let s = sluice_for(&sim, "");
    within(60, &format!("{fault:?} upstream"), async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        // Several rounds of concurrent clients: the verdict (digest check at the end of the
        // body) races with followers forwarding the last bytes, so give the race chances.
        for round in 0..10 {
            let results = futures_util::future::join_all((0..16).map(|_| get(&c, &url, &[]))).await;
            let mut complete = Vec::new();
            for (i, f) in results.iter().enumerate() {
                match (&f.status, &f.body) {
                    (500..=599, _) | (_, Err(_)) => {}
                    (status, Ok(body)) => complete.push(format!(
                        "client {i}: complete {status} ({} bytes, {}, cache {})",
                        body.len(),
                        if *body == blob {
                            "right bytes"
                        } else {
                            "WRONG bytes"
                        },
                        f.cache
                    )),
                }
            }
            eprintln!(
                "{fault:?} round {round}: {} of {} clients got a complete body; first outcome: \
                 status {}, {}",
                complete.len(),
                results.len(),
                results[0].status,
                match &results[0].body {
                    Ok(b) => format!("complete, {} bytes", b.len()),
                    Err(e) => format!("error: {e}"),
                }
            );
            assert!(
                complete.is_empty(),
                "round {round}: clients got complete responses from a {fault:?} upstream; \
                 they must be aborted or 5xx:\n{}",
                complete.join("\n")
            );
        }
        let hex = digest.trim_start_matches("sha256:");
        assert!(
            eventually(Duration::from_secs(5), || tmp_files(&s.data_dir())
                .is_empty())
            .await,
            "tmp/ still holds {:?}",
            tmp_files(&s.data_dir())
        );
        let stored: Vec<_> = blob_files(&s.data_dir())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(hex))
            .collect();
        assert!(stored.is_empty(), "a {fault:?} body was stored: {stored:?}");
        let fetched_while_broken = sim.blob_gets(&digest);
        assert!(fetched_while_broken >= 1);
        // The failure was not cached: a healthy upstream now serves it through sluice.
        sim.clear_faults();
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.status, 200, "after the upstream recovered");
        assert!(f.body.expect("body") == blob, "wrong bytes after recovery");
        assert!(
            sim.blob_gets(&digest) > fetched_while_broken,
            "sluice did not go back to the upstream after a failed fill"
        );
        assert!(
            eventually(Duration::from_secs(5), || blob_path(&s.data_dir(), &digest)
                .exists())
            .await,
            "good blob not stored after recovery"
        );
        assert!(
            eventually(Duration::from_secs(5), || tmp_files(&s.data_dir())
                .is_empty())
            .await,
            "tmp/ not empty after recovery"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_from_upstream_are_never_stored_or_served() {
    bad_upstream_body_is_never_stored_or_served(Fault::WrongBytes).await;
}

/// The wrong bytes arrive in small chunks, so a streaming follower has forwarded every one
/// of them before the upstream body ends and the digest can be checked: the last bytes
/// must be held back until the verdict, or the client takes a complete body for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_wrong_bytes_are_never_served_as_a_complete_body() {
    bad_upstream_body_is_never_stored_or_served(Fault::WrongBytesSlow {
        chunk: 128 << 10,
        delay: Duration::from_millis(10),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_upstream_body_is_never_stored_or_served() {
    bad_upstream_body_is_never_stored_or_served(Fault::CutMidBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_pulls_parallel_requests_share_one_token_fetch() {
    let sim = sim_with_credentials("sim-token-1", ("alice", "s3cret"), false).await;
    let layers: Vec<_> = (0..6)
        .map(|i| random_bytes(40_000 + i, 120 + i as u64))
        .collect();
    let img = sim.push_image("team/app", "v1", &layers);
    let s = sluice_for(&sim, "username = \"alice\"\npassword = \"s3cret\"");
    within(60, "parallel cold pulls", async {
        let c = http_client();
        // As skopeo and containerd pull layers: all at once, before any token is cached.
        let gets = img.layer_digests.iter().map(|d| {
            let (c, url) = (c.clone(), format!("{}/v2/team/app/blobs/{d}", s.base_url()));
            async move { get(&c, &url, &[]).await.status }
        });
        let statuses = futures_util::future::join_all(gets).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        assert_eq!(
            sim.token_requests(),
            1,
            "one token fetch for six requests of one scope"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_fetched_once_and_reused_with_credentials() {
    let sim = sim_with_credentials("sim-token-1", ("alice", "s3cret"), false).await;
    let layers: Vec<_> = (0..5)
        .map(|i| random_bytes(50_000 + i, 100 + i as u64))
        .collect();
    let img = sim.push_image("team/app", "v1", &layers);
    let s = sluice_for(&sim, "username = \"alice\"\npassword = \"s3cret\"");
    within(60, "authenticated pulls", async {
        let c = http_client();
        let base = format!("{}/v2/team/app", s.base_url());
        let m = get(&c, &format!("{base}/manifests/v1"), &[]).await;
        assert_eq!(m.status, 200, "manifest by tag behind bearer auth");
        assert!(m.body.expect("body") == img.manifest);
        for (i, d) in img.layer_digests.iter().enumerate() {
            let f = get(&c, &format!("{base}/blobs/{d}"), &[]).await;
            assert_eq!(f.status, 200, "layer {i}");
            assert!(f.body.expect("body") == layers[i], "layer {i} bytes");
        }
        let f = get(&c, &format!("{base}/blobs/{}", img.config_digest), &[]).await;
        assert_eq!(f.status, 200, "config blob");
        let f = get(
            &c,
            &format!("{base}/manifests/{}", img.manifest_digest),
            &[],
        )
        .await;
        assert_eq!(f.status, 200, "manifest by digest");

        let reqs = sim.requests();
        let tokens: Vec<_> = reqs
            .iter()
            .filter(|r| r.path.starts_with("/token"))
            .collect();
        assert_eq!(
            tokens.len(),
            1,
            "token requests for one scope: {:?}",
            tokens.iter().map(|r| &r.path).collect::<Vec<_>>()
        );
        assert_eq!(
            tokens[0].header("authorization"),
            Some("Basic YWxpY2U6czNjcmV0"),
            "token request must carry the configured credentials"
        );
        assert!(
            tokens[0].path.contains("service=sim"),
            "token request lacks the challenge's service: {}",
            tokens[0].path
        );
        assert!(
            tokens[0].path.contains("scope="),
            "token request lacks the challenge's scope: {}",
            tokens[0].path
        );
        // Only the first request may go unauthenticated (to receive the challenge); every
        // later one reuses the cached token.
        let unauthenticated: Vec<_> = reqs
            .iter()
            .filter(|r| r.path.starts_with("/v2/") && r.path != "/v2/")
            .filter(|r| r.header("authorization") != Some("Bearer sim-token-1"))
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(
            unauthenticated.len() <= 1,
            "requests sent without the cached token: {unauthenticated:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_token_is_fetched_without_credentials_and_reused() {
    let sim = Sim::start_with(SimConfig {
        auth: Some(SimAuth {
            token: "anon-token".into(),
            basic: None,
        }),
        redirect_blobs: false,
    })
    .await;
    let layers: Vec<_> = (0..3).map(|i| random_bytes(10_000, 200 + i)).collect();
    let img = sim.push_image("pub/tool", "1.0", &layers);
    let s = sluice_for(&sim, "");
    within(60, "anonymous token pulls", async {
        let c = http_client();
        let base = format!("{}/v2/pub/tool", s.base_url());
        assert_eq!(
            get(&c, &format!("{base}/manifests/1.0"), &[]).await.status,
            200
        );
        for d in &img.layer_digests {
            assert_eq!(get(&c, &format!("{base}/blobs/{d}"), &[]).await.status, 200);
        }
        let tokens: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/token"))
            .collect();
        assert_eq!(tokens.len(), 1, "anonymous token requests for one scope");
        assert_eq!(
            tokens[0].header("authorization"),
            None,
            "no credentials configured, none may be sent"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_to_another_host_gets_no_credentials() {
    let sim = sim_with_credentials("registry-only-token", ("bob", "hunter2"), true).await;
    let layer = random_bytes(300_000, 14);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let s = sluice_for(&sim, "username = \"bob\"\npassword = \"hunter2\"");
    within(60, "redirected blob", async {
        let c = http_client();
        let d = &img.layer_digests[0];
        let f = get(&c, &format!("{}/v2/app/blobs/{d}", s.base_url()), &[]).await;
        assert_eq!(f.status, 200, "redirected blob through sluice");
        assert!(f.body.expect("body") == layer, "redirected blob bytes");
        // The registry itself did get the token (so credentials were in play) ...
        assert!(
            sim.requests().iter().any(|r| r.method == "GET"
                && r.path.contains(&format!("/blobs/{d}"))
                && r.header("authorization") == Some("Bearer registry-only-token")),
            "the registry never saw an authenticated blob GET"
        );
        // ... and the CDN on another host name got none of them.
        let cdn = sim.cdn_requests();
        assert!(!cdn.is_empty(), "sluice did not follow the redirect");
        for r in &cdn {
            assert_eq!(
                r.header("authorization"),
                None,
                "Authorization leaked to the redirect target: {} {}",
                r.method,
                r.path
            );
            assert_eq!(
                r.header("cookie"),
                None,
                "Cookie sent to the redirect target"
            );
        }
        assert!(
            eventually(Duration::from_secs(5), || blob_path(&s.data_dir(), d)
                .exists())
            .await,
            "redirected blob not stored"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_outside_redirect_hosts_is_refused() {
    let sim = Sim::start_with(SimConfig {
        auth: None,
        redirect_blobs: true,
    })
    .await;
    let layer = random_bytes(30_000, 17);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let d = &img.layer_digests[0];
    // Retries and a circuit that opens after 2 failures: a refusal is neither retried nor
    // counted as the upstream's failure.
    let refusing = sluice_for(
        &sim,
        "retries = 2\ncircuit_failures = 2\nredirect_hosts = [\"cdn.example.com\"]",
    );
    let allowing = sluice_for(&sim, "redirect_hosts = [\"*.example.com\", \"LOCALHOST\"]");
    within(60, "redirect_hosts", async {
        let c = http_client();
        for _ in 0..3 {
            let f = get(
                &c,
                &format!("{}/v2/app/blobs/{d}", refusing.base_url()),
                &[],
            )
            .await;
            assert_eq!(f.status, 502, "redirect to localhost not in redirect_hosts");
        }
        assert!(
            sim.cdn_requests().is_empty(),
            "the refused redirect was followed"
        );
        assert_eq!(sim.blob_gets(d), 3, "a refused redirect was retried");
        let m = refusing.metrics().await;
        assert_eq!(
            common::metrics::sample(
                &m,
                "sluice_upstream_redirects_refused_total{upstream=\"sim\"}"
            ),
            3.0,
            "{m}"
        );
        assert_eq!(
            common::metrics::sample(&m, "sluice_circuit_state{upstream=\"sim\"}"),
            0.0,
            "refusals opened the circuit"
        );
        let f = get(
            &c,
            &format!("{}/v2/app/blobs/{d}", allowing.base_url()),
            &[],
        )
        .await;
        assert_eq!(f.status, 200);
        assert!(f.body.expect("body") == layer);
        assert!(!sim.cdn_requests().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_targets_challenge_is_not_answered_with_credentials() {
    let sim = sim_with_credentials("registry-only-token", ("bob", "hunter2"), true).await;
    let layer = random_bytes(30_000, 16);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let s = sluice_for(&sim, "username = \"bob\"\npassword = \"hunter2\"");
    within(60, "CDN challenge", async {
        let c = http_client();
        let d = &img.layer_digests[0];
        let url = format!("{}/v2/app/blobs/{d}", s.base_url());
        sim.fault("/cdn/", Fault::Status(401));
        let f = get(&c, &url, &[]).await;
        assert!((400..600).contains(&f.status), "{}", f.status);
        // The CDN's challenge named its own service: no token was asked for it.
        let asked: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/token"))
            .map(|r| r.path)
            .collect();
        assert!(
            !asked.is_empty(),
            "the registry's own challenge was answered"
        );
        assert!(
            asked.iter().all(|p| !p.contains("service=cdn")),
            "a redirect target's challenge chose a token request: {asked:?}"
        );
        // The registry's token was kept: the next pull needs no new one.
        let tokens = sim.token_requests();
        sim.clear_faults();
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.status, 200);
        assert!(f.body.expect("body") == layer);
        assert_eq!(
            sim.token_requests(),
            tokens,
            "the registry token was replaced"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_request_on_cached_blob_returns_exact_slice() {
    let sim = Sim::start().await;
    let blob = random_bytes(1 << 20, 15);
    let digest = sim.add_blob(blob.clone());
    let s = sluice_for(&sim, "");
    within(60, "ranges", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.status, 200);
        assert!(f.body.expect("body") == blob);
        assert!(
            eventually(Duration::from_secs(5), || blob_path(&s.data_dir(), &digest)
                .exists())
            .await
        );
        let len = blob.len();
        for (range, start, end) in [
            ("bytes=1000-1999", 1000, 1999),
            ("bytes=0-0", 0, 0),
            (
                &format!("bytes={}-", len - 4096) as &str,
                len - 4096,
                len - 1,
            ),
            ("bytes=-100", len - 100, len - 1),
        ] {
            let f = get(&c, &url, &[("Range", range)]).await;
            assert_eq!(f.status, 206, "{range}");
            assert_eq!(f.cache, "HIT", "{range} on a cached blob");
            assert_eq!(
                hdr(&f, "content-range"),
                format!("bytes {start}-{end}/{len}"),
                "{range}"
            );
            assert_eq!(
                hdr(&f, "content-length"),
                (end - start + 1).to_string(),
                "{range}"
            );
            let body = f.body.expect("range body");
            assert!(body == blob[start..=end], "{range}: wrong slice");
        }
        let f = get(&c, &url, &[("Range", &format!("bytes={len}-"))]).await;
        assert_eq!(f.status, 416, "unsatisfiable range");
        assert_eq!(hdr(&f, "content-range"), format!("bytes */{len}"));
        assert_eq!(
            sim.blob_gets(&digest),
            1,
            "ranges on a cached blob went upstream"
        );
        // Nothing of an empty blob is satisfiable, a suffix range included.
        let empty = sim.add_blob(Vec::new());
        let url = format!("{}/v2/app/blobs/{empty}", s.base_url());
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.status, 200);
        assert_eq!(f.body.expect("empty body").len(), 0);
        for range in ["bytes=-1", "bytes=0-"] {
            let f = get(&c, &url, &[("Range", range)]).await;
            assert_eq!(f.status, 416, "{range} on an empty blob");
            assert_eq!(hdr(&f, "content-range"), "bytes */0", "{range}");
        }
    })
    .await;
}

/// Manifest bytes with unusual but valid formatting: any re-serialisation changes them.
fn quirky_manifest(media_type: &str, body: &str) -> Vec<u8> {
    format!("{{\n\t\"schemaVersion\" :   2 ,\r\n  \"mediaType\":\"{media_type}\",{body}   \n}}\n\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_of_every_media_type_are_served_byte_exact_by_digest() {
    let sim = Sim::start().await;
    let cfg_bytes = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let cfg_len = cfg_bytes.len();
    let cfg = sim.add_blob(cfg_bytes);
    let layer = sim.add_blob(random_bytes(1000, 16));
    let image_body = format!(
        "\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cfg}\",\"size\":{cfg_len}}},\n\"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"{layer}\",\"size\":1000}}], \"annotations\":{{\"z\":\"\\u00e9\",\"a\":\"1\"}}"
    );
    let oci = quirky_manifest(OCI_MANIFEST, &image_body);
    let docker = quirky_manifest(
        DOCKER_MANIFEST,
        &image_body.replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        ),
    );
    let oci_d = sim.add_manifest(OCI_MANIFEST, oci.clone());
    let docker_d = sim.add_manifest(DOCKER_MANIFEST, docker.clone());
    let list_of = |mt: &str, d: &str, size: usize| {
        format!(
            "\"manifests\":[{{\"mediaType\":\"{mt}\",\"digest\":\"{d}\",\"size\":{size},\"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}}}}]"
        )
    };
    let list = quirky_manifest(
        DOCKER_LIST,
        &list_of(DOCKER_MANIFEST, &docker_d, docker.len()),
    );
    let index = quirky_manifest(OCI_INDEX, &list_of(OCI_MANIFEST, &oci_d, oci.len()));
    let list_d = sim.add_manifest(DOCKER_LIST, list.clone());
    let index_d = sim.add_manifest(OCI_INDEX, index.clone());
    sim.tag("app", "oci", &oci_d);
    sim.tag("app", "docker", &docker_d);
    sim.tag("app", "list", &list_d);
    sim.tag("app", "index", &index_d);
    let s = sluice_for(&sim, "");
    within(60, "manifests", async {
        let c = http_client();
        let accept = common::images::ACCEPT_ALL_MANIFESTS;
        for (tag, mt, bytes, d) in [
            ("oci", OCI_MANIFEST, &oci, &oci_d),
            ("docker", DOCKER_MANIFEST, &docker, &docker_d),
            ("list", DOCKER_LIST, &list, &list_d),
            ("index", OCI_INDEX, &index, &index_d),
        ] {
            for reference in [tag, d.as_str(), d.as_str()] {
                let url = format!("{}/v2/app/manifests/{reference}", s.base_url());
                let f = get(&c, &url, &[("Accept", accept)]).await;
                assert_eq!(f.status, 200, "GET {reference}");
                assert_eq!(hdr(&f, "docker-content-digest"), *d, "GET {reference}");
                assert_eq!(hdr(&f, "content-type"), mt, "GET {reference}");
                let body = f.body.expect("manifest body");
                assert!(
                    body == *bytes,
                    "GET {reference}: body not byte-exact:\n{}\n--- want ---\n{}",
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(bytes)
                );
                let h = c
                    .head(&url)
                    .header("Accept", accept)
                    .send()
                    .await
                    .expect("HEAD manifest");
                assert_eq!(h.status(), 200, "HEAD {reference}");
                sluice_cache_header(&h);
                assert_eq!(header(&h, "docker-content-digest"), *d, "HEAD {reference}");
                assert_eq!(
                    header(&h, "content-length"),
                    bytes.len().to_string(),
                    "HEAD {reference}"
                );
                assert_eq!(header(&h, "content-type"), mt, "HEAD {reference}");
            }
            // Digests are immutable: the first GET by digest may go upstream (or be served
            // from the tag fetch), every later one never does.
            assert!(
                sim.count("GET", &format!("/manifests/{d}")) <= 1,
                "manifest {d} fetched by digest more than once upstream"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_is_blob_unknown_or_manifest_unknown() {
    let sim = Sim::start().await;
    sim.push_image("app", "v1", &[random_bytes(100, 17)]);
    let s = sluice_for(&sim, "");
    within(60, "404s", async {
        let c = http_client();
        let missing = format!("sha256:{}", "ab".repeat(32));
        let f = get(&c, &format!("{}/v2/app/blobs/{missing}", s.base_url()), &[]).await;
        assert_eq!(f.status, 404, "missing blob");
        let v: serde_json::Value =
            serde_json::from_slice(&f.body.expect("body")).expect("OCI error body is JSON");
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN", "{v}");
        let r = c
            .get(format!("{}/v2/app/manifests/nope", s.base_url()))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 404, "missing tag");
        sluice_cache_header(&r);
        let v = json_body(r).await;
        assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN", "{v}");
        assert!(blob_files(&s.data_dir())
            .iter()
            .all(|p| !p.to_string_lossy().contains(&"ab".repeat(32))));
    })
    .await;
}

/// Content cached for one repository is served under another only once the upstream says
/// that one holds it too; an upstream that cannot be asked does not stop the cached copy
/// (`sluice_oci_repository_checks_total{result="unconfirmed"}`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_of_one_repository_is_served_under_another_only_when_the_upstream_holds_it_there() {
    let sim = Sim::start().await;
    let layer = random_bytes(3000, 23);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let s = sluice_for(&sim, "retries = 0");
    within(60, "repository links", async {
        let c = http_client();
        let url = |repo: &str| format!("{}/v2/{repo}/blobs/{}", s.base_url(), img.layer_digests[0]);
        let f = get(&c, &url("app"), &[]).await;
        assert_eq!((f.status, f.cache.as_str()), (200, "MISS"));
        // Not in "other" upstream (the simulator keeps blobs by digest alone, so it is told
        // to say so): 404, and nothing served.
        sim.fault("/v2/other/blobs/", Fault::Status(404));
        let f = get(&c, &url("other"), &[]).await;
        assert_eq!(f.status, 404);
        assert_eq!(sim.count("HEAD", "/v2/other/blobs/"), 1);
        // The upstream down: the cached copy is served, unconfirmed.
        drop(sim);
        for _ in 0..3 {
            let f = get(&c, &url("third"), &[]).await;
            assert_eq!((f.status, f.cache.as_str()), (200, "HIT"));
            assert!(f.body.expect("body") == layer);
        }
        let m = s.metrics().await;
        for (result, n) in [("refused", 1.0), ("unconfirmed", 1.0)] {
            assert_eq!(
                common::metrics::sample(
                    &m,
                    &format!("sluice_oci_repository_checks_total{{result=\"{result}\"}}")
                ),
                n,
                "{result}"
            );
        }
    })
    .await;
}

/// An upstream that refuses a cached tag (401: the repository made private, or deleted on
/// Docker Hub) is answered, not papered over: after one stale answer the pull gets 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_the_upstream_refuses_is_not_served_stale_on() {
    let sim = Sim::start().await;
    sim.push_image("app", "v1", &[random_bytes(1000, 24)]);
    let s = sluice_for(&sim, "");
    within(60, "refused tag", async {
        let c = http_client();
        let url = format!("{}/v2/app/manifests/v1", s.base_url());
        let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!((f.status, f.cache.as_str()), (200, "MISS"));
        sim.fault("/manifests/v1", Fault::Status(401));
        tokio::time::sleep(Duration::from_millis(1600)).await; // tag_ttl = 1s
        let mut seen = Vec::new();
        for _ in 0..30 {
            let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
            seen.push((f.status, f.cache.clone()));
            if f.status != 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen.last().map(|s| s.0), Some(403), "{seen:?}");
    })
    .await;
}

/// A stale tag is answered at once from the cache while one background HEAD revalidates it,
/// however slow the upstream: eight concurrent pulls past the TTL, with the upstream holding
/// its answer, all get `STALE` within a second and the upstream sees one HEAD. Once it
/// answers (the tag moved meanwhile), pulls get the new digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_is_answered_at_once_and_revalidated_once_in_the_background() {
    let sim = Sim::start().await;
    let img = sim.push_image("app", "latest", &[random_bytes(1000, 21)]);
    let s = sluice_for(&sim, "");
    within(60, "stale while revalidate", async {
        let c = http_client();
        let url = format!("{}/v2/app/manifests/latest", s.base_url());
        let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!((f.status, f.cache.as_str()), (200, "MISS"));
        // The upstream's HEAD is held until the gate opens below: a pull that waited for
        // it would never finish.
        let gate = Gate::new();
        sim.fault("/manifests/latest", Fault::HoldHead(gate.clone()));
        tokio::time::sleep(Duration::from_millis(1600)).await; // tag_ttl = 1s
        let pulls = tokio::time::timeout(
            Duration::from_secs(15),
            futures_util::future::join_all(
                (0..8).map(|_| get(&c, &url, &[("Accept", OCI_MANIFEST)])),
            ),
        )
        .await
        .expect("stale pulls waited for the upstream");
        for f in &pulls {
            assert_eq!((f.status, f.cache.as_str()), (200, "STALE"));
            assert_eq!(hdr(f, "docker-content-digest"), img.manifest_digest);
        }
        assert!(
            eventually(Duration::from_secs(2), || sim
                .count("HEAD", "/manifests/latest")
                == 1)
            .await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            sim.count("HEAD", "/manifests/latest"),
            1,
            "one revalidation per stale tag"
        );
        let moved = sim.push_image("app", "latest", &[random_bytes(1000, 22)]);
        gate.open();
        let mut last = String::new();
        for _ in 0..50 {
            let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
            last = hdr(&f, "docker-content-digest");
            if last == moved.manifest_digest {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            last, moved.manifest_digest,
            "the moved tag was never served"
        );

        // Deleted upstream: after one more stale answer, a 404, remembered (no HEAD each).
        sim.fault("/manifests/latest", Fault::Status(404));
        tokio::time::sleep(Duration::from_millis(1600)).await; // tag_ttl = 1s
        let mut statuses = Vec::new();
        for _ in 0..30 {
            let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
            statuses.push(f.status);
            if f.status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            statuses.last(),
            Some(&404),
            "a tag deleted upstream: {statuses:?}"
        );
        let heads = sim.count("HEAD", "/manifests/latest");
        for _ in 0..3 {
            assert_eq!(get(&c, &url, &[("Accept", OCI_MANIFEST)]).await.status, 404);
        }
        assert_eq!(
            sim.count("HEAD", "/manifests/latest"),
            heads,
            "the 404 was not remembered"
        );
        let m = s.metrics().await;
        for result in ["updated", "gone"] {
            let v = common::metrics::sample(
                &m,
                &format!("sluice_metadata_revalidations_total{{result=\"{result}\"}}"),
            );
            assert!(v >= 1.0, "{result}: {v}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tag_is_served_when_upstream_fails_revalidation() {
    let sim = Sim::start().await;
    let img = sim.push_image("app", "latest", &[random_bytes(1000, 18)]);
    let s = sluice_for(&sim, "");
    within(60, "stale-if-error", async {
        let c = http_client();
        let url = format!("{}/v2/app/manifests/latest", s.base_url());
        let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(f.status, 200);
        assert_eq!(f.cache, "MISS");
        sim.fault("/manifests/latest", Fault::Status(503));
        tokio::time::sleep(Duration::from_millis(1600)).await; // tag_ttl = 1s
        for i in 0..3 {
            let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
            assert_eq!(
                f.status, 200,
                "request {i} after ttl with the upstream failing"
            );
            assert_eq!(
                f.cache, "STALE",
                "request {i} after ttl with the upstream failing"
            );
            assert_eq!(hdr(&f, "docker-content-digest"), img.manifest_digest);
            assert!(f.body.expect("body") == img.manifest);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // The revalidations run in the background: given time on a loaded machine.
        assert!(
            eventually(Duration::from_secs(5), || sim
                .count("HEAD", "/manifests/latest")
                + sim.count("GET", "/manifests/latest")
                >= 2)
            .await,
            "sluice never tried to revalidate the stale tag"
        );
        // Rate limiting upstream is an upstream failure too.
        sim.fault("/manifests/latest", Fault::Status(429));
        let f = get(&c, &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(
            (f.status, f.cache.as_str()),
            (200, "STALE"),
            "stale tag with the upstream answering 429"
        );
        assert!(f.body.expect("body") == img.manifest);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_revalidates_with_head_after_ttl_and_digests_never_revalidate() {
    let sim = Sim::start().await;
    let layer = random_bytes(5000, 19);
    let img = sim.push_image("app", "v1", &[layer]);
    let s = sluice_for(&sim, "");
    within(60, "revalidation", async {
        let c = http_client();
        let base = format!("{}/v2/app", s.base_url());
        let tag_url = format!("{base}/manifests/v1");
        let digest_url = format!("{base}/manifests/{}", img.manifest_digest);
        let blob_url = format!("{base}/blobs/{}", img.layer_digests[0]);
        for u in [&tag_url, &digest_url, &blob_url] {
            assert_eq!(
                get(&c, u, &[("Accept", OCI_MANIFEST)]).await.status,
                200,
                "{u}"
            );
        }
        // Within the ttl: served from cache, nothing upstream.
        let before = sim.requests().len();
        let f = get(&c, &tag_url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(f.cache, "HIT", "tag within ttl");
        assert_eq!(sim.requests().len(), before, "a fresh tag went upstream");
        let tag_gets = sim.count("GET", "/manifests/v1");
        let digest_reqs =
            sim.count("GET", &img.manifest_digest) + sim.count("HEAD", &img.manifest_digest);
        let blob_reqs =
            sim.count("GET", &img.layer_digests[0]) + sim.count("HEAD", &img.layer_digests[0]);

        tokio::time::sleep(Duration::from_millis(1600)).await; // tag_ttl = 1s
        let f = get(&c, &tag_url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(f.status, 200);
        assert_eq!(hdr(&f, "docker-content-digest"), img.manifest_digest);
        assert!(
            eventually(Duration::from_secs(5), || sim
                .count("HEAD", "/manifests/v1")
                >= 1)
            .await,
            "no HEAD revalidation of the tag after its ttl; upstream saw: {:?}",
            sim.requests()
                .iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect::<Vec<_>>()
        );
        // Unchanged digest: no body transfer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            sim.count("GET", "/manifests/v1"),
            tag_gets,
            "the tag's manifest was downloaded again although its digest did not change"
        );
        // Digests are never revalidated, however old.
        for u in [&digest_url, &blob_url] {
            let f = get(&c, u, &[("Accept", OCI_MANIFEST)]).await;
            assert_eq!(f.status, 200, "{u}");
            assert_eq!(f.cache, "HIT", "{u} after the tag ttl");
        }
        assert_eq!(
            sim.count("GET", &img.manifest_digest) + sim.count("HEAD", &img.manifest_digest),
            digest_reqs,
            "manifest by digest was revalidated"
        );
        assert_eq!(
            sim.count("GET", &img.layer_digests[0]) + sim.count("HEAD", &img.layer_digests[0]),
            blob_reqs,
            "blob was revalidated"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_cache_events_and_bytes() {
    let sim = Sim::start().await;
    let blob = random_bytes(200_000, 20);
    let digest = sim.add_blob(blob);
    let s = sluice_for(&sim, "");
    within(60, "metrics", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        assert_eq!(get(&c, &url, &[]).await.status, 200);
        assert!(
            eventually(Duration::from_secs(5), || blob_path(&s.data_dir(), &digest)
                .exists())
            .await
        );
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.cache, "HIT");
        // A response is counted once its last byte is written, after the client may
        // already have it: wait for the hit to be counted.
        let mut m = s.metrics().await;
        for _ in 0..50 {
            if m.lines()
                .any(|l| l.starts_with("sluice_cache_events_total") && l.contains("result=\"hit\""))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            m = s.metrics().await;
        }
        for name in [
            "sluice_requests_total",
            "sluice_cache_events_total",
            "sluice_bytes_total",
            "sluice_upstream_requests_total",
            "sluice_inflight_fills",
        ] {
            assert!(m.contains(name), "/-/metrics lacks {name}:\n{m}");
        }
        let line_with = |parts: &[&str]| {
            m.lines()
                .filter(|l| !l.starts_with('#'))
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_string)
        };
        for parts in [
            &["sluice_cache_events_total", "result=\"hit\""][..],
            &["sluice_cache_events_total", "result=\"miss\""][..],
            &["sluice_bytes_total", "source=\"cache\""][..],
            &["sluice_bytes_total", "source=\"upstream\""][..],
            &["sluice_requests_total", "status=\"200\""][..],
        ] {
            let line = line_with(parts).unwrap_or_else(|| panic!("no sample with {parts:?}:\n{m}"));
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("unparsable sample {line}"));
            assert!(value >= 1.0, "{line}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_tag_and_cached_digests_are_served_when_upstream_is_unreachable() {
    let sim = Sim::start().await;
    let layer = random_bytes(20_000, 21);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let s = sluice_for(&sim, "");
    within(60, "upstream down", async {
        let c = http_client();
        let base = format!("{}/v2/app", s.base_url());
        let tag_url = format!("{base}/manifests/v1");
        let blob_url = format!("{base}/blobs/{}", img.layer_digests[0]);
        let digest_url = format!("{base}/manifests/{}", img.manifest_digest);
        for u in [&tag_url, &blob_url, &digest_url] {
            assert_eq!(
                get(&c, u, &[("Accept", OCI_MANIFEST)]).await.status,
                200,
                "{u}"
            );
        }
        assert!(
            eventually(Duration::from_secs(5), || {
                blob_path(&s.data_dir(), &img.layer_digests[0]).exists()
            })
            .await
        );
        drop(sim); // connection refused from now on
        tokio::time::sleep(Duration::from_millis(1600)).await; // tag_ttl = 1s
        let f = get(&c, &tag_url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(f.status, 200, "stale tag with the upstream unreachable");
        assert_eq!(f.cache, "STALE", "stale tag with the upstream unreachable");
        assert!(f.body.expect("body") == img.manifest);
        let f = get(&c, &blob_url, &[]).await;
        assert_eq!(
            (f.status, f.cache.as_str()),
            (200, "HIT"),
            "cached blob, upstream down"
        );
        assert!(f.body.expect("body") == layer);
        let f = get(&c, &digest_url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(
            (f.status, f.cache.as_str()),
            (200, "HIT"),
            "manifest by digest, upstream down"
        );
    })
    .await;
}

/// Fills a blob, a config and a manifest, restarts sluice (gracefully, or by SIGKILL), and
/// serves them again without asking the upstream.
async fn cached_artifacts_survive_restart(crash: bool) {
    let sim = Sim::start().await;
    let layer = random_bytes(300_000, 22);
    let img = sim.push_image("app", "v1", std::slice::from_ref(&layer));
    let mut s = sluice_for(&sim, "");
    let c = http_client();
    let base = format!("{}/v2/app", s.base_url());
    let blob_urls = [
        format!("{base}/blobs/{}", img.layer_digests[0]),
        format!("{base}/blobs/{}", img.config_digest),
    ];
    let manifest_url = format!("{base}/manifests/{}", img.manifest_digest);
    within(30, "fill before restart", async {
        for u in blob_urls.iter().chain([&manifest_url]) {
            assert_eq!(
                get(&c, u, &[("Accept", OCI_MANIFEST)]).await.status,
                200,
                "{u}"
            );
        }
        assert!(
            eventually(Duration::from_secs(5), || {
                blob_path(&s.data_dir(), &img.layer_digests[0]).exists()
                    && blob_path(&s.data_dir(), &img.config_digest).exists()
            })
            .await
        );
    })
    .await;
    let upstream_before = sim.requests().len();
    if crash {
        s.crash_restart();
    } else {
        let st = s.restart();
        assert!(
            st.is_some_and(|st| st.success()),
            "sluice did not exit cleanly within 20 s of SIGTERM: {st:?}"
        );
    }
    within(30, "serve after restart", async {
        for u in &blob_urls {
            let f = get(&c, u, &[]).await;
            assert_eq!(
                (f.status, f.cache.as_str()),
                (200, "HIT"),
                "{u} after restart"
            );
        }
        let f = get(&c, &blob_urls[0], &[]).await;
        assert!(f.body.expect("body") == layer);
        let f = get(&c, &manifest_url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(f.status, 200, "manifest by digest after restart");
        assert!(f.body.expect("body") == img.manifest);
        // Manifest records are flushed before a manifest is first served, so even a SIGKILL
        // right after the fill keeps it servable without the upstream.
        assert_eq!(
            f.cache,
            "HIT",
            "manifest by digest after a {}",
            if crash { "crash" } else { "graceful restart" }
        );
        assert_eq!(
            sim.requests().len(),
            upstream_before,
            "cached digests went upstream after the restart"
        );
        let blob_reqs = sim
            .requests()
            .iter()
            .filter(|r| r.path.contains("/blobs/"))
            .count();
        assert_eq!(
            blob_reqs, 2,
            "blobs fetched upstream again after the restart"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_artifacts_survive_a_graceful_restart() {
    cached_artifacts_survive_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blobs_survive_a_crash() {
    cached_artifacts_survive_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_404_is_cached_briefly() {
    let sim = Sim::start().await;
    sim.push_image("app", "v1", &[random_bytes(100, 23)]);
    let s = sluice_for(&sim, "");
    within(30, "negative cache", async {
        let c = http_client();
        let url = format!("{}/v2/app/manifests/not-yet", s.base_url());
        assert_eq!(get(&c, &url, &[]).await.status, 404);
        let upstream =
            || sim.count("GET", "/manifests/not-yet") + sim.count("HEAD", "/manifests/not-yet");
        let first = upstream();
        assert!(first >= 1);
        for _ in 0..3 {
            assert_eq!(get(&c, &url, &[]).await.status, 404);
        }
        assert_eq!(
            upstream(),
            first,
            "a fresh 404 (negative_ttl default 30s) went upstream again"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_head_reports_length_and_digest_without_body() {
    let sim = Sim::start().await;
    let blob = random_bytes(123_457, 24);
    let digest = sim.add_blob(blob.clone());
    let s = sluice_for(&sim, "");
    within(30, "blob HEAD", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        // Uncached first (clients probe with HEAD before GET), then cached.
        for when in ["uncached", "cached"] {
            let r = c.head(&url).send().await.expect("HEAD blob");
            assert_eq!(r.status(), 200, "HEAD {when} blob");
            sluice_cache_header(&r);
            assert_eq!(
                header(&r, "content-length"),
                blob.len().to_string(),
                "HEAD {when}"
            );
            assert_eq!(header(&r, "docker-content-digest"), digest, "HEAD {when}");
            assert!(r.bytes().await.expect("HEAD body").is_empty());
            if when == "uncached" {
                let f = get(&c, &url, &[]).await;
                assert_eq!(f.status, 200);
                assert!(
                    eventually(Duration::from_secs(5), || blob_path(&s.data_dir(), &digest)
                        .exists())
                    .await
                );
            }
        }
        let missing = format!("{}/v2/app/blobs/sha256:{}", s.base_url(), "cd".repeat(32));
        let r = c.head(&missing).send().await.expect("HEAD missing blob");
        assert_eq!(r.status(), 404, "HEAD of a blob the upstream lacks");
        sluice_cache_header(&r);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_request_on_uncached_blob_returns_exact_slice() {
    let sim = Sim::start().await;
    let blob = random_bytes(3 << 20, 25);
    let digest = sim.add_blob(blob.clone());
    let s = sluice_for(&sim, "");
    within(30, "range on a miss", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        let (start, end) = (2_000_000usize, 2_100_000usize);
        let f = get(&c, &url, &[("Range", &format!("bytes={start}-{end}"))]).await;
        assert_eq!(f.status, 206, "range on an uncached blob");
        assert_eq!(
            hdr(&f, "content-range"),
            format!("bytes {start}-{end}/{}", blob.len())
        );
        assert!(f.body.expect("body") == blob[start..=end], "wrong slice");
        // Whatever sluice fetched upstream for it, a full GET now needs at most one more.
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.status, 200);
        assert!(f.body.expect("body") == blob);
        assert!(
            sim.blob_gets(&digest) <= 2,
            "upstream blob GETs: {}",
            sim.blob_gets(&digest)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_on_blob_is_a_5xx_and_not_cached() {
    let sim = Sim::start().await;
    let blob = random_bytes(10_000, 26);
    let digest = sim.add_blob(blob.clone());
    sim.fault(&digest, Fault::Status(500));
    let s = sluice_for(&sim, "");
    within(30, "upstream 500", async {
        let c = http_client();
        let url = format!("{}/v2/app/blobs/{digest}", s.base_url());
        let f = get(&c, &url, &[]).await;
        assert!(
            (500..=599).contains(&f.status),
            "upstream 500 on a blob answered {} to the client",
            f.status
        );
        assert!(!blob_path(&s.data_dir(), &digest).exists());
        sim.clear_faults();
        let f = get(&c, &url, &[]).await;
        assert_eq!(f.status, 200, "after the upstream recovered");
        assert!(f.body.expect("body") == blob);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_single_segment_names_get_library_prefix() {
    // An upstream whose host is docker.io (served by the simulator on loopback).
    let sim = Sim::start().await;
    let official = sim.push_image("library/alpine", "3", &[random_bytes(1000, 27)]);
    let user = sim.push_image("someone/tool", "1", &[random_bytes(1000, 28)]);
    let s = Sluice::start(&format!(
        r#"[[upstream]]
name = "dockerhub"
format = "oci"
url = "{}"
host = "docker.io"
default = true
tag_ttl = "1m"
"#,
        sim.url()
    ));
    within(30, "library/ prefix", async {
        let c = http_client();
        let accept = [("Accept", OCI_MANIFEST)];
        let f = get(
            &c,
            &format!("{}/v2/alpine/manifests/3", s.base_url()),
            &accept,
        )
        .await;
        assert_eq!(f.status, 200, "alpine:3 → library/alpine:3");
        assert_eq!(hdr(&f, "docker-content-digest"), official.manifest_digest);
        assert!(sim.count("GET", "/v2/library/alpine/manifests/3") >= 1);
        let f = get(
            &c,
            &format!("{}/v2/library/alpine/manifests/3", s.base_url()),
            &accept,
        )
        .await;
        assert_eq!(f.status, 200, "explicit library/alpine:3");
        let f = get(
            &c,
            &format!("{}/v2/alpine/manifests/3?ns=docker.io", s.base_url()),
            &accept,
        )
        .await;
        assert_eq!(f.status, 200, "alpine:3 with ?ns=docker.io");
        let f = get(
            &c,
            &format!("{}/v2/someone/tool/manifests/1", s.base_url()),
            &accept,
        )
        .await;
        assert_eq!(f.status, 200, "two-segment names stay as they are");
        assert_eq!(hdr(&f, "docker-content-digest"), user.manifest_digest);
        let d = &official.layer_digests[0];
        let f = get(&c, &format!("{}/v2/alpine/blobs/{d}", s.base_url()), &[]).await;
        assert_eq!(f.status, 200);
        assert!(sim.count("GET", &format!("/v2/library/alpine/blobs/{d}")) == 1);
        let wrong: Vec<_> = sim
            .requests()
            .iter()
            .filter(|r| {
                r.path.starts_with("/v2/alpine/") || r.path.starts_with("/v2/library/someone/")
            })
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(
            wrong.is_empty(),
            "names not mapped as Docker Hub expects: {wrong:?}"
        );
    })
    .await;
}
