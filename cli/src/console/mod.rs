//! `cactl console`: a server-rendered web UI on loopback that signs every gRPC call with the
//! identity cactl was started with (as `kubectl proxy` does). No second authentication model:
//! the browser holds a session with this process only; the CA authorises each call by the
//! identity's role. The console only hides what the role may not do (from the CA's default
//! role policy), so a refusal still comes from the CA.

mod freshness;
mod pages;
mod session;
mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use proto::client::Client;
use proto::identity::Identity;

pub use session::Sessions;
use session::{COOKIE, Session};
use text::Lang;

/// Largest form body accepted.
const MAX_FORM: usize = 64 * 1024;

/// No script, no external resource, no framing; styles only from our own stylesheet.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The CA's default role policy: what each role may call, to decide what to offer.
const ROLES_TOML: &str = include_str!("../../../policies/roles.toml");

/// Refuses to listen where others could reach the console, unless told to.
pub fn check_listen(addr: SocketAddr, allow_non_loopback: bool) -> Result<()> {
    if !addr.ip().is_loopback() && !allow_non_loopback {
        bail!(
            "--listen {addr} is not a loopback address: the console acts with your identity for whoever opens \
             its URL; use 127.0.0.1 (or pass --allow-non-loopback)"
        );
    }
    Ok(())
}

/// `+08:00`, `-05:30`, `Z` or `+8` → minutes east of UTC.
pub fn parse_utc_offset(s: &str) -> Result<i32> {
    let bad = || anyhow::anyhow!("--utc-offset {s:?}: expected ±HH:MM (e.g. +08:00) or Z");
    if s == "Z" || s == "UTC" {
        return Ok(0);
    }
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// Which methods the identity's role may call, per the CA's default policy.
pub struct Allowed(BTreeSet<String>);

impl Allowed {
    fn for_role(role: &str) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct Policy {
            methods: BTreeMap<String, Vec<String>>,
        }
        let p: Policy = toml::from_str(ROLES_TOML).context("policies/roles.toml")?;
        Ok(Self(p.methods.into_iter().filter(|(_, roles)| roles.iter().any(|r| r == role)).map(|(m, _)| m).collect()))
    }

    /// Whether the role may call `Service/Method` (e.g. `Admin/RevokeCertificate`).
    pub fn may(&self, method: &str) -> bool {
        self.0.contains(&format!("/hsca.v1.{method}"))
    }
}

/// What every handler shares.
pub struct Console {
    /// The signed-request client, made from the identity.
    pub client: Client,
    /// The identity's principal name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// What that role may call.
    pub allowed: Allowed,
    /// Login token and sessions.
    pub sessions: Sessions,
    /// The fleet service's client (same identity), when the console was given one.
    pub fleet: Option<Client>,
    /// This identity's own certificate: its CRL distribution point and OCSP responder are where
    /// the overview checks freshness.
    pub own_cert: pki::Certificate,
    /// The PKI root this identity pins: the chain the CA serves must end there.
    pub pinned_root: pki::Certificate,
    /// The operator's zone, minutes east of UTC.
    pub utc_offset_minutes: i32,
    /// `Host` values this server answers (its own address, as loopback names).
    hosts: Vec<String>,
    /// The newest verification of the whole audit chain and when (unix ms) it was made: the
    /// walk is linear in the log (seconds at millions of entries), so pages reuse it.
    pub chain: std::sync::Mutex<Option<(u64, Arc<proto::v1::ListAuditResponse>)>>,
    /// Whether a background verification is running.
    pub chain_refreshing: std::sync::atomic::AtomicBool,
}

impl Console {
    /// Whether the role may read alerts: the fleet service's rule (its `READERS`), which the
    /// CA's role policy does not cover.
    pub fn may_read_alerts(&self) -> bool {
        ["operator", "admin", "auditor"].contains(&self.role.as_str())
    }

    /// Whether the role may acknowledge alerts (the fleet service's `ACKERS`).
    pub fn may_ack_alerts(&self) -> bool {
        ["operator", "admin"].contains(&self.role.as_str())
    }
}

/// The session a request came with (put there by [`gate`]).
#[derive(Clone)]
pub struct Ctx {
    /// Session id.
    pub id: String,
    /// The session.
    pub session: Session,
}

impl Ctx {
    /// The page language.
    pub fn lang(&self) -> Lang {
        self.session.lang
    }
}

/// Serves the console on `listen` until interrupted.
pub async fn serve(
    client: Client,
    fleet: Option<Client>,
    identity: &Identity,
    listen: SocketAddr,
    utc_offset_minutes: i32,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let token = session::random_token()?;
    let url = format!("http://{addr}/login?token={}", token.as_str());
    let state = Arc::new(Console::new(client, fleet, identity, addr, utc_offset_minutes, token)?);
    println!("console for {} ({}): open {url}\nthe URL works once; stop with Ctrl-C", state.name, state.role);
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}

impl Console {
    fn new(
        client: Client,
        fleet: Option<Client>,
        identity: &Identity,
        addr: SocketAddr,
        utc_offset_minutes: i32,
        token: zeroize::Zeroizing<String>,
    ) -> Result<Self> {
        let port = addr.port();
        let mut hosts = vec![format!("{addr}"), format!("localhost:{port}")];
        if addr.ip().is_loopback() {
            hosts.extend([format!("127.0.0.1:{port}"), format!("[::1]:{port}")]);
        }
        use der::Decode;
        let own_cert =
            pki::Certificate::from_der(&identity.certificate_der()?).context("this identity's certificate")?;
        let root_path = identity.path(&identity.file.pki_root);
        let root_pem =
            std::fs::read_to_string(&root_path).with_context(|| format!("reading {}", root_path.display()))?;
        let pinned_root = pki::pem::certificate_from_pem(&root_pem).context("the pinned PKI root")?;
        Ok(Self {
            own_cert,
            pinned_root,
            client,
            name: identity.file.name.clone(),
            role: identity.file.role.clone(),
            allowed: Allowed::for_role(&identity.file.role)?,
            sessions: Sessions::new(token),
            fleet,
            utc_offset_minutes,
            hosts,
            chain: Default::default(),
            chain_refreshing: Default::default(),
        })
    }
}

fn router(state: Arc<Console>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(pages::overview))
        .route("/terminals", get(pages::terminals))
        .route("/terminals/{serial}", get(pages::terminal))
        .route("/certificates/{serial}", get(pages::certificate_pem))
        .route("/revocation", get(pages::revocation))
        .route("/revoke", post(pages::revoke))
        .route("/revocation/bulk", post(pages::bulk))
        .route("/approvals/decide", post(pages::decide))
        .route("/audit", get(pages::audit))
        .route("/principals", get(pages::principals))
        .route("/principals/disable", post(pages::disable))
        .route("/alerts", get(pages::alerts))
        .route("/alerts/{id}", get(pages::alert))
        .route("/alerts/{id}/ack", post(pages::ack_alert))
        .route("/lang", post(pages::lang))
        .route("/logout", post(pages::logout))
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .route("/login", get(login))
        .route("/console.css", get(css))
        .layer(axum::middleware::from_fn_with_state(state.clone(), host_and_headers))
        .with_state(state)
}

/// A plain refusal page (the console's own gate, before any CA call).
fn refusal(status: StatusCode, reason: &str, zh: &str, en: &str) -> Response {
    let page = maud::html! {
        (maud::DOCTYPE)
        html lang="zh-CN" {
            head { meta charset="utf-8"; title { (reason) } link rel="stylesheet" href="/console.css"; }
            body { main { h1 { (reason) } p lang="zh-CN" { (zh) } p lang="en" { (en) } } }
        }
    };
    (status, axum::response::Html(page.into_string())).into_response()
}

/// Every answer: security headers; every request: a `Host` that is ours (no DNS rebinding).
async fn host_and_headers(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let host_ok =
        req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).is_some_and(|h| c.hosts.iter().any(|o| o == h));
    let mut resp = if host_ok {
        next.run(req).await
    } else {
        refusal(
            StatusCode::MISDIRECTED_REQUEST,
            "BAD_HOST",
            "请求的主机名不是本控制台。",
            "This Host is not the console's.",
        )
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not no-referrer: with it a browser sends `Origin: null` on forms, and the origin check needs
    // the real one. Nothing here links elsewhere, and the login token is single-use anyway.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    resp
}

/// Needs an open session; a state-changing request also needs the same origin and the session's
/// CSRF token in its form.
async fn gate(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let cookies = req.headers().get(header::COOKIE).and_then(|h| h.to_str().ok()).unwrap_or("");
    let Some((id, session)) = c.sessions.find(cookies) else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "NO_SESSION",
            "没有会话：请打开 cactl console 打印的链接。",
            "No session: open the URL `cactl console` printed.",
        );
    };
    let mut req = req;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if !same_origin(req.headers(), &c.hosts) {
            return refusal(StatusCode::FORBIDDEN, "CROSS_ORIGIN", "跨站请求被拒绝。", "Cross-site request refused.");
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM).await else {
            return refusal(StatusCode::PAYLOAD_TOO_LARGE, "FORM_TOO_LARGE", "表单过大。", "Form too large.");
        };
        if !session::csrf_matches(&bytes, &session) {
            return refusal(
                StatusCode::FORBIDDEN,
                "CSRF",
                "缺少或错误的 CSRF 令牌：请从控制台页面提交。",
                "Missing or wrong CSRF token: submit from the console's own page.",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(Ctx { id, session });
    next.run(req).await
}

/// A browser names where a form came from; anything but this console is refused.
fn same_origin(h: &HeaderMap, hosts: &[String]) -> bool {
    if h.get("sec-fetch-site").and_then(|v| v.to_str().ok()).is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => o.strip_prefix("http://").is_some_and(|host| hosts.iter().any(|ours| ours == host)),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: String,
}

/// The printed URL: trades the one-time token for a session cookie, then goes to the overview.
async fn login(
    State(c): State<Arc<Console>>,
    q: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = q.map(|q| q.0.token).unwrap_or_default();
    match c.sessions.login(&token) {
        Ok(Ok(id)) => {
            let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", id.as_str());
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            match HeaderValue::from_str(&cookie) {
                Ok(v) => {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                    resp
                }
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
        Ok(Err(_)) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Err(session::LoginRefused::Used) => refusal(
            StatusCode::FORBIDDEN,
            "TOKEN_USED",
            "该链接已使用过：每个链接只能打开一次会话。请重新运行 cactl console。",
            "This URL was used already: each opens one session. Run `cactl console` again.",
        ),
        Err(session::LoginRefused::Wrong) => refusal(StatusCode::FORBIDDEN, "BAD_TOKEN", "令牌错误。", "Wrong token."),
    }
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("console.css")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_forced() {
        assert!(check_listen("127.0.0.1:8443".parse().expect("addr"), false).is_ok());
        assert!(check_listen("[::1]:8443".parse().expect("addr"), false).is_ok());
        let e = check_listen("0.0.0.0:8443".parse().expect("addr"), false).expect_err("refused");
        assert!(e.to_string().contains("not a loopback address"), "{e}");
        assert!(check_listen("192.168.1.5:8443".parse().expect("addr"), true).is_ok());
    }

    #[test]
    fn utc_offsets() {
        assert_eq!(parse_utc_offset("+08:00").expect("cst"), 480);
        assert_eq!(parse_utc_offset("-05:30").expect("x"), -330);
        assert_eq!(parse_utc_offset("Z").expect("z"), 0);
        assert_eq!(parse_utc_offset("+8").expect("h"), 480);
        for bad in ["08:00", "+15:00", "+08:60", "", "+ab"] {
            assert!(parse_utc_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_come_from_the_default_policy() {
        let admin = Allowed::for_role("admin").expect("policy");
        assert!(admin.may("Admin/RevokeCertificate") && admin.may("Admin/DecideApproval"));
        let auditor = Allowed::for_role("auditor").expect("policy");
        assert!(auditor.may("Admin/ListAudit") && !auditor.may("Admin/RevokeCertificate"));
        assert!(!auditor.may("Admin/DisablePrincipal"));
    }
}
