//! The console's pages. Each reads what it shows with signed gRPC calls and offers only the
//! actions the identity's role may take; the CA decides every call.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use proto::client::request_id;
use proto::v1;
use proto::v1::admin_client::AdminClient;
use proto::v1::certificate_authority_client::CertificateAuthorityClient;
use proto::v1::fleet_client::FleetClient;
use proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

use super::text::{Lang, t};
use super::{Console, Ctx};

type C = State<Arc<Console>>;

/// Audit entries the pages look back over (the CA answers at most 10,000).
const AUDIT_WINDOW: u32 = 10_000;
/// Entries a terminal page shows about the terminal and about each of its certificates.
const AUDIT_PER_TARGET: u32 = 1_000;
/// Terminals per page of the list.
const PAGE: u32 = 50;

fn registry(c: &Console) -> RegistryClient<Channel> {
    RegistryClient::new(c.client.channel.clone())
}

fn admin(c: &Console) -> AdminClient<Channel> {
    AdminClient::new(c.client.channel.clone())
}

fn ca(c: &Console) -> CertificateAuthorityClient<Channel> {
    CertificateAuthorityClient::new(c.client.channel.clone())
}

/// A time in the operator's zone: `2026-12-03 18:20:00 UTC+08:00`.
fn when(c: &Console, ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let shifted = (ms as i64 + i64::from(c.utc_offset_minutes) * 60_000).max(0) as u64;
    let (sign, m) = if c.utc_offset_minutes < 0 { ('-', -c.utc_offset_minutes) } else { ('+', c.utc_offset_minutes) };
    let text = crate::revocation::time_text(shifted);
    format!("{} UTC{sign}{:02}:{:02}", text.trim_end_matches('Z').replace('T', " "), m / 60, m % 60)
}

/// A path segment: anything but unreserved characters percent-encoded.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A page with the navigation, in the session's language.
fn layout(c: &Console, ctx: &Ctx, here: &'static str, back: &str, body: Markup) -> Response {
    let l = ctx.lang();
    let nav: [(&str, &'static str, bool); 6] = [
        ("/", "overview", true),
        ("/terminals", "terminals", c.allowed.may("Registry/ListTerminals")),
        ("/revocation", "revocation", c.allowed.may("Admin/ListApprovals")),
        ("/audit", "audit", c.allowed.may("Admin/ListAudit")),
        ("/principals", "principals", c.allowed.may("Admin/ListPrincipals")),
        ("/alerts", "alerts", c.may_read_alerts()),
    ];
    let other = if l == Lang::Zh { "en" } else { "zh" };
    let page = html! {
        (maud::DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                title { (t(l, here)) " · " (t(l, "title")) }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    strong { (t(l, "title")) }
                    nav {
                        @for (href, key, shown) in nav {
                            @if shown {
                                a href=(href) class=[(key == here).then_some("here")] { (t(l, key)) }
                            }
                        }
                    }
                    span.who { (t(l, "signed_in_as")) ": " (c.name) " (" (c.role) ")" }
                    form method="post" action="/lang" {
                        input type="hidden" name="csrf" value=(ctx.session.csrf);
                        input type="hidden" name="to" value=(other);
                        input type="hidden" name="back" value=(back);
                        button #lang type="submit" { (t(l, "switch_lang")) }
                    }
                    form method="post" action="/logout" {
                        input type="hidden" name="csrf" value=(ctx.session.csrf);
                        button type="submit" { (t(l, "logout")) }
                    }
                }
                main { h1 { (t(l, here)) } (body) }
            }
        }
    };
    Html(page.into_string()).into_response()
}

/// A failed page: the CA's refusal (its stable reason) or a local error.
fn failure(c: &Console, ctx: &Ctx, here: &'static str, back: &str, e: &anyhow::Error) -> Response {
    let l = ctx.lang();
    let (status, reason, message) = match e.downcast_ref::<tonic::Status>() {
        Some(s) => {
            let reason = proto::reason(s).map_or("UNSPECIFIED", |r| r.as_str_name());
            let code = match s.code() {
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::Unavailable => StatusCode::BAD_GATEWAY,
                _ => StatusCode::FORBIDDEN,
            };
            (code, reason.to_owned(), s.message().to_owned())
        }
        None => (StatusCode::INTERNAL_SERVER_ERROR, "ERROR".to_owned(), format!("{e:#}")),
    };
    let mut resp = layout(
        c,
        ctx,
        here,
        back,
        html! { div.refused { h2 { (t(l, "refused")) } p { code #reason { (reason) } ": " (message) } } },
    );
    *resp.status_mut() = status;
    resp
}

fn respond(c: &Console, ctx: &Ctx, here: &'static str, back: &str, r: Result<Markup>) -> Response {
    match r {
        Ok(body) => layout(c, ctx, here, back, body),
        Err(e) => failure(c, ctx, here, back, &e),
    }
}

fn csrf(ctx: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.session.csrf); }
}

/// Reads every terminal matching `filter`, 1,000 at a time, until `visit` says stop.
async fn scan(
    c: &Console,
    filter: &v1::ListTerminalsRequest,
    mut visit: impl FnMut(&v1::Terminal) -> bool,
) -> Result<()> {
    let mut token = filter.page_token.clone();
    loop {
        let msg =
            v1::ListTerminalsRequest { request_id: request_id(), page_size: 1000, page_token: token, ..filter.clone() };
        let page =
            registry(c).list_terminals(c.client.signed("/hsca.v1.Registry/ListTerminals", msg)?).await?.into_inner();
        for t in &page.terminals {
            if !visit(t) {
                return Ok(());
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

async fn audit_tail(c: &Console, last: u32, verify: bool) -> Result<v1::ListAuditResponse> {
    let msg = v1::ListAuditRequest { request_id: request_id(), last, verify, ..Default::default() };
    Ok(admin(c).list_audit(c.client.signed("/hsca.v1.Admin/ListAudit", msg)?).await?.into_inner())
}

/// A verification of the audit chain younger than this is reused by the pages.
const CHAIN_FRESH_MS: u64 = 60_000;

/// The audit chain's newest verification (no entries) and when it was made, never waiting for
/// the walk (linear in the log: seconds at millions of entries) unless `now` is asked: `None`
/// while the console's first one runs in the background; when the newest is older than
/// [`CHAIN_FRESH_MS`] a background task verifies again for the pages after this one.
async fn chain_status(c: &Arc<Console>, now: bool) -> Result<Option<(u64, Arc<v1::ListAuditResponse>)>> {
    if now {
        return verify_chain(c).await.map(Some);
    }
    let cached = c.chain.lock().map_err(|_| anyhow::anyhow!("chain cache poisoned"))?.clone();
    let stale = cached.as_ref().is_none_or(|(at, _)| now_ms().saturating_sub(*at) > CHAIN_FRESH_MS);
    if stale && !c.chain_refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
        let c = c.clone();
        tokio::spawn(async move {
            if let Err(e) = verify_chain(&c).await {
                eprintln!("console: audit chain verification failed (retried on the next page): {e:#}");
            }
            c.chain_refreshing.store(false, std::sync::atomic::Ordering::Release);
        });
    }
    Ok(cached)
}

async fn verify_chain(c: &Console) -> Result<(u64, Arc<v1::ListAuditResponse>)> {
    let mut v = audit_tail(c, 1, true).await?;
    v.entries.clear();
    let fresh = (now_ms(), Arc::new(v));
    *c.chain.lock().map_err(|_| anyhow::anyhow!("chain cache poisoned"))? = Some(fresh.clone());
    Ok(fresh)
}

/// The newest `last` entries about `target` below entry `before_seq` (0: from the newest), newest
/// first, from the CA's audit index (however old).
async fn audit_about_before(c: &Console, target: &str, last: u32, before_seq: u64) -> Result<Vec<v1::AuditEntry>> {
    let msg = v1::ListAuditRequest {
        request_id: request_id(),
        last,
        target: target.to_owned(),
        before_seq,
        ..Default::default()
    };
    Ok(admin(c).list_audit(c.client.signed("/hsca.v1.Admin/ListAudit", msg)?).await?.into_inner().entries)
}

fn counts_table(l: Lang, title: &'static str, id: &str, counts: &BTreeMap<String, u64>) -> Markup {
    html! {
        section {
            h2 { (t(l, title)) }
            table id=(id) {
                @for (k, n) in counts { tr { th { (k) } td.num data-key=(k) { (n) } } }
                @if counts.is_empty() { tr { td { (t(l, "none")) } } }
            }
        }
    }
}

/// Bars per hour for the last 48 hours: certificates issued and terminals provisioned.
const HOURS: u64 = 48;
const HOUR: u64 = 3_600_000;

/// Issued and provisioned per hour over the [`HOURS`] hours ending with `now_ms`'s, and per
/// station over those hours, from the registry's hourly counts.
fn hourly_counts(counts: &[v1::HourlyCount], now_ms: u64) -> HourlyCounts {
    let end_hour = now_ms / HOUR + 1;
    let start_hour = end_hour - HOURS;
    let mut out = HourlyCounts {
        start: start_hour * HOUR,
        issued: [0; HOURS as usize],
        provisioned: [0; HOURS as usize],
        by_station: BTreeMap::new(),
    };
    for c in counts.iter().filter(|c| (start_hour..end_hour).contains(&c.hour)) {
        let i = (c.hour - start_hour) as usize;
        let station = out.by_station.entry(c.station.clone()).or_insert((0, 0));
        match c.kind.as_str() {
            "issued" => (out.issued[i], station.0) = (out.issued[i] + c.n, station.0 + c.n),
            "provisioned" => (out.provisioned[i], station.1) = (out.provisioned[i] + c.n, station.1 + c.n),
            _ => {}
        }
    }
    out
}

/// What [`hourly_counts`] found.
struct HourlyCounts {
    start: u64,
    issued: [u64; HOURS as usize],
    provisioned: [u64; HOURS as usize],
    /// Station → (issued, provisioned) over the chart's hours.
    by_station: BTreeMap<String, (u64, u64)>,
}

fn hourly_chart(c: &Console, l: Lang, counts: &[v1::HourlyCount], now_ms: u64) -> Markup {
    let HourlyCounts { start, issued, provisioned, by_station } = hourly_counts(counts, now_ms);
    let max = issued.iter().chain(&provisioned).copied().max().unwrap_or(0).max(1);
    let (w, h, base) = (960u64, 200u64, 170u64);
    let step = w / HOURS;
    let bar = |n: u64| n * (base - 10) / max;
    html! {
        section {
            h2 { (t(l, "per_hour")) }
            p.legend { span.issued { "■ " (t(l, "issued")) " " span #hourly-issued { (issued.iter().sum::<u64>()) } } " "
                       span.provisioned { "■ " (t(l, "provisioned")) " " span #hourly-provisioned { (provisioned.iter().sum::<u64>()) } } }
            svg #hourly viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h) role="img" {
                line x1="0" y1=(base) x2=(w) y2=(base) stroke="#888" {}
                text x="2" y="12" font-size="11" fill="#444" { (max) }
                @for i in 0..HOURS as usize {
                    @let x = i as u64 * step;
                    rect x=(x + 2) y=(base - bar(issued[i])) width=(step / 2 - 2) height=(bar(issued[i])) fill="#2b6cb0" { title { (issued[i]) } }
                    rect x=(x + step / 2) y=(base - bar(provisioned[i])) width=(step / 2 - 2) height=(bar(provisioned[i])) fill="#2f855a" { title { (provisioned[i]) } }
                    @if i % 6 == 0 {
                        text x=(x) y=(base + 18) font-size="11" fill="#444" { (when(c, start + i as u64 * HOUR).get(11..16).unwrap_or("")) }
                    }
                }
            }
            table #hourly-by-station {
                tr { th { (t(l, "station")) } th { (t(l, "issued")) } th { (t(l, "provisioned")) } }
                @for (station, (i, p)) in &by_station {
                    tr data-station=(station) { td { (station) } td.num.issued { (i) } td.num.provisioned { (p) } }
                }
                @if by_station.is_empty() { tr { td { (t(l, "none")) } } }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Overview: the fleet by state, class and manufacturer; the last two days per hour; the audit chain.
pub async fn overview(State(c): C, Extension(ctx): Extension<Ctx>) -> Response {
    let body = async {
        let l = ctx.lang();
        let mut out = html! {};
        if c.allowed.may("Registry/CountTerminals") {
            let now = now_ms();
            let msg = v1::CountTerminalsRequest {
                request_id: request_id(),
                hourly_since_hour: (now / HOUR + 1).saturating_sub(HOURS),
            };
            let n = registry(&c)
                .count_terminals(c.client.signed("/hsca.v1.Registry/CountTerminals", msg)?)
                .await?
                .into_inner();
            let sorted = |m: std::collections::HashMap<String, u64>| m.into_iter().collect::<BTreeMap<_, _>>();
            out = html! {
                (out)
                p.total { (t(l, "total")) ": " strong #total { (n.total) } }
                div.grid {
                    (counts_table(l, "by_state", "by-state", &sorted(n.by_state)))
                    (counts_table(l, "by_class", "by-class", &sorted(n.by_class)))
                    (counts_table(l, "by_manufacturer", "by-manufacturer", &sorted(n.by_manufacturer)))
                }
                (hourly_chart(&c, l, &n.hourly, now))
            };
        }
        if c.allowed.may("Admin/ListAudit") {
            let chain = chain_status(&c, false).await?;
            out = html! {
                (out)
                section {
                    h2 { (t(l, "audit_status")) }
                    (chain_summary(&c, l, &chain))
                }
            };
        }
        out = html! { (out) (freshness_section(&c, l).await?) };
        if let Some(fleet) = fleet(&c).filter(|_| c.may_read_alerts()) {
            let msg =
                v1::ListAlertsRequest { request_id: request_id(), open_only: true, limit: 1000, ..Default::default() };
            let open = fleet.clone().list_alerts(fleet_client(&c)?.signed("/hsca.v1.Fleet/ListAlerts", msg)?).await?;
            let mut by_rule = BTreeMap::new();
            for a in &open.into_inner().alerts {
                *by_rule.entry(a.rule.clone()).or_insert(0u64) += 1;
            }
            out = html! { (out) (counts_table(l, "open_alerts_by_rule", "alerts-by-rule", &by_rule)) };
        } else if c.fleet.is_none() {
            out = html! { (out) section { h2 { (t(l, "alerts")) } p.followup { (t(l, "alerts_not_configured")) } } };
        }
        Ok(out)
    }
    .await;
    respond(&c, &ctx, "overview", "/", body)
}

/// CRL and OCSP freshness, fetched from the CA's HTTP side as a relying party would, each
/// signature checked against the issuing CA the CA serves (itself checked against the pinned root).
async fn freshness_section(c: &Console, l: Lang) -> Result<Markup> {
    let msg = v1::GetCaChainRequest { request_id: request_id() };
    let chain =
        ca(c).get_ca_chain(c.client.signed("/hsca.v1.CertificateAuthority/GetCaChain", msg)?).await?.into_inner();
    let (issuing, served_root) = crate::revocation::chain_from_der(&chain.issuing_der, &chain.root_der)?;
    if served_root != c.pinned_root {
        anyhow::bail!("the CA serves a root other than the one this identity pins");
    }
    let own = c.own_cert.clone();
    let (crl, ocsp) = tokio::task::spawn_blocking(move || super::freshness::probe(&own, &issuing)).await?;
    let now = now_ms();
    let age = |ms: u64| format!("{} min", now.saturating_sub(ms) / 60_000);
    let next = |ms: Option<u64>| ms.map_or_else(|| "—".to_owned(), |m| when(c, m));
    let verdict =
        |next: Option<u64>| if next.is_some_and(|n| n < now) { ("bad", t(l, "stale")) } else { ("ok", t(l, "fresh")) };
    Ok(html! {
        section {
            h2 { (t(l, "freshness")) }
            table #freshness {
                tr { th {} th { (t(l, "this_update")) } th { (t(l, "age")) } th { (t(l, "next_update")) } th { (t(l, "state")) } th {} }
                @match &crl {
                    Ok(v) => tr #crl-fresh class=(verdict(v.next_update_ms).0) {
                        th { "CRL" @if let Some(n) = v.number { " #" (n) } }
                        td { (when(c, v.this_update_ms)) } td { (age(v.this_update_ms)) } td { (next(v.next_update_ms)) }
                        td { (verdict(v.next_update_ms).1) } td { code { (v.url) } }
                    },
                    Err(e) => tr #crl-fresh.bad { th { "CRL" } td colspan="5" { (format!("{e:#}")) } },
                }
                @match &ocsp {
                    Ok(v) => tr #ocsp-fresh class=(verdict(v.next_update_ms).0) {
                        th { "OCSP" }
                        td { (when(c, v.this_update_ms)) } td { (age(v.produced_at_ms)) } td { (next(v.next_update_ms)) }
                        td { (verdict(v.next_update_ms).1) " (" (v.status) ")" } td { code { (v.url) } }
                    },
                    Err(e) => tr #ocsp-fresh.bad { th { "OCSP" } td colspan="5" { (format!("{e:#}")) } },
                }
            }
        }
    })
}

fn chain_summary(c: &Console, l: Lang, chain: &Option<(u64, Arc<v1::ListAuditResponse>)>) -> Markup {
    let Some((at, a)) = chain else {
        return html! { p #chain-running { (t(l, "verification_running")) } };
    };
    html! {
        p #chain-at { (t(l, "verified_at")) " " (when(c, *at)) }
        @if a.chain_verified {
            p #chain.ok { (t(l, "chain_ok")) ": " (a.chain_length) " " (t(l, "entries")) }
            @if !a.checkpoint_key_configured {
                p { (t(l, "no_checkpoint_key")) }
            } @else {
                p { (t(l, "checkpoints")) ": " (a.checkpoints_verified) "; " (t(l, "last_checkpoint")) " " (a.last_checkpoint_seq) }
            }
        } @else {
            p #chain.bad { (t(l, "chain_broken")) ": " (a.chain_error) }
        }
    }
}

/// The terminal list's filters.
#[derive(serde::Deserialize, Default)]
pub struct TerminalQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: i32,
    #[serde(default)]
    class: i32,
    #[serde(default)]
    manufacturer: String,
    #[serde(default)]
    lot: String,
    #[serde(default)]
    page: String,
}

/// Terminals: serial prefix, state/class/manufacturer/lot filters, paged by the registry's cursor.
pub async fn terminals(State(c): C, Extension(ctx): Extension<Ctx>, Query(q): Query<TerminalQuery>) -> Response {
    let body = async {
        let l = ctx.lang();
        let filter = v1::ListTerminalsRequest {
            state: q.state,
            class: q.class,
            manufacturer: q.manufacturer.trim().to_owned(),
            lot: q.lot.trim().to_owned(),
            page_token: q.page.clone(),
            ..Default::default()
        };
        let prefix = q.q.trim();
        let (rows, next) = if prefix.is_empty() {
            let msg = v1::ListTerminalsRequest { request_id: request_id(), page_size: PAGE, ..filter.clone() };
            let page = registry(&c)
                .list_terminals(c.client.signed("/hsca.v1.Registry/ListTerminals", msg)?)
                .await?
                .into_inner();
            (page.terminals, page.next_page_token)
        } else {
            prefix_search(&c, &filter, prefix).await?
        };
        let states = ["registered", "issued", "provisioned", "active", "revoked"];
        let link = |token: &str| {
            format!(
                "/terminals?q={}&state={}&class={}&manufacturer={}&lot={}&page={}",
                seg(prefix),
                q.state,
                q.class,
                seg(&q.manufacturer),
                seg(&q.lot),
                seg(token)
            )
        };
        Ok(html! {
            form.filters method="get" action="/terminals" {
                label { (t(l, "serial_prefix")) " " input #q name="q" value=(prefix) autofocus; }
                label { (t(l, "state")) " "
                    select name="state" {
                        option value="0" { (t(l, "any")) }
                        @for (i, s) in states.iter().enumerate() {
                            option value=(i + 1) selected[q.state == i as i32 + 1] { (s) }
                        }
                    }
                }
                label { (t(l, "class")) " "
                    select name="class" {
                        option value="0" { (t(l, "any")) }
                        @for (i, s) in ["I", "II", "III"].iter().enumerate() {
                            option value=(i + 1) selected[q.class == i as i32 + 1] { (s) }
                        }
                    }
                }
                label { (t(l, "manufacturer")) " " input name="manufacturer" value=(q.manufacturer) size="6"; }
                label { (t(l, "lot")) " " input name="lot" value=(q.lot) size="10"; }
                button #search type="submit" { (t(l, "search")) }
            }
            (terminal_table(l, &rows))
            @if !next.is_empty() { p { a #next href=(link(&next)) { (t(l, "next_page")) " →" } } }
        })
    }
    .await;
    respond(&c, &ctx, "terminals", "/terminals", body)
}

/// The registry lists in serial order from a cursor that is the last serial shown, so the
/// terminals with a prefix are one contiguous run right after the prefix itself: the exact serial
/// is one lookup, the rest a page from there, fast at millions. (Relies on the cursor being a
/// serial; a `serial_prefix` filter in `ListTerminalsRequest` would make that explicit.)
async fn prefix_search(
    c: &Console,
    filter: &v1::ListTerminalsRequest,
    prefix: &str,
) -> Result<(Vec<v1::Terminal>, String)> {
    let mut rows = Vec::new();
    if filter.page_token.is_empty() {
        let msg = v1::GetTerminalRequest { request_id: request_id(), serial: prefix.to_owned() };
        match registry(c).get_terminal(c.client.signed("/hsca.v1.Registry/GetTerminal", msg)?).await {
            Ok(t) => rows.extend(Some(t.into_inner()).filter(|t| admits(filter, t))),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(s.into()),
        }
    }
    let token = if filter.page_token.is_empty() { prefix.to_owned() } else { filter.page_token.clone() };
    let msg =
        v1::ListTerminalsRequest { request_id: request_id(), page_size: PAGE, page_token: token, ..filter.clone() };
    let page = registry(c).list_terminals(c.client.signed("/hsca.v1.Registry/ListTerminals", msg)?).await?.into_inner();
    let all_match = page.terminals.iter().all(|t| t.serial.starts_with(prefix));
    rows.extend(page.terminals.into_iter().take_while(|t| t.serial.starts_with(prefix)));
    let next = if all_match { page.next_page_token } else { String::new() };
    Ok((rows, next))
}

/// Whether `t` passes the list's filters (for the exact-serial lookup, which has none).
fn admits(f: &v1::ListTerminalsRequest, t: &v1::Terminal) -> bool {
    (f.state == 0 || f.state == t.state)
        && (f.class == 0 || f.class == t.class)
        && (f.manufacturer.is_empty() || f.manufacturer == t.manufacturer)
        && (f.lot.is_empty() || f.lot == t.lot)
}

fn terminal_table(l: Lang, rows: &[v1::Terminal]) -> Markup {
    html! {
        table #terminals {
            tr { th { (t(l, "serial")) } th { (t(l, "class")) } th { (t(l, "manufacturer")) } th { (t(l, "model")) }
                 th { (t(l, "lot")) } th { (t(l, "state")) } th { (t(l, "certificate")) } }
            @for r in rows.iter().map(crate::row) {
                tr {
                    td { a href=(format!("/terminals/{}", seg(&r.serial))) { (r.serial) } }
                    td { (r.class) } td { (r.manufacturer) } td { (r.model) } td { (r.lot) }
                    td.state { (r.state) } td { code { (r.active_certificate) } }
                }
            }
            @if rows.is_empty() { tr { td colspan="7" { (t(l, "none")) } } }
        }
    }
}

/// Which of a terminal's audit entries its page shows: `last` of them (at most
/// [`AUDIT_PER_TARGET`]) below `before` (absent: from the newest).
#[derive(serde::Deserialize, Default)]
pub struct TerminalAuditQuery {
    before: Option<u64>,
    last: Option<u32>,
}

/// A terminal: its record, certificates (from the audit log), activations, audit entries, and
/// a link to older entries when a page is full (refusals naming its serial can fill one).
pub async fn terminal(
    State(c): C,
    Extension(ctx): Extension<Ctx>,
    Path(serial): Path<String>,
    Query(q): Query<TerminalAuditQuery>,
) -> Response {
    let back = format!("/terminals/{}", seg(&serial));
    let last = q.last.unwrap_or(AUDIT_PER_TARGET).clamp(1, AUDIT_PER_TARGET);
    let before = q.before.unwrap_or(0);
    let body = async {
        let l = ctx.lang();
        let msg = v1::GetTerminalRequest { request_id: request_id(), serial: serial.clone() };
        let term = registry(&c).get_terminal(c.client.signed("/hsca.v1.Registry/GetTerminal", msg)?).await?.into_inner();
        let r = crate::row(&term);
        // The terminal's entries, newest first; the certificates they say were issued for it
        // (newest first) with the active one; then every entry about those (revocations name the
        // certificate).
        let mut entries = if c.allowed.may("Admin/ListAudit") {
            audit_about_before(&c, &serial, last, before).await?
        } else {
            Vec::new()
        };
        let older = (entries.len() as u64 >= u64::from(last))
            .then(|| entries.iter().map(|e| e.seq).min())
            .flatten()
            .map(|seq| format!("/terminals/{}?last={last}&before={seq}", seg(&serial)));
        let mut certs: Vec<String> = entries
            .iter()
            .filter(|e| matches!(e.action.as_str(), "issue" | "reissue") && e.outcome == "ok")
            .filter_map(|e| e.detail.strip_prefix("certificate ").map(str::to_owned))
            .collect();
        if !term.active_certificate_serial.is_empty() && !certs.contains(&term.active_certificate_serial) {
            certs.insert(0, term.active_certificate_serial.clone());
        }
        if c.allowed.may("Admin/ListAudit") {
            for s in &certs {
                entries.extend(audit_about_before(&c, s, last, before).await?);
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        entries.dedup_by_key(|e| e.seq);
        let mut statuses = Vec::new();
        for s in &certs {
            let msg = v1::GetCertificateStatusRequest { request_id: request_id(), certificate_serial: s.clone() };
            let st = ca(&c)
                .get_certificate_status(c.client.signed("/hsca.v1.CertificateAuthority/GetCertificateStatus", msg)?)
                .await?
                .into_inner();
            statuses.push((s.clone(), st));
        }
        let activations = if c.allowed.may("Registry/ListActivations") {
            let msg = v1::ListActivationsRequest { request_id: request_id(), serial: serial.clone() };
            registry(&c)
                .list_activations(c.client.signed("/hsca.v1.Registry/ListActivations", msg)?)
                .await?
                .into_inner()
                .activations
        } else {
            Vec::new()
        };
        // Its alerts from the fleet service (all, acknowledged too), when one is configured.
        let alerts = match fleet(&c).filter(|_| c.may_read_alerts()) {
            Some(mut fleet) => {
                let msg = v1::ListAlertsRequest {
                    request_id: request_id(),
                    terminal_serial: serial.clone(),
                    limit: 100,
                    ..Default::default()
                };
                Some(fleet.list_alerts(fleet_client(&c)?.signed("/hsca.v1.Fleet/ListAlerts", msg)?).await?.into_inner().alerts)
            }
            None => None,
        };
        let may_revoke = c.allowed.may("Admin/RevokeCertificate") && !term.active_certificate_serial.is_empty();
        Ok(html! {
            table #record {
                tr { th { (t(l, "serial")) } td #serial { (r.serial) } }
                tr { th { (t(l, "state")) } td #state { (r.state) } }
                tr { th { (t(l, "class")) } td { (r.class) } }
                tr { th { (t(l, "manufacturer")) } td { (r.manufacturer) } }
                tr { th { (t(l, "model")) } td { (r.model) } }
                tr { th { (t(l, "lot")) } td { (r.lot) } }
            }
            h2 { (t(l, "certificate")) }
            table #certificates {
                tr { th { (t(l, "serial")) } th { (t(l, "cert_status")) } th { (t(l, "revoked_at")) } th { (t(l, "reason")) } th {} }
                @for (s, st) in &statuses {
                    tr {
                        td { code { (s) } }
                        td.status { (v1::certificate_status::State::try_from(st.state).map_or("?".into(), |x| x.as_str_name().to_lowercase())) }
                        td { (when(&c, st.revoked_at_ms)) }
                        td { @if st.revoked_at_ms > 0 { (v1::RevocationReason::try_from(st.reason).map_or("?".into(), |x| x.as_str_name().to_lowercase())) } }
                        td { a href=(format!("/certificates/{}", seg(s))) download { (t(l, "download_pem")) } }
                    }
                }
                @if statuses.is_empty() { tr { td colspan="5" { (t(l, "none")) } } }
            }
            @if may_revoke {
                h2 { (t(l, "revoke_one")) }
                form #revoke method="post" action="/revoke" {
                    (csrf(&ctx))
                    input type="hidden" name="terminal" value=(term.serial);
                    label { (t(l, "reason")) " " (reason_select()) }
                    button #do-revoke type="submit" { (t(l, "revoke")) " " (term.active_certificate_serial) }
                }
            }
            h2 { (t(l, "provisioning")) }
            (audit_table(&c, l, entries.iter().rev().filter(|e| e.action == "confirm").collect()))
            h2 { (t(l, "activations")) }
            table #activations {
                tr { th { (t(l, "time")) } th { (t(l, "operator")) } th { (t(l, "institution")) } th { (t(l, "position")) } }
                @for a in &activations {
                    tr { td { (when(&c, a.at_ms)) } td { (a.operator) } td { (a.institution) } td { (format!("{:.5}, {:.5}", a.latitude, a.longitude)) } }
                }
                @if activations.is_empty() { tr { td colspan="4" { (t(l, "none")) } } }
            }
            @if let Some(alerts) = &alerts {
                h2 { (t(l, "alerts")) }
                table #terminal-alerts {
                    tr { th { (t(l, "id")) } th { (t(l, "rule")) } th { (t(l, "last_seen")) } th { (t(l, "occurrences")) }
                         th { (t(l, "alert_action")) } th { (t(l, "state")) } }
                    @for a in alerts {
                        tr data-rule=(a.rule) {
                            td { a href=(format!("/alerts/{}", a.id)) { (a.id) } }
                            td { (a.rule) } td { (when(&c, a.last_ms)) } td.num { (a.occurrences) }
                            td { (a.action) } td { (alert_state(l, a)) }
                        }
                    }
                    @if alerts.is_empty() { tr { td colspan="6" { (t(l, "none")) } } }
                }
            }
            h2 { (t(l, "audit_of_terminal")) }
            (audit_table(&c, l, entries.iter().collect()))
            @if let Some(href) = &older { p { a #older href=(href) { (t(l, "older_entries")) } } }
        })
    }
    .await;
    respond(&c, &ctx, "terminals", &back, body)
}

fn reason_select() -> Markup {
    html! {
        select name="reason" {
            @for (rfc, _, _) in crate::REASONS { option value=(rfc) { (rfc) } }
        }
    }
}

fn audit_table(c: &Console, l: Lang, entries: Vec<&v1::AuditEntry>) -> Markup {
    html! {
        table.audit {
            tr { th { "#" } th { (t(l, "time")) } th { (t(l, "actor")) } th { (t(l, "action")) } th { (t(l, "target")) }
                 th { (t(l, "outcome")) } th { (t(l, "detail")) } }
            @for e in &entries {
                tr { td { (e.seq) } td { (when(c, e.time_ms)) } td { (e.actor) } td { (e.action) } td { (e.target) }
                     td { (e.outcome) } td { (e.detail) } }
            }
            @if entries.is_empty() { tr { td colspan="7" { (t(l, "none")) } } }
        }
    }
}

/// A certificate as a PEM download.
pub async fn certificate_pem(State(c): C, Extension(ctx): Extension<Ctx>, Path(serial): Path<String>) -> Response {
    let r = async {
        let msg = v1::GetCertificateRequest { request_id: request_id(), certificate_serial: serial.clone() };
        let info = ca(&c)
            .get_certificate(c.client.signed("/hsca.v1.CertificateAuthority/GetCertificate", msg)?)
            .await?
            .into_inner();
        crate::pem("CERTIFICATE", &info.certificate_der)
    }
    .await;
    match r {
        Ok(pem) => (
            [
                (header::CONTENT_TYPE, "application/x-pem-file".to_owned()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}.pem\"", seg(&serial))),
            ],
            pem,
        )
            .into_response(),
        Err(e) => failure(&c, &ctx, "terminals", "/terminals", &e),
    }
}

/// The revoke-one form.
#[derive(serde::Deserialize)]
pub struct RevokeForm {
    terminal: String,
    reason: String,
}

/// Revokes a terminal's active certificate; back to its page.
pub async fn revoke(State(c): C, Extension(ctx): Extension<Ctx>, Form(f): Form<RevokeForm>) -> Response {
    let back = format!("/terminals/{}", seg(&f.terminal));
    let r = async {
        let reason = crate::parse_reason(&f.reason).map_err(|e| anyhow::anyhow!(e))?;
        let msg = v1::RevokeCertificateRequest {
            request_id: request_id(),
            certificate_serial: String::new(),
            terminal_serial: f.terminal.clone(),
            reason: crate::reason_code(reason),
            invalidity_ms: 0,
        };
        admin(&c).revoke_certificate(c.client.signed("/hsca.v1.Admin/RevokeCertificate", msg)?).await?;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(e) => failure(&c, &ctx, "terminals", &back, &e),
    }
}

/// A bulk filter, as previewed and as requested.
#[derive(serde::Deserialize, Default)]
pub struct BulkForm {
    #[serde(default)]
    manufacturer: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    lot: String,
    #[serde(default)]
    reason: String,
}

impl BulkForm {
    fn any(&self) -> bool {
        [&self.manufacturer, &self.model, &self.lot].iter().any(|s| !s.trim().is_empty())
    }
}

/// Revocation: the bulk request (with how many it covers) and the approvals queue.
pub async fn revocation(State(c): C, Extension(ctx): Extension<Ctx>, Query(q): Query<BulkForm>) -> Response {
    let body = async {
        let l = ctx.lang();
        let covers = if q.any() && c.allowed.may("Registry/ListTerminals") {
            let filter = v1::ListTerminalsRequest {
                manufacturer: q.manufacturer.trim().to_owned(),
                lot: q.lot.trim().to_owned(),
                ..Default::default()
            };
            let mut n = 0u64;
            let model = q.model.trim();
            scan(&c, &filter, |t| {
                n += u64::from(!t.active_certificate_serial.is_empty() && (model.is_empty() || t.model == model));
                true
            })
            .await?;
            Some(n)
        } else {
            None
        };
        let msg = v1::ListApprovalsRequest { request_id: request_id(), pending_only: false };
        let list = admin(&c).list_approvals(c.client.signed("/hsca.v1.Admin/ListApprovals", msg)?).await?.into_inner();
        let may_decide = c.allowed.may("Admin/DecideApproval");
        Ok(html! {
            @if c.allowed.may("Admin/RequestBulkRevocation") {
                h2 { (t(l, "bulk")) }
                form #preview method="get" action="/revocation" {
                    label { (t(l, "manufacturer")) " " input name="manufacturer" value=(q.manufacturer) size="6"; }
                    label { (t(l, "model")) " " input name="model" value=(q.model) size="8"; }
                    label { (t(l, "lot")) " " input name="lot" value=(q.lot) size="10"; }
                    button #count type="submit" { (t(l, "preview")) }
                }
                @if let Some(n) = covers {
                    p { (t(l, "covers")) ": " strong #covers { (n) } }
                    form #bulk method="post" action="/revocation/bulk" {
                        (csrf(&ctx))
                        input type="hidden" name="manufacturer" value=(q.manufacturer);
                        input type="hidden" name="model" value=(q.model);
                        input type="hidden" name="lot" value=(q.lot);
                        label { (t(l, "reason")) " " (reason_select()) }
                        button #request type="submit" { (t(l, "request")) }
                    }
                }
            }
            h2 { (t(l, "approvals")) }
            @if !list.dual_control_available { p.warn { (t(l, "dual_unavailable")) " (" (list.active_admins.join(", ")) ")" } }
            table #approvals {
                tr { th { (t(l, "id")) } th { (t(l, "state")) } th { (t(l, "what")) } th { (t(l, "requested_by")) } th { (t(l, "time")) } th {} }
                @for a in &list.approvals {
                    tr data-id=(a.id) {
                        td { code { (a.id) } } td.state { (a.state) } td { (crate::approvals::what(a)) }
                        td { (a.requested_by) } td { (when(&c, a.created_ms)) }
                        td {
                            @if may_decide && a.state == "pending" {
                                form method="post" action="/approvals/decide" {
                                    (csrf(&ctx))
                                    input type="hidden" name="id" value=(a.id);
                                    button name="decision" value="approve" type="submit" { (t(l, "approve")) }
                                    " "
                                    button name="decision" value="reject" type="submit" { (t(l, "reject")) }
                                }
                            } @else if !a.decided_by.is_empty() { (a.decided_by) }
                        }
                    }
                }
                @if list.approvals.is_empty() { tr { td colspan="6" { (t(l, "none")) } } }
            }
        })
    }
    .await;
    respond(&c, &ctx, "revocation", "/revocation", body)
}

/// Asks for a bulk revocation; a second administrator decides in the queue.
pub async fn bulk(State(c): C, Extension(ctx): Extension<Ctx>, Form(f): Form<BulkForm>) -> Response {
    let r = async {
        let reason = crate::parse_reason(&f.reason).map_err(|e| anyhow::anyhow!(e))?;
        let msg = v1::RequestBulkRevocationRequest {
            request_id: request_id(),
            manufacturer: f.manufacturer.trim().to_owned(),
            model: f.model.trim().to_owned(),
            lot: f.lot.trim().to_owned(),
            reason: crate::reason_code(reason),
            invalidity_ms: 0,
        };
        admin(&c).request_bulk_revocation(c.client.signed("/hsca.v1.Admin/RequestBulkRevocation", msg)?).await?;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Redirect::to("/revocation").into_response(),
        Err(e) => failure(&c, &ctx, "revocation", "/revocation", &e),
    }
}

/// Approve or reject.
#[derive(serde::Deserialize)]
pub struct DecideForm {
    id: String,
    decision: String,
}

/// The second administrator's decision.
pub async fn decide(State(c): C, Extension(ctx): Extension<Ctx>, Form(f): Form<DecideForm>) -> Response {
    let r = async {
        let approve = match f.decision.as_str() {
            "approve" => true,
            "reject" => false,
            other => anyhow::bail!("decision {other:?}: approve or reject"),
        };
        let msg = v1::DecideApprovalRequest { request_id: request_id(), id: f.id.clone(), approve };
        admin(&c).decide_approval(c.client.signed("/hsca.v1.Admin/DecideApproval", msg)?).await?;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Redirect::to("/revocation").into_response(),
        Err(e) => failure(&c, &ctx, "revocation", "/revocation", &e),
    }
}

/// Audit filters.
#[derive(serde::Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    last: Option<u32>,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    target: String,
    /// Verify the whole chain now instead of showing the newest verification.
    #[serde(default)]
    verify: bool,
}

/// Audit: the newest entries with filters, and the chain's verification.
pub async fn audit(State(c): C, Extension(ctx): Extension<Ctx>, Query(q): Query<AuditQuery>) -> Response {
    let body = async {
        let l = ctx.lang();
        let last = q.last.unwrap_or(200).clamp(1, AUDIT_WINDOW);
        let a = audit_tail(&c, last, false).await?;
        let chain = chain_status(&c, q.verify).await?;
        let keep = |want: &str, have: &str| want.trim().is_empty() || have.contains(want.trim());
        let shown: Vec<_> = a
            .entries
            .iter()
            .rev()
            .filter(|e| keep(&q.actor, &e.actor) && keep(&q.action, &e.action) && keep(&q.target, &e.target))
            .collect();
        Ok(html! {
            section {
                h2 { (t(l, "verify_result")) }
                (chain_summary(&c, l, &chain))
                a #verify-now href="/audit?verify=true" { (t(l, "verify_now")) }
            }
            form.filters method="get" action="/audit" {
                label { (t(l, "last_n")) " " input name="last" value=(last) size="6"; }
                label { (t(l, "actor")) " " input name="actor" value=(q.actor) size="10"; }
                label { (t(l, "action")) " " input name="action" value=(q.action) size="10"; }
                label { (t(l, "target")) " " input name="target" value=(q.target) size="14"; }
                button type="submit" { (t(l, "filter")) }
            }
            (audit_table(&c, l, shown))
        })
    }
    .await;
    respond(&c, &ctx, "audit", "/audit", body)
}

/// Principals (administrators only): every principal from the CA's `ListPrincipals` with its
/// role, manufacturers, state and last activity, and a disable button on each enabled one.
pub async fn principals(State(c): C, Extension(ctx): Extension<Ctx>) -> Response {
    let body = async {
        let l = ctx.lang();
        let msg = v1::ListPrincipalsRequest { request_id: request_id() };
        let list =
            admin(&c).list_principals(c.client.signed("/hsca.v1.Admin/ListPrincipals", msg)?).await?.into_inner();
        let may_disable = c.allowed.may("Admin/DisablePrincipal");
        Ok(html! {
            p.note {
                (t(l, "principals_note"))
                // An older CA looked only this far back.
                @if list.activity_window > 0 { " (" (list.activity_window) ")" }
            }
            table #principals {
                tr { th { (t(l, "name")) } th { (t(l, "role")) } th { (t(l, "manufacturer")) } th { (t(l, "state")) }
                     th { (t(l, "last_activity")) } th { (t(l, "action")) } th { (t(l, "created_by")) } th {} }
                @for p in &list.principals {
                    tr data-name=(p.name) {
                        td { (p.name) }
                        td { (p.role) }
                        td { (p.manufacturers.join(", ")) }
                        td.state { (principal_state(l, p)) }
                        td { (when(&c, p.last_activity_ms)) }
                        td { (p.last_action) }
                        td { (p.created_by) }
                        td {
                            @if may_disable && p.enabled && p.name != c.name {
                                form.disable method="post" action="/principals/disable" {
                                    (csrf(&ctx))
                                    input type="hidden" name="name" value=(p.name);
                                    button type="submit" { (t(l, "disable")) }
                                }
                            }
                        }
                    }
                }
            }
        })
    }
    .await;
    respond(&c, &ctx, "principals", "/principals", body)
}

fn principal_state(l: Lang, p: &v1::Principal) -> &'static str {
    match (p.enabled, p.pending_approval) {
        (false, _) => t(l, "disabled"),
        (true, true) => t(l, "pending"),
        (true, false) => t(l, "enabled"),
    }
}

/// The disable form.
#[derive(serde::Deserialize)]
pub struct DisableForm {
    name: String,
}

/// Disables a principal.
pub async fn disable(State(c): C, Extension(ctx): Extension<Ctx>, Form(f): Form<DisableForm>) -> Response {
    let r = async {
        let msg = v1::DisablePrincipalRequest { request_id: request_id(), name: f.name.clone() };
        admin(&c).disable_principal(c.client.signed("/hsca.v1.Admin/DisablePrincipal", msg)?).await?;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Redirect::to("/principals").into_response(),
        Err(e) => failure(&c, &ctx, "principals", "/principals", &e),
    }
}

fn fleet_client(c: &Console) -> Result<&proto::client::Client> {
    c.fleet.as_ref().ok_or_else(|| anyhow::anyhow!("the fleet service is not configured"))
}

fn fleet(c: &Console) -> Option<FleetClient<Channel>> {
    c.fleet.as_ref().map(|f| FleetClient::new(f.channel.clone()))
}

/// The alerts list's filters.
#[derive(serde::Deserialize, Default)]
pub struct AlertsQuery {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    rule: String,
}

/// Alerts from the fleet service, newest first: open ones, or all.
pub async fn alerts(State(c): C, Extension(ctx): Extension<Ctx>, Query(q): Query<AlertsQuery>) -> Response {
    let l = ctx.lang();
    let Some(mut fleet) = fleet(&c) else { return fleet_not_configured(&c, &ctx) };
    let body = async {
        let rule = q.rule.trim().to_owned();
        let msg = v1::ListAlertsRequest {
            request_id: request_id(),
            open_only: !q.all,
            rule: rule.clone(),
            limit: 500,
            ..Default::default()
        };
        let list = fleet.list_alerts(fleet_client(&c)?.signed("/hsca.v1.Fleet/ListAlerts", msg)?).await?.into_inner();
        let rules = ["clone", "relocation", "counterfeit", "tamper", "silent"];
        Ok(html! {
            form.filters method="get" action="/alerts" {
                label { (t(l, "rule")) " "
                    select name="rule" {
                        option value="" { (t(l, "any")) }
                        @for r in rules { option value=(r) selected[rule == r] { (r) } }
                    }
                }
                label { input type="checkbox" name="all" value="true" checked[q.all]; " " (t(l, "show_all")) }
                button type="submit" { (t(l, "filter")) }
            }
            table #alerts {
                tr { th { (t(l, "id")) } th { (t(l, "rule")) } th { (t(l, "serial")) } th { (t(l, "last_seen")) }
                     th { (t(l, "occurrences")) } th { (t(l, "alert_action")) } th { (t(l, "state")) } }
                @for a in &list.alerts {
                    tr data-id=(a.id) data-rule=(a.rule) {
                        td { a href=(format!("/alerts/{}", a.id)) { (a.id) } }
                        td { (a.rule) }
                        td { @if a.terminal_serial.is_empty() { "—" } @else {
                            a href=(format!("/terminals/{}", seg(&a.terminal_serial))) { (a.terminal_serial) } } }
                        td { (when(&c, a.last_ms)) }
                        td.num { (a.occurrences) }
                        td { (a.action) }
                        td { (alert_state(l, a)) }
                    }
                }
                @if list.alerts.is_empty() { tr { td colspan="7" { (t(l, "none")) } } }
            }
        })
    }
    .await;
    respond(&c, &ctx, "alerts", "/alerts", body)
}

/// The alerts pages when the console was started without `--fleet`.
fn fleet_not_configured(c: &Console, ctx: &Ctx) -> Response {
    let l = ctx.lang();
    layout(c, ctx, "alerts", "/alerts", html! { p #not-configured.followup { (t(l, "alerts_not_configured")) } })
}

fn alert_state(l: Lang, a: &v1::Alert) -> String {
    if a.acknowledged { format!("{} {}", t(l, "acknowledged_by"), a.acknowledged_by) } else { t(l, "open").into() }
}

/// One alert: its fields, its evidence, a relocation's positions drawn, and acknowledging it.
pub async fn alert(State(c): C, Extension(ctx): Extension<Ctx>, Path(id): Path<u64>) -> Response {
    let l = ctx.lang();
    let Some(mut fleet) = fleet(&c) else { return fleet_not_configured(&c, &ctx) };
    let back = format!("/alerts/{id}");
    let body = async {
        let msg = v1::GetAlertRequest { request_id: request_id(), id };
        let a = fleet.get_alert(fleet_client(&c)?.signed("/hsca.v1.Fleet/GetAlert", msg)?).await?.into_inner();
        let evidence: serde_json::Value = serde_json::from_str(&a.evidence_json)
            .unwrap_or_else(|_| serde_json::Value::String(a.evidence_json.clone()));
        let pretty = serde_json::to_string_pretty(&evidence).unwrap_or_default();
        Ok(html! {
            table #alert {
                tr { th { (t(l, "id")) } td { (a.id) } }
                tr { th { (t(l, "rule")) } td #rule { (a.rule) } }
                tr { th { (t(l, "serial")) } td { @if a.terminal_serial.is_empty() { "—" } @else {
                    a href=(format!("/terminals/{}", seg(&a.terminal_serial))) { (a.terminal_serial) } } } }
                tr { th { (t(l, "certificate")) } td { (a.certificate_serial) } }
                tr { th { (t(l, "first_seen")) } td { (when(&c, a.first_ms)) } }
                tr { th { (t(l, "last_seen")) } td { (when(&c, a.last_ms)) } }
                tr { th { (t(l, "occurrences")) } td { (a.occurrences) } }
                tr { th { (t(l, "source_address")) } td { (a.source_address) } }
                tr { th { (t(l, "alert_action")) } td { (a.action) } }
                tr { th { (t(l, "state")) } td #alert-state { (alert_state(l, &a)) } }
                @if !a.note.is_empty() { tr { th { (t(l, "note")) } td { (a.note) } } }
            }
            @if a.rule == "relocation" { @if let Some(map) = relocation_map(l, &evidence) { (map) } }
            h2 { (t(l, "evidence")) }
            pre #evidence { (pretty) }
            @if c.may_ack_alerts() && !a.acknowledged {
                form #ack method="post" action=(format!("/alerts/{id}/ack")) {
                    (csrf(&ctx))
                    label { (t(l, "note")) " " input name="note" size="40"; }
                    button type="submit" { (t(l, "acknowledge")) }
                }
            }
        })
    }
    .await;
    respond(&c, &ctx, "alerts", &back, body)
}

/// The acknowledge form.
#[derive(serde::Deserialize)]
pub struct AckForm {
    #[serde(default)]
    note: String,
}

/// Acknowledges an alert (the fleet service decides whether this identity may).
pub async fn ack_alert(
    State(c): C,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<u64>,
    Form(f): Form<AckForm>,
) -> Response {
    let r = async {
        let mut fleet = fleet(&c).ok_or_else(|| anyhow::anyhow!("the fleet service is not configured"))?;
        let msg = v1::AckAlertRequest { request_id: request_id(), id, note: f.note.trim().to_owned() };
        fleet.ack_alert(fleet_client(&c)?.signed("/hsca.v1.Fleet/AckAlert", msg)?).await?;
        Ok(())
    }
    .await;
    match r {
        Ok(()) => Redirect::to(&format!("/alerts/{id}")).into_response(),
        Err(e) => failure(&c, &ctx, "alerts", &format!("/alerts/{id}"), &e),
    }
}

/// A relocation's reported position against its reference and radius, as SVG: a local
/// equirectangular projection around the reference (distances of tens to hundreds of km, where
/// its error is small), north up, with a scale bar — no map service, no tiles.
fn relocation_map(l: Lang, evidence: &serde_json::Value) -> Option<Markup> {
    // One occurrence's evidence, or {first, latest} once the alert repeated: every position shown.
    let occurrences: Vec<&serde_json::Value> = match (evidence.get("first"), evidence.get("latest")) {
        (Some(first), Some(latest)) => vec![first, latest],
        _ => vec![evidence],
    };
    let pair = |e: &serde_json::Value, k: &str| Some((e[k][0].as_f64()?, e[k][1].as_f64()?));
    let reference = pair(occurrences[0], "reference")?;
    let radius_km = occurrences[0]["radius_km"].as_f64().filter(|r| r.is_finite() && *r > 0.0)?;
    let km = |(lat, lon): (f64, f64)| {
        let x = (lon - reference.1) * 111.32 * reference.0.to_radians().cos();
        let y = (lat - reference.0) * 110.57;
        (x, y)
    };
    // (lat, lon), its offset from the reference in km (east, north), its distance in km.
    type Reported = ((f64, f64), (f64, f64), f64);
    let reported: Vec<Reported> = occurrences
        .iter()
        .filter_map(|e| {
            let p = pair(e, "position")?;
            Some((p, km(p), e["distance_km"].as_f64().unwrap_or(f64::NAN)))
        })
        .collect();
    let extent = reported.iter().map(|(_, (x, y), _)| x.hypot(*y)).fold(radius_km, f64::max) * 1.25;
    if reported.is_empty() || !extent.is_finite() {
        return None;
    }
    let (size, mid) = (420.0, 210.0);
    let scale = mid / extent;
    let at = |(x, y): (f64, f64)| (mid + x * scale, mid - y * scale);
    // A round scale bar: the largest 1/2/5 × 10^n km under a quarter of the width.
    let target = extent / 2.0;
    let magnitude = 10f64.powf(target.log10().floor());
    let bar_km = [5.0, 2.0, 1.0].into_iter().map(|m| m * magnitude).find(|b| *b <= target).unwrap_or(magnitude);
    let f1 = |v: f64| format!("{v:.1}");
    Some(html! {
        section {
            h2 { (t(l, "relocation_map")) }
            svg #relocation viewBox=(format!("0 0 {size} {size}")) width=(size) height=(size) role="img" {
                rect x="0" y="0" width=(size) height=(size) fill="#f7fafc" stroke="#cbd5e0" {}
                text x=(mid - 4.0) y="16" font-size="13" fill="#444" { "N" }
                line x1=(mid) y1="20" x2=(mid) y2="34" stroke="#444" {}
                circle #radius cx=(f1(mid)) cy=(f1(mid)) r=(f1(radius_km * scale)) fill="#c6f6d5" fill-opacity="0.5" stroke="#2f855a" {}
                circle #reference cx=(f1(mid)) cy=(f1(mid)) r="5" fill="#2f855a" { title { (t(l, "reference")) } }
                text x=(f1(mid + 8.0)) y=(f1(mid - 8.0)) font-size="12" fill="#2f855a" { (t(l, "reference")) }
                @for (_, xy, distance_km) in &reported {
                    @let (rx, ry) = at(*xy);
                    line x1=(f1(mid)) y1=(f1(mid)) x2=(f1(rx)) y2=(f1(ry)) stroke="#c53030" stroke-dasharray="4 3" {}
                    circle.reported cx=(f1(rx)) cy=(f1(ry)) r="6" fill="#c53030" { title { (t(l, "reported")) } }
                    text x=(f1(rx + 8.0)) y=(f1(ry - 8.0)) font-size="12" fill="#c53030" { (t(l, "reported")) " " (f1(*distance_km)) " km" }
                }
                line x1="16" y1=(size - 20.0) x2=(f1(16.0 + bar_km * scale)) y2=(size - 20.0) stroke="#444" stroke-width="3" {}
                text x="16" y=(size - 26.0) font-size="12" fill="#444" { (bar_km) " km" }
            }
            p.legend {
                (t(l, "reference")) " " (format!("{:.5}, {:.5}", reference.0, reference.1)) "; "
                @for (p, _, _) in &reported { (t(l, "reported")) " " (format!("{:.5}, {:.5}", p.0, p.1)) "; " }
                (t(l, "radius")) " " (radius_km) " km"
            }
        }
    })
}

/// The language switch.
#[derive(serde::Deserialize)]
pub struct LangForm {
    to: String,
    #[serde(default)]
    back: String,
}

/// Switches the session's language and returns to the page it came from.
pub async fn lang(State(c): C, Extension(ctx): Extension<Ctx>, Form(f): Form<LangForm>) -> Response {
    if let Some(lang) = Lang::parse(&f.to) {
        c.sessions.set_lang(&ctx.id, lang);
    }
    // Only a path on this console: never an open redirect.
    let back = if f.back.starts_with('/') && !f.back.starts_with("//") && !f.back.contains('\\') {
        f.back
    } else {
        "/".into()
    };
    Redirect::to(&back).into_response()
}

/// Ends the session.
pub async fn logout(State(c): C, Extension(ctx): Extension<Ctx>) -> Response {
    c.sessions.logout(&ctx.id);
    (
        [(header::SET_COOKIE, format!("{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0", super::COOKIE))],
        Html(html! { (maud::DOCTYPE) html { head { meta charset="utf-8"; link rel="stylesheet" href="/console.css"; } body { main { p { "已退出 · Signed out" } } } } }.into_string()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(hour: u64, station: &str, kind: &str, n: u64) -> v1::HourlyCount {
        v1::HourlyCount { hour, station: station.into(), kind: kind.into(), n }
    }

    /// The registry's counts land in their hour's bar and their station's row; hours outside
    /// the chart and unknown kinds are left out.
    #[test]
    fn hourly_counts_land_in_their_hour_and_station() {
        let now = 100 * HOUR + HOUR / 2;
        let counts = [
            count(52, "s-old", "issued", 9),
            count(53, "s-a", "issued", 2),
            count(99, "s-b", "provisioned", 3),
            count(100, "s-a", "issued", 4),
            count(100, "s-a", "provisioned", 1),
            count(100, "s-b", "other", 7),
            count(101, "s-a", "issued", 8),
        ];
        let h = hourly_counts(&counts, now);
        assert_eq!(h.start, 53 * HOUR);
        assert_eq!((h.issued[0], h.issued[HOURS as usize - 1], h.issued.iter().sum::<u64>()), (2, 4, 6));
        assert_eq!((h.provisioned[HOURS as usize - 2], h.provisioned.iter().sum::<u64>()), (3, 4));
        let stations: Vec<_> = h.by_station.into_iter().collect();
        assert_eq!(stations, vec![("s-a".to_owned(), (6, 1)), ("s-b".to_owned(), (0, 3))]);
    }
}
