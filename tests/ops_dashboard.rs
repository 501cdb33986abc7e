//! The dashboard (`/-/ui`) and the recent policy refusals (`/-/api/blocks`) against a real
//! sluice with the OCI simulator upstream: what each role sees, the browser sign-in
//! challenge, the page's security headers and well-formedness, an upstream whose circuit
//! is open, refusals counted per kind and kept across a restart, and the switch that
//! turns the page off.

mod common;

use common::ops::{config, pull, stats, ADMIN, READER};
use common::sim::Sim;
use common::{base64, header, http_client, json_body, random_bytes, run_with_timeout, Sluice};

/// `Authorization` of basic auth with `token` as the password, as a browser sends it.
fn basic(token: &str) -> String {
    format!("Basic {}", base64(format!("browser:{token}").as_bytes()))
}

async fn page(s: &Sluice, query: &str, auth: Option<&str>) -> reqwest::Response {
    let mut r = http_client().get(format!("{}/-/ui{query}", s.base_url()));
    if let Some(a) = auth {
        r = r.header("Authorization", a);
    }
    r.send().await.expect("dashboard")
}

/// The page's body, checked: `200`, HTML, the security headers, balanced tags.
async fn html(s: &Sluice, auth: Option<&str>) -> String {
    let r = page(s, "", auth).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    let csp = header(&r, "content-security-policy");
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(
        csp.contains("style-src 'sha256-") && !csp.contains("script"),
        "{csp}"
    );
    let body = r.text().await.expect("body");
    check_balanced(&body);
    // The CSP names the hash of exactly what is between <style> and </style>.
    let style =
        &body[body.find("<style>").expect("style") + 7..body.find("</style>").expect("/style")];
    let hash = base64(&sha2_256(style.as_bytes()));
    assert!(
        csp.contains(&format!("style-src 'sha256-{hash}'")),
        "{csp} vs {hash}"
    );
    assert!(!body.contains("<script"), "the page has no script");
    body
}

fn sha2_256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).to_vec()
}

/// Every element opened is closed in order (void elements aside), and no text holds a
/// raw `<` or `>`.
fn check_balanced(h: &str) {
    const VOID: [&str; 5] = ["meta", "br", "hr", "img", "input"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = h;
    while let Some(open) = rest.find('<') {
        assert!(
            !rest[..open].contains('>'),
            "stray '>' before {:?}",
            &rest[open..]
        );
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('!') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if tag.starts_with('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "</{name}> closes the wrong element"
            );
        } else if !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "left open: {stack:?}");
}

/// The table row (`<tr>…</tr>`) that contains `needle`.
fn row<'a>(h: &'a str, needle: &str) -> &'a str {
    let at = h
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in the page:\n{h}"));
    let start = h[..at].rfind("<tr>").expect("row start");
    let end = h[at..].find("</tr>").expect("row end") + at;
    &h[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_sees_its_part_and_refusals_survive_a_restart() {
    let sim = Sim::start().await;
    let img = sim.push_image("team/app", "v1", &[random_bytes(64 * 1024, 31)]);
    sim.push_image("bad/thing", "1.0", &[random_bytes(1024, 32)]);
    sim.push_image("team/tool", "2.0", &[random_bytes(1024, 33)]);
    sim.push_image("team/toolbox", "3.0", &[random_bytes(1024, 34)]);
    let refusing = common::refusing_port();
    let down = refusing.port;
    let mut s = Sluice::start_with(|port, data| {
        config(port, data, &sim, "")
            + &format!(
                r#"
[[upstream]]
name = "down"
format = "oci"
url = "http://127.0.0.1:{down}"
circuit_failures = 1
circuit_cooldown = "10m"

[[policy.rule]]
id = "no-bad"
kind = "deny"
format = "oci"
package = "bad/*"
reason = "known <bad> image"

[[policy.rule]]
id = "watch-tools"
kind = "deny"
mode = "audit"
format = "oci"
package = "team/tool*"
reason = "under review"

[[policy.waiver]]
rule = "watch-tools"
package = "team/toolbox"
reason = "reviewed"
expires = "2099-12-31"
"#
            )
    });
    let c = http_client();
    let base = s.base_url();
    pull(&s, "team/app", "v1", &img).await;
    pull(&s, "team/app", "v1", &img).await;
    let status = |path: &'static str| {
        let url = format!("{base}{path}");
        let c = c.clone();
        async move { c.get(url).send().await.expect(path).status().as_u16() }
    };
    let mut last_blocked = String::new();
    for _ in 0..2 {
        let r = c
            .get(format!("{base}/v2/bad/thing/manifests/1.0"))
            .send()
            .await
            .expect("blocked");
        assert_eq!(r.status(), 403);
        last_blocked = header(&r, "x-request-id");
    }
    assert_eq!(
        status("/v2/team/tool/manifests/2.0").await,
        200,
        "an audit-mode rule serves"
    );
    assert_eq!(
        status("/v2/team/toolbox/manifests/3.0").await,
        200,
        "waived: no refusal, not even in audit"
    );
    let down = status("/v2/down/x/manifests/latest").await;
    assert!((500..600).contains(&down), "{down}");

    // Anonymous (auth.anonymous defaults to read): figures and states, no refusals,
    // no cached items, no upstream URLs.
    let anon = html(&s, None).await;
    let today = &stats(&s).await["today"]["counters"];
    let a = &today["artifacts_served"];
    let served = ["oci", "npm", "pypi"]
        .iter()
        .map(|f| a[f].as_u64().unwrap())
        .sum::<u64>();
    assert!(served >= 6, "{today}");
    let t = row(&anon, "<th>today</th>");
    assert!(t.contains(&format!("<td class=\"n\">{served}</td>")), "{t}");
    assert!(
        t.contains(&format!("<td class=\"n\">{}</td>", today["hits"])),
        "{t}"
    );
    assert!(
        t.contains(&format!("<td class=\"n\">{}</td>", today["blocks"])),
        "{t}"
    );
    assert!(row(&anon, "<td>sim</td>").contains("answering"));
    let d = row(&anon, "<td>down</td>");
    assert!(d.contains("failing") && d.contains("next probe in"), "{d}");
    // What each upstream did: one request to `down`, failed (its description is for
    // admins); the simulator answered every one.
    let cells = |r: &str| -> Vec<String> {
        r.split("<td")
            .skip(1)
            .map(|c| {
                c[c.find('>').unwrap() + 1..]
                    .trim_end_matches("</td>")
                    .to_string()
            })
            .collect()
    };
    let dc = cells(d);
    assert_eq!(dc[4..6], ["1", "1"], "{d}");
    assert_eq!(dc[6], "—", "{d}");
    assert!(
        dc[7].ends_with(" ago</span>"),
        "no description for read: {d}"
    );
    let sc = cells(row(&anon, "<td>sim</td>"));
    // team/app's manifest, config and layer; team/tool's and team/toolbox's manifests.
    assert_eq!(sc[4..6], ["5", "0"], "{sc:?}");
    assert!(sc[6].ends_with(" ago</span>") && sc[7] == "—", "{sc:?}");
    assert!(!anon.contains("bad/thing") && !anon.contains("team/app"));
    assert!(!anon.contains(&sim.url()), "upstream URLs are for admins");
    assert!(anon.contains("href=\"/-/ui?login\""));

    // A browser's sign-in: `?login` challenges until an admin token comes.
    let r = page(&s, "?login", None).await;
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate").starts_with("Basic "));
    assert_eq!(page(&s, "?login", Some(&basic(READER))).await.status(), 401);
    assert_eq!(page(&s, "?login", Some(&basic(ADMIN))).await.status(), 200);
    assert_eq!(page(&s, "", Some(&basic("wrong"))).await.status(), 401);
    let reader = html(&s, Some(&basic(READER))).await;
    assert!(!reader.contains("bad/thing") && !reader.contains(&sim.url()));

    // Admin: refusals (markup in a reason escaped), cached items, URLs.
    let admin = html(&s, Some(&basic(ADMIN))).await;
    let b = row(&admin, "<td>bad/thing</td>");
    assert!(
        b.contains(">block<") && b.contains("<td>no-bad</td>"),
        "{b}"
    );
    assert!(b.contains("<td>known &lt;bad&gt; image</td>"), "{b}");
    assert!(
        b.contains("<td class=\"n\">2</td>"),
        "two requests, one row: {b}"
    );
    assert!(b.contains(&format!("<code>{last_blocked}</code>")), "{b}");
    let t = row(&admin, "<td>team/tool</td>");
    assert!(
        t.contains(">audit<") && t.contains("<td>watch-tools</td>"),
        "{t}"
    );
    assert!(
        t.contains("<td class=\"n\">1</td>"),
        "one request, counted once: {t}"
    );
    assert!(row(&admin, "<td>sim/team/app</td>").contains("<td>v1</td>"));
    assert!(admin.contains(&sim.url()));
    let failure = row(&admin, "<td>down</td>");
    let failure = &failure[failure.rfind("<td>").unwrap()..];
    assert!(
        failure.ends_with(" ago</span>: connection refused</td>"),
        "the last failure, by kind only: {failure}"
    );

    // The page's policy check: what the policy would decide, escaped, and neither counted
    // nor recorded (a question, not a request).
    let decisions = |m: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("sluice_policy_decisions_total{") && l.contains("rule=\"no-bad\"")
            })
            .map(str::to_string)
    };
    let before = decisions(&s.metrics().await);
    let r = page(
        &s,
        "?format=oci&name=bad%2Fthing&version=1.0",
        Some(&basic(ADMIN)),
    )
    .await;
    let asked = r.text().await.unwrap();
    check_balanced(&asked);
    assert!(
        asked.contains("oci bad/thing 1.0: <b class=\"bad\">blocked</b> by rule <code>no-bad</code>: known &lt;bad&gt; image"),
        "{asked}"
    );
    assert!(
        asked.contains("value=\"bad/thing\"") && asked.contains("<option value=\"oci\" selected>")
    );
    let r = page(
        &s,
        "?format=oci&name=team%2Ftoolbox&version=3.0",
        Some(&basic(ADMIN)),
    )
    .await;
    let waived = r.text().await.unwrap();
    assert!(
        waived.contains("team/toolbox 3.0: <b class=\"ok\">allowed</b>"),
        "{waived}"
    );
    assert!(
        row(&waived, "<td>watch-tools</td><td>block</td>")
            .contains("(waived: waiver for team/toolbox"),
        "{waived}"
    );
    let r = page(
        &s,
        "?format=npm&name=%3Cb%3Ex&version=%22%3E",
        Some(&basic(ADMIN)),
    )
    .await;
    let hostile = r.text().await.unwrap();
    check_balanced(&hostile);
    assert!(hostile.contains("npm &lt;b&gt;x &quot;&gt;: "), "{hostile}");
    assert!(hostile.contains("value=\"&lt;b&gt;x\"") && hostile.contains("value=\"&quot;&gt;\""));
    let r = page(&s, "?format=maven&name=x", Some(&basic(ADMIN))).await;
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("Unknown format <code>maven</code>"));
    // Cargo is a format the policy knows, even while its serving is an experiment.
    let r = page(&s, "?format=cargo&name=x", Some(&basic(ADMIN))).await;
    assert!(r.text().await.unwrap().contains("cargo x: "));
    let r = page(&s, "?format=oci&name=bad%2Fthing", Some(&basic(READER))).await;
    assert!(
        !r.text().await.unwrap().contains("Policy check</h2>"),
        "admin only"
    );
    let api = c
        .get(format!(
            "{base}/-/api/policy/check?format=oci&name=bad/thing&version=1.0"
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(api).await["decision"], "block");
    assert_eq!(
        decisions(&s.metrics().await),
        before,
        "questions are not decisions"
    );

    // The same refusals as JSON, admin only.
    let blocks = |auth: &'static str| {
        c.get(format!("{base}/-/api/blocks"))
            .bearer_auth(auth)
            .send()
    };
    assert_eq!(blocks(READER).await.expect("blocks").status(), 403);
    let v = json_body(blocks(ADMIN).await.expect("blocks")).await;
    let list = v["blocks"].as_array().expect("blocks");
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["name"], "team/tool", "most recent first: {v}");
    assert_eq!(list[0]["outcome"], "audit");
    assert_eq!(list[1]["name"], "bad/thing");
    assert_eq!(list[1]["last_request_id"], last_blocked.as_str(), "{v}");
    assert_eq!(
        (list[1]["count"].as_u64(), list[1]["version"].as_str()),
        (Some(2), Some("1.0"))
    );

    // The same from the command line.
    let cli = |token: &'static str| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
            cmd.args(["blocks", "--url", &base, "--token", token]);
            for v in ["SLUICE_CONFIG", "SLUICE_URL", "SLUICE_TOKEN"] {
                cmd.env_remove(v);
            }
            run_with_timeout(&mut cmd, std::time::Duration::from_secs(30))
        })
    };
    let o = cli(ADMIN).await.expect("cli");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("LAST SEEN") && lines[0].contains("REQUESTS"),
        "{out}"
    );
    let cells = |l: &str| {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cells(lines[1])[1..8],
        [
            "audit",
            "oci",
            "sim",
            "team/tool",
            "2.0",
            "watch-tools",
            "1"
        ],
        "{out}"
    );
    assert_eq!(
        cells(lines[2])[1..9],
        [
            "block",
            "oci",
            "sim",
            "bad/thing",
            "1.0",
            "no-bad",
            "2",
            "known <bad> image"
        ],
        "{out}"
    );
    assert!(lines[3].starts_with("2 entries since "), "{out}");
    assert_eq!(
        cli(READER).await.expect("cli").status.code(),
        Some(1),
        "a read token is refused"
    );

    // A browser holding the admin credentials cannot be made to change anything from
    // another site; the CLI (no browser headers) can.
    let gc = |extra: Option<(&'static str, &'static str)>| {
        let mut r = c
            .post(format!("{base}/-/api/gc"))
            .header("Authorization", basic(ADMIN));
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };
    let refused = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 403);
        let body = r.text().await.unwrap();
        assert!(body.contains("another site"), "{body}");
    };
    refused(gc(Some(("Sec-Fetch-Site", "cross-site"))).await.unwrap()).await;
    refused(gc(Some(("Sec-Fetch-Site", "same-site"))).await.unwrap()).await;
    refused(gc(Some(("Origin", "https://evil.example"))).await.unwrap()).await;
    refused(gc(Some(("Origin", "null"))).await.unwrap()).await;
    assert_eq!(
        gc(Some(("Sec-Fetch-Site", "same-origin")))
            .await
            .unwrap()
            .status(),
        200
    );
    let own = format!("http://{}", s.addr());
    let r = c
        .post(format!("{base}/-/api/gc"))
        .header("Authorization", basic(ADMIN))
        .header("Origin", own)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "same origin");
    assert_eq!(gc(None).await.unwrap().status(), 200, "no browser");
    let m = s.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == "sluice_admin_cross_site_refusals_total 4"),
        "{m}"
    );

    // Options and mistakes.
    let r = page(&s, "?refresh=10", None).await;
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<meta http-equiv=\"refresh\" content=\"10\">"));
    assert_eq!(page(&s, "?refresh=1", None).await.status(), 400);
    let r = c.post(format!("{base}/-/ui")).send().await.expect("post");
    assert_eq!(r.status(), 405);
    let m = s.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("sluice_requests_total{format=\"ui\",status=\"200\"}")),
        "dashboard views are counted:\n{m}"
    );

    // Refusals are persisted: a restart keeps them, their counts and their order; a
    // crash loses at most the last few seconds.
    s.restart();
    let v = json_body(blocks(ADMIN).await.expect("blocks")).await;
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["blocks"][1]["count"], 2, "{v}");
    assert_eq!(status("/v2/bad/thing/manifests/1.0").await, 403);
    // Upkeep writes changes every 2 s and the index reaches the disk every 0.5 s.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    s.crash_restart();
    let v = json_body(blocks(ADMIN).await.expect("blocks")).await;
    assert_eq!(v["blocks"][0]["name"], "bad/thing", "{v}");
    assert_eq!(
        v["blocks"][0]["count"], 3,
        "persisted by upkeep before the crash: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_a_token_without_anonymous_reads_and_can_be_turned_off() {
    let sim = Sim::start().await;
    let closed = Sluice::start_with(|port, data| {
        config(port, data, &sim, "").replacen(
            "[[auth.token]]",
            "[auth]\nanonymous = \"none\"\n\n[[auth.token]]",
            1,
        )
    });
    let r = page(&closed, "", None).await;
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate").starts_with("Basic "));
    html(&closed, Some(&basic(READER))).await;

    // Anonymous admin (a trusted network) still needs a token for the admin parts, as
    // the admin API does.
    let open = Sluice::start_with(|port, data| {
        config(port, data, &sim, "").replacen(
            "[[auth.token]]",
            "[auth]\nanonymous = \"admin\"\n\n[[auth.token]]",
            1,
        )
    });
    let anon = html(&open, None).await;
    assert!(anon.contains("href=\"/-/ui?login\"") && !anon.contains("Policy refusals</h2>"));
    assert!(!anon.contains(&sim.url()));
    assert_eq!(page(&open, "?login", None).await.status(), 401);
    assert!(html(&open, Some(&basic(ADMIN)))
        .await
        .contains("Policy refusals</h2>"));

    let off = Sluice::start_with(|port, data| {
        config(port, data, &sim, "").replace("[storage]", "dashboard = false\n\n[storage]")
    });
    assert_eq!(page(&off, "", Some(&basic(ADMIN))).await.status(), 404);
}
