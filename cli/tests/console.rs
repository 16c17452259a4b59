//! `cactl console` over plain HTTP against the real `ca-server`: every way in is refused unless it
//! comes with the session the one-time URL opened (and, for a change, that session's CSRF token
//! from this console's own origin); pages show the registry; a role's missing rights are neither
//! offered nor, when forced, granted by the CA.

mod common;

use common::{CACTL, Console, RunningCa, http, issue, text};

fn status(head: &str) -> u16 {
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line")
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

/// Opens the console's session: the `Cookie:` header line to send from now on.
fn login(c: &Console) -> String {
    let (head, _) = c.get(&c.login_path(), "");
    assert_eq!(status(&head), 303, "{head}");
    let cookie = header(&head, "set-cookie").expect("set-cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let pair = cookie.split(';').next().expect("pair");
    format!("Cookie: {pair}\r\n")
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().expect("value").to_owned()
}

fn count(page: &str, table: &str, key: &str) -> u64 {
    let t = &page[page.find(&format!("id=\"{table}\"")).expect(table)..];
    let at = t.find(&format!("data-key=\"{key}\">")).unwrap_or_else(|| panic!("{key} in {table}")) + key.len() + 12;
    t[at..].split('<').next().and_then(|n| n.parse().ok()).expect("count")
}

#[test]
fn console_gate_pages_and_roles() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = RunningCa::init(d);
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let (auditor, _) = ca.add_principal(d, "auditor", "auditor-1", &[]);
    let (operator9, _) = ca.add_principal(d, "operator", "operator-9", &[]);
    let t1 = issue(&ca, d, &station, "HSTM01261100000K", "L1");
    let t2 = issue(&ca, d, &station, "HSTM01261100001I", "L2");
    let reg = ca.admin(&["terminal", "register", "--serial", "HSTM01261100002G", "--class", "I"]);
    assert!(reg.status.success(), "{}", text(&reg));

    let c = Console::start(&ca.dir.join("identities/admin/identity.toml"));

    // No session: refused, and even the refusal carries the strict CSP.
    let (head, body) = c.get("/", "");
    assert_eq!(status(&head), 401, "{head}");
    assert!(body.contains("NO_SESSION"), "{body}");
    let csp = header(&head, "content-security-policy").expect("CSP");
    assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&head, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&head, "referrer-policy"), Some("same-origin"));
    // A made-up session cookie is no session.
    assert_eq!(status(&c.get("/terminals", "Cookie: hsca_console=00ff\r\n").0), 401);
    // A wrong token opens nothing (and does not use up the right one).
    let (head, body) = c.get("/login?token=0123", "");
    assert_eq!(status(&head), 403, "{head}");
    assert!(body.contains("BAD_TOKEN") && header(&head, "set-cookie").is_none(), "{body}");
    // Another Host (DNS rebinding): refused before anything else.
    let (head, body) = http(
        c.port,
        format!("GET {} HTTP/1.1\r\nHost: ca.attacker.example\r\nConnection: close\r\n\r\n", c.login_path()).as_bytes(),
    );
    assert_eq!(status(&head), 421, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("BAD_HOST"));

    let cookie = login(&c);
    // The token works once.
    let (head, body) = c.get(&c.login_path(), "");
    assert_eq!(status(&head), 403, "{head}");
    assert!(body.contains("TOKEN_USED"), "{body}");

    // Overview: the registry's numbers.
    let (head, page) = c.get("/", &cookie);
    assert_eq!(status(&head), 200, "{head}\n{page}");
    assert!(page.contains("<strong id=\"total\">3</strong>"), "{page}");
    assert_eq!(count(&page, "by-state", "issued"), 2);
    assert_eq!(count(&page, "by-state", "registered"), 1);
    assert_eq!(count(&page, "by-class", "II"), 2);
    assert_eq!(count(&page, "by-manufacturer", "HSTM"), 3);
    assert!(page.contains("<svg id=\"hourly\""), "server-drawn chart");
    // The chart counts what the registry recorded: two certificates issued by station-1 (no
    // provisioning confirmed), whichever hours they fell in.
    assert!(page.contains("<span id=\"hourly-issued\">2</span>"), "{page}");
    assert!(page.contains("<span id=\"hourly-provisioned\">0</span>"), "{page}");
    let by_station = &page[page.find("id=\"hourly-by-station\"").expect("per station")..];
    assert!(
        by_station.contains(
            "<tr data-station=\"station-1\"><td>station-1</td><td class=\"num issued\">2</td><td class=\"num provisioned\">0</td></tr>"
        ),
        "{by_station}"
    );
    // The chain's first verification runs in the background: the page does not wait for it.
    assert!(page.contains("id=\"chain-running\"") && !page.contains("id=\"chain\""), "{page}");
    assert!(page.contains("lang=\"zh-CN\"") && page.contains("概览"), "Chinese by default");
    assert!(!page.contains("<script"), "no script");
    // Revocation freshness from the CA's HTTP side: the current CRL (signature checked, number
    // shown, not past its nextUpdate) and an OCSP answer about the console's own certificate.
    let row = |id: &str| page[page.find(&format!("id=\"{id}\"")).expect(id)..].split("</tr>").next().expect("row");
    let crl = row("crl-fresh");
    assert!(crl.contains("class=\"ok\"") && crl.contains("CRL #") && crl.contains("/crl/issuing.crl"), "{crl}");
    let ocsp = row("ocsp-fresh");
    assert!(ocsp.contains("class=\"ok\"") && ocsp.contains("(good)") && ocsp.contains("/ocsp"), "{ocsp}");

    // Terminals by serial prefix.
    let (_, page) = c.get("/terminals?q=HSTM0126110000", &cookie);
    assert!(page.contains(t1.serial) && page.contains(t2.serial) && page.contains("HSTM01261100002G"), "{page}");
    let (_, page) = c.get("/terminals?q=HSTM01261100001", &cookie);
    assert!(page.contains(t2.serial) && !page.contains(t1.serial), "{page}");
    let (_, page) = c.get(&format!("/terminals?q={}", t1.serial), &cookie);
    assert!(page.contains(t1.serial) && !page.contains(t2.serial), "the exact serial: {page}");
    let (_, page) = c.get(&format!("/terminals?q={}&state=1", t1.serial), &cookie);
    assert!(!page.contains(&format!(">{}<", t1.serial)), "filters hold for the exact serial too: {page}");
    let (_, page) = c.get("/terminals?state=1", &cookie);
    assert!(page.contains("HSTM01261100002G") && !page.contains(t1.serial), "{page}");

    // A terminal page: the certificate, its PEM, the revoke form with its CSRF token.
    let (head, page) = c.get(&format!("/terminals/{}", t1.serial), &cookie);
    assert_eq!(status(&head), 200, "{page}");
    assert!(page.contains(&t1.cert_serial) && page.contains("id=\"revoke\""), "{page}");
    let (head, pem) = c.get(&format!("/certificates/{}", t1.cert_serial), &cookie);
    assert_eq!(status(&head), 200);
    assert_eq!(pem, std::fs::read_to_string(d.join(&t1.pem)).expect("pem"));
    let csrf = csrf_of(&page);

    // Changes need the session, the CSRF token and our own origin.
    let form = format!("terminal={}&reason=keyCompromise", t1.serial);
    // A token one byte off (a fixed "00" equalled the real one once in 256 runs).
    let wrong_prefix = if csrf.starts_with("00") { "ff" } else { "00" };
    let refused = [
        (c.post("/revoke", "", &format!("{form}&csrf={csrf}")), 401, "NO_SESSION"),
        (c.post("/revoke", &cookie, &form), 403, "CSRF"),
        (c.post("/revoke", &cookie, &format!("{form}&csrf={}{}", wrong_prefix, &csrf[2..])), 403, "CSRF"),
        (
            c.post("/revoke", &format!("{cookie}Origin: http://evil.example\r\n"), &format!("{form}&csrf={csrf}")),
            403,
            "CROSS_ORIGIN",
        ),
        (c.post("/revoke", &format!("{cookie}Origin: null\r\n"), &format!("{form}&csrf={csrf}")), 403, "CROSS_ORIGIN"),
        (
            c.post("/revoke", &format!("{cookie}Sec-Fetch-Site: cross-site\r\n"), &format!("{form}&csrf={csrf}")),
            403,
            "CROSS_ORIGIN",
        ),
    ];
    for ((head, body), code, reason) in &refused {
        assert_eq!(status(head), *code, "{reason}: {head}");
        assert!(body.contains(reason), "{reason}: {body}");
    }
    let (_, page) = c.get(&format!("/terminals/{}", t1.serial), &cookie);
    assert!(page.contains("<td id=\"state\">issued</td>"), "nothing revoked by a refused request: {page}");

    // The real thing.
    let (head, _) = c.post("/revoke", &cookie, &format!("{form}&csrf={csrf}"));
    assert_eq!(status(&head), 303, "{head}");
    let (_, page) = c.get(&format!("/terminals/{}", t1.serial), &cookie);
    assert!(page.contains("<td id=\"state\">revoked</td>"), "{page}");
    assert!(page.contains("<td class=\"status\">revoked</td>") && page.contains("key_compromise"), "{page}");
    assert!(!page.contains("id=\"revoke\""), "nothing left to revoke");
    // Its audit entries come from the CA's index by target: the terminal's own (issue) and its
    // certificate's (the revocation names the certificate).
    assert!(page.contains("<td>issue</td>") && page.contains("<td>revoke</td>"), "{page}");
    let about = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = ca.admin(&[&["--json", "audit", "tail"], args].concat());
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let own = about(&["--target", t1.serial]);
    let seqs: Vec<u64> = own.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]) && !seqs.is_empty(), "newest first: {own:?}");
    assert!(own.iter().all(|e| e["target"] == t1.serial) && own.iter().any(|e| e["action"] == "issue"), "{own:?}");
    let page_two = about(&["--target", t1.serial, "--last", "1", "--before", &seqs[0].to_string()]);
    assert_eq!(page_two.first().map(|e| e["seq"].clone()), seqs.get(1).map(|s| (*s).into()), "the next page");
    // The terminal page pages the same way: a full page links to the entries before it (so
    // refusals naming the serial cannot push its issue out of reach); the last page does not.
    let again = ca.admin(&["terminal", "register", "--serial", t1.serial, "--class", "II"]);
    assert!(!again.status.success(), "a refusal audited about the serial: {}", text(&again));
    let seqs: Vec<u64> = about(&["--target", t1.serial]).iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert!(seqs.len() >= 2, "{seqs:?}");
    let first = format!("/terminals/{}?last=1", t1.serial);
    let (_, page) = c.get(&first, &cookie);
    let older = format!("/terminals/{}?last=1&amp;before={}", t1.serial, seqs[0]);
    assert!(page.contains(&format!("<a id=\"older\" href=\"{older}\"")), "{page}");
    let (_, page) = c.get(&older.replace("&amp;", "&"), &cookie);
    assert!(page.contains(&format!("<td>{}</td>", seqs[1])), "the next older entry: {page}");
    let (_, page) = c.get(&format!("/terminals/{}", t1.serial), &cookie);
    assert!(!page.contains("id=\"older\""), "not a full page: no link: {page}");
    let (head, _) = c.get(&format!("/terminals/{}?before=x", t1.serial), &cookie);
    assert_eq!(status(&head), 400, "{head}");
    let newest = about(&["--actor", "station-1", "--last", "1"]);
    assert_eq!((newest.len(), newest[0]["actor"].as_str()), (1, Some("station-1")));
    let both = ca.admin(&["audit", "tail", "--actor", "a", "--target", "b"]);
    assert_eq!(both.status.code(), Some(2), "{}", text(&both));
    let unkeyed = ca.admin(&["audit", "tail", "--before", "5"]);
    assert!(!unkeyed.status.success() && text(&unkeyed).contains("BAD_REQUEST"), "{}", text(&unkeyed));

    // A bulk request shows what it covers, then waits; its requester may not approve it.
    let (_, page) = c.get("/revocation?lot=L2", &cookie);
    assert!(page.contains("<strong id=\"covers\">1</strong>"), "{page}");
    let (head, _) = c.post("/revocation/bulk", &cookie, &format!("lot=L2&reason=superseded&csrf={csrf}"));
    assert_eq!(status(&head), 303, "{head}");
    let (_, page) = c.get("/revocation", &cookie);
    let id_at = page.find("name=\"id\" value=\"").expect("a pending approval") + 17;
    let id = page[id_at..].split('"').next().expect("id").to_owned();
    let (head, page) = c.post("/approvals/decide", &cookie, &format!("id={id}&decision=approve&csrf={csrf}"));
    assert_eq!(status(&head), 403, "{head}");
    assert!(page.contains("SAME_APPROVER"), "{page}");

    // Audit and principals; the background verification started by the overview has finished
    // by now or soon does (no page waits for it).
    let mut page = String::new();
    for _ in 0..300 {
        page = c.get("/audit?action=revoke", &cookie).1;
        if !page.contains("id=\"chain-running\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        page.contains("id=\"chain\"") && !page.contains("class=\"bad\"") && page.contains(&t1.cert_serial),
        "{page}"
    );
    // The chain's verification walks the whole log, so pages show the newest one (made for the
    // overview above); asked for, the whole chain is verified again, now longer.
    let verified = |page: &str| -> u64 {
        let id = page.find("id=\"chain\"").unwrap_or_else(|| panic!("a chain status: {page}"));
        let (start, end) = (page[..id].rfind('<').expect("tag"), id + page[id..].find('>').expect("tag end"));
        assert!(page[start..end].contains("class=\"ok\""), "verified: {page}");
        let digits = page[end..].split(": ").nth(1).expect("count");
        digits.split(|ch: char| !ch.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
    };
    let cached = verified(&page);
    let (_, page) = c.get("/audit?verify=true", &cookie);
    assert!(verified(&page) > cached, "verified again: {cached} → {page}");
    // Principals from the CA's ListPrincipals: a station with its manufacturer; disabling one
    // through its row's form, after which the CA refuses it.
    let (_, page) = c.get("/principals", &cookie);
    let row = |page: &str, name: &str| -> String {
        let at = page.find(&format!("data-name=\"{name}\"")).unwrap_or_else(|| panic!("{name} in {page}"));
        page[at..].split("</tr>").next().expect("row").to_owned()
    };
    let station_row = row(&page, "station-1");
    assert!(station_row.contains("<td>station</td>") && station_row.contains("<td>HSTM</td>"), "{station_row}");
    // Its last activity, from the CA's index by actor.
    assert!(station_row.contains("<td>issue</td>"), "{station_row}");
    assert!(row(&page, "operator-9").contains("action=\"/principals/disable\""), "{page}");
    assert!(!row(&page, "admin").contains("/principals/disable"), "no button to disable oneself");
    let (head, _) = c.post("/principals/disable", &cookie, &format!("name=operator-9&csrf={csrf}"));
    assert_eq!(status(&head), 303, "{head}");
    let (_, page) = c.get("/principals", &cookie);
    let disabled = row(&page, "operator-9");
    assert!(disabled.contains("disabled") || disabled.contains("已停用"), "{disabled}");
    assert!(!disabled.contains("/principals/disable"), "{disabled}");
    let refused = std::process::Command::new(CACTL)
        .arg("--identity")
        .arg(operator9.join("identity.toml"))
        .args(["terminal", "list"])
        .output()
        .expect("cactl");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let (_, page) = c.get("/alerts", &cookie);
    assert!(page.contains("id=\"not-configured\""), "{page}");

    // Language switch (a form, so CSRF-protected too), then sign out.
    let (head, _) = c.post("/lang", &cookie, &format!("to=en&back=/audit&csrf={csrf}"));
    assert_eq!((status(&head), header(&head, "location")), (303, Some("/audit")));
    let (_, page) = c.get("/", &cookie);
    assert!(page.contains("lang=\"en\"") && page.contains("Overview"), "{page}");
    let (head, _) = c.post("/lang", &cookie, &format!("to=zh&back=//evil.example/&csrf={csrf}"));
    assert_eq!(header(&head, "location"), Some("/"), "no open redirect");
    let (head, _) = c.post("/logout", &cookie, &format!("csrf={csrf}"));
    assert_eq!(status(&head), 200);
    assert_eq!(status(&c.get("/", &cookie).0), 401, "the session is gone");
    drop(c);

    // An auditor: no revoke form, no decisions; forcing a revocation is refused by the CA.
    let c = Console::start(&auditor.join("identity.toml"));
    let cookie = login(&c);
    let (_, page) = c.get(&format!("/terminals/{}", t2.serial), &cookie);
    assert!(page.contains(&t2.cert_serial) && !page.contains("id=\"revoke\""), "{page}");
    let (_, page) = c.get("/revocation", &cookie);
    assert!(page.contains(&id) && !page.contains("value=\"approve\"") && !page.contains("id=\"bulk\""), "{page}");
    let csrf = csrf_of(&page);
    let (head, page) = c.post("/revoke", &cookie, &format!("terminal={}&reason=keyCompromise&csrf={csrf}", t2.serial));
    assert_eq!(status(&head), 403, "{head}");
    assert!(page.contains("ROLE_FORBIDDEN"), "{page}");
    let (_, page) = c.get(&format!("/terminals/{}", t2.serial), &cookie);
    assert!(page.contains("<td id=\"state\">issued</td>"), "{page}");
    // Principals are for administrators: not offered to an auditor, and refused by the CA when forced.
    assert!(!page.contains("href=\"/principals\""), "{page}");
    let (head, page) = c.get("/principals", &cookie);
    assert_eq!(status(&head), 403, "{head}");
    assert!(page.contains("ROLE_FORBIDDEN"), "{page}");
}

#[test]
fn non_loopback_listen_is_refused() {
    let o = std::process::Command::new(CACTL)
        .args(["--identity", "/nonexistent/identity.toml", "console", "--listen", "0.0.0.0:0"])
        .output()
        .expect("cactl");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a loopback address"), "{}", text(&o));
    // Forced, it gets past the check (and stops at the missing identity instead).
    let o = std::process::Command::new(CACTL)
        .args(["--identity", "/nonexistent/identity.toml", "console", "--listen", "0.0.0.0:0", "--allow-non-loopback"])
        .output()
        .expect("cactl");
    assert!(!text(&o).contains("not a loopback address") && text(&o).contains("nonexistent"), "{}", text(&o));
}
