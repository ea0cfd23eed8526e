//! The status page on `metrics_listen`, in a real browser: Debian's
//! Chromium (headless, driven over WebDriver by chromedriver, both inside
//! the gateway namespace, so every request stays in the lab) loads `/`,
//! which renders every pool and backend from `/status.json` and `/metrics`
//! and fetches nothing from anywhere else. A backend is killed; the page
//! must show it `down` within two of its own refreshes after the daemon
//! knows, and list the change to `down` with the daemon's reason.
//! Screenshots land in `target/status-page/`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use xdplb_tests::{
    deploy::{Deployment, PoolSpec, METRICS_LISTEN},
    skip_unless_root, wait_until, Lab,
};

const DRIVER_PORT: u16 = 9515;

/// A WebDriver session, spoken with curl inside the gateway namespace.
struct Browser<'a> {
    lab: &'a Lab,
    session: String,
}

fn webdriver(lab: &Lab, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let url = format!("http://127.0.0.1:{DRIVER_PORT}{path}");
    let mut args = vec![
        "curl".to_string(),
        "-sS".into(),
        "-m".into(),
        "60".into(),
        "-X".into(),
        method.into(),
    ];
    if let Some(b) = body {
        args.extend([
            "-H".into(),
            "Content-Type: application/json".into(),
            "-d".into(),
            b.to_string(),
        ]);
    }
    args.push(url);
    let out = lab.exec_ok(lab.gw_ns(), &args)?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("webdriver said {out}"))?;
    if let Some(e) = v["value"]["error"].as_str() {
        bail!("webdriver {method} {path}: {e}: {}", v["value"]["message"]);
    }
    Ok(v["value"].clone())
}

impl<'a> Browser<'a> {
    fn start(lab: &'a Lab) -> Result<Browser<'a>> {
        let profile = lab.dir().join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--window-size=1440,600",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = webdriver(lab, "POST", "/session", Some(caps))?;
        let session = v["sessionId"]
            .as_str()
            .with_context(|| format!("no session in {v}"))?
            .to_string();
        Ok(Browser { lab, session })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        webdriver(
            self.lab,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn eval(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let b64 = self.call("GET", "/screenshot", None)?;
        let b64 = b64.as_str().context("screenshot is not a string")?;
        let dir = artifacts();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{name}.b64"));
        std::fs::write(&tmp, b64)?;
        let png = dir.join(format!("{name}.png"));
        let out = std::process::Command::new("base64")
            .arg("-d")
            .arg(&tmp)
            .output()?;
        std::fs::remove_file(&tmp)?;
        ensure!(out.status.success() && out.stdout.starts_with(b"\x89PNG"));
        std::fs::write(&png, out.stdout)?;
        Ok(png)
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
    }
}

fn artifacts() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("status-page")
}

/// (refreshes so far, state shown for pool/backend)
/// The newest transition of pool web's "recent transitions" list, of
/// `backend` or of any (`*`): [from, to, reason, age, backend], or null
/// when it lists none.
fn newest_transition(b: &Browser, backend: &str) -> Result<Value> {
    let which = match backend {
        "*" => String::new(),
        name => format!("[data-backend=\"web/{name}\"]"),
    };
    b.eval(&format!(
        "const li = document.querySelector('section[data-pool=\"web\"] .recent li{which}'); \
         return li ? [li.dataset.from, li.dataset.to, li.querySelector('.why').textContent, \
                      li.querySelector('.age').textContent, li.dataset.backend] : null;"
    ))
}

/// Whether the page's `[from, to, reason, age]` is `from → to` for
/// `reason`, a few seconds old.
fn lists(shown: &Value, from: &str, to: &str, reason: &str) -> bool {
    let age = shown[3].as_str().unwrap_or("");
    shown[0] == from
        && shown[1] == to
        && shown[2] == reason
        && age.ends_with(" s ago")
        && age.trim_end_matches(" s ago").parse::<u64>().is_ok()
}

fn page_state(b: &Browser, backend: &str) -> Result<(u64, String)> {
    let v = b.eval(&format!(
        "const r = document.querySelector('tr[data-backend=\"web/{backend}\"]'); \
         return [window.xdplbRefreshes || 0, r ? r.dataset.state : ''];"
    ))?;
    Ok((
        v[0].as_u64().unwrap_or(0),
        v[1].as_str().unwrap_or("").to_string(),
    ))
}

#[test]
fn status_page_shows_a_killed_backend_down_within_two_refreshes() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let mut d = Deployment::new(vec![PoolSpec::new(2, 1)])?;
    d.start_daemon()?;
    let _driver = d.lab.spawn(
        d.lab.gw_ns(),
        &["chromedriver", &format!("--port={DRIVER_PORT}")],
    )?;
    let ready = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        webdriver(&d.lab, "GET", "/status", None).is_ok_and(|v| v["ready"] == true)
    });
    ensure!(ready, "chromedriver did not come up");
    let browser = Browser::start(&d.lab)?;
    // One refresh a second.
    browser.call(
        "POST",
        "/url",
        Some(json!({"url": format!("http://{METRICS_LISTEN}/?refresh=1")})),
    )?;
    // Traffic, so the rates have something to show.
    d.spread(40)?;
    let shown = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        page_state(&browser, "web-1").is_ok_and(|(n, s)| n >= 2 && s == "active")
    });
    ensure!(
        shown,
        "page never showed web-1 active: {:?}",
        page_state(&browser, "web-1")
    );
    d.spread(40)?;
    // A rate needs two of the page's samples of the counters after the
    // traffic: wait for web-1's packets/s to show (checked again below).
    let pps_of_web1 =
        "const col = [...document.querySelectorAll('section[data-pool=\"web\"] th')] \
           .findIndex(th => th.textContent === 'packets/s'); \
         return document.querySelector('tr[data-backend=\"web/web-1\"]').children[col].innerText;";
    let _rated = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        browser
            .eval(pps_of_web1)
            .is_ok_and(|v| v.as_str().is_some_and(|s| s != "–"))
    });

    // Everything on the page: every backend of the status document, rows
    // coloured by state, no request outside the daemon.
    let rows = browser.eval(
        "return [...document.querySelectorAll('tr[data-backend]')].map(r => \
           [r.dataset.backend, r.dataset.state, r.dataset.health, \
            getComputedStyle(r.querySelector('.badge')).backgroundColor, r.innerText]);",
    )?;
    let status = d.status()?;
    let want: Vec<String> = status["pools"][0]["backends"]
        .as_array()
        .context("backends")?
        .iter()
        .map(|b| {
            format!(
                "web/{}={}",
                b["name"].as_str().unwrap_or(""),
                b["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    let got: Vec<String> = rows
        .as_array()
        .context("rows")?
        .iter()
        .map(|r| {
            format!(
                "{}={}",
                r[0].as_str().unwrap_or(""),
                r[1].as_str().unwrap_or("")
            )
        })
        .collect();
    ensure!(got == want, "page rows {got:?}, xdplb status {want:?}");
    let active_colour = rows[0][3].as_str().unwrap_or("").to_string();
    let standby_colour = rows[2][3].as_str().unwrap_or("").to_string();
    ensure!(
        active_colour != standby_colour,
        "states share a colour: {rows}"
    );
    let web1_text = rows[0][4].as_str().unwrap_or("");
    ensure!(
        web1_text.contains("198.18.1.11:8080") && web1_text.contains("primary"),
        "{web1_text}"
    );
    let pps = browser.eval(pps_of_web1)?;
    ensure!(
        pps.as_str().is_some_and(|s| s != "–"),
        "no packet rate: {pps}"
    );
    let foreign = browser.eval(&format!(
        "return performance.getEntriesByType('resource').map(e => e.name)\
           .filter(n => !n.startsWith('http://{METRICS_LISTEN}/'));"
    ))?;
    ensure!(
        foreign.as_array().is_some_and(|a| a.is_empty()),
        "the page fetched {foreign}"
    );
    // Its one change so far: the first plan took it from down (not
    // probed) to active.
    let shown = newest_transition(&browser, "web-1")?;
    ensure!(
        lists(&shown, "down", "active", "healthy"),
        "web-1's transitions on the page: {shown}"
    );
    let up_png = browser.screenshot("status-page-up")?;

    // Kill web-1; note the page's refresh count when the daemon knows.
    let victim = d.pools[0].backend("web-1").lab_index;
    d.kill_server(victim);
    let killed = Instant::now();
    let mut known_at: Option<u64> = None;
    let mut shown_at: Option<u64> = None;
    while killed.elapsed() < Duration::from_secs(15) {
        let (n, s) = page_state(&browser, "web-1")?;
        if s == "down" {
            shown_at = Some(n);
            break;
        }
        if known_at.is_none() && d.backend_status("web", "web-1")?["state"] == "down" {
            known_at = Some(n);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let shown_at = shown_at.with_context(|| {
        format!(
            "the page never showed web-1 down; daemon: {}",
            d.backend_status("web", "web-1").unwrap_or_default()
        )
    })?;
    // The page may have caught it before our own poll of the daemon did.
    let known_at = known_at.unwrap_or(shown_at);
    println!(
        "status page: web-1 down on refresh {shown_at}, daemon knew at refresh {known_at}, {:?} after the kill",
        killed.elapsed()
    );
    ensure!(
        shown_at <= known_at + 2,
        "shown down {} refreshes after the daemon knew",
        shown_at - known_at
    );
    // The spare covers the gap: wait for the page to show it, and both
    // changes in its recent transitions (checked one by one below).
    let _caught_up = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        page_state(&browser, "spare-1").is_ok_and(|(_, s)| s == "active")
            && newest_transition(&browser, "web-1").is_ok_and(|t| t[1] == "down")
            && newest_transition(&browser, "spare-1").is_ok_and(|t| t[1] == "active")
    });
    // The row lists the change first, with the reason the daemon gave
    // (the probe's error included).
    let daemon = d.backend_status("web", "web-1")?;
    let last = daemon["transitions"]
        .as_array()
        .and_then(|a| a.last())
        .with_context(|| format!("the daemon recorded no transition: {daemon}"))?;
    let reason = last["reason"].as_str().unwrap_or("");
    ensure!(
        last["from"] == "active" && last["to"] == "down" && reason.starts_with("health_down: "),
        "the daemon's last transition of web-1: {last}"
    );
    let shown = newest_transition(&browser, "web-1")?;
    ensure!(
        lists(&shown, "active", "down", reason),
        "web-1's newest transition on the page: {shown}, the daemon's: {last}"
    );
    // Newest first: web-1's failure and the spare's activation came in
    // one plan, listed in the pool's order.
    let first = newest_transition(&browser, "*")?;
    ensure!(
        first[4] == "web/web-1" && first[1] == "down",
        "the page's newest transition: {first}"
    );
    let spare = newest_transition(&browser, "spare-1")?;
    ensure!(
        spare[1] == "active"
            && spare[2]
                .as_str()
                .is_some_and(|r| r.starts_with("min_active")),
        "the spare's newest transition on the page: {spare}"
    );
    let down_png = browser.screenshot("status-page-down")?;
    println!("screenshots: {} {}", up_png.display(), down_png.display());
    Ok(())
}
