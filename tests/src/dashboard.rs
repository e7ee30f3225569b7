//! The serving dashboard in a real browser: headless Chromium (Debian's `chromium`), driven over
//! the DevTools protocol. The page must load without a console error or exception, show live
//! numbers that change as events arrive, and leave a screenshot as a test artifact.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::speed::{Kill, Setup, now_ms, sensor_json};
use crate::support::unique;

/// A DevTools session on one page, with every console error and exception it reported.
struct Page {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    errors: Vec<String>,
}

impl Page {
    fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::text(
                json!({"id": id, "method": method, "params": params}).to_string(),
            ))
            .expect("send to the browser");
        // reads time out every 200 ms (so `pump` can stop); a loaded machine (the bench test
        // runs services beside this one) may take longer than one read to answer
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.read() {
                Some(msg) if msg["id"] == id => return msg,
                Some(_) => {}
                None => assert!(
                    Instant::now() < deadline,
                    "the browser did not answer {method} within 30 s"
                ),
            }
        }
    }

    /// One message (events are checked for errors on the way); `None` on a read timeout.
    fn read(&mut self) -> Option<Value> {
        match self.ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("JSON from the browser");
                self.note(&v);
                Some(v)
            }
            Ok(_) => Some(Value::Null),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("browser connection: {e}"),
        }
    }

    fn note(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", v["params"]["args"]));
            }
            Some("Runtime.exceptionThrown") => {
                self.errors
                    .push(format!("exception: {}", v["params"]["exceptionDetails"]));
            }
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                self.errors
                    .push(format!("log: {}", v["params"]["entry"]["text"]));
            }
            _ => {}
        }
    }

    /// Let the page run for `d`, collecting its events.
    fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            self.read();
        }
    }

    /// Evaluate `expression` until `ready` holds for its value (the page fetches its numbers
    /// after loading, and a loaded 2-core machine can take seconds to answer); the last value
    /// is returned either way, for the caller's assertion to show.
    fn eval_until(&mut self, expression: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(expression);
            if ready(&v) || Instant::now() >= deadline {
                return v;
            }
            self.pump(Duration::from_millis(250));
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.send(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["result"]["value"].clone()
    }
}

pub(crate) fn artifacts_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("test-artifacts")
}

/// Start headless Chromium with the flags the issue names, on a DevTools port of its own.
fn chromium() -> (Child, u16, PathBuf) {
    let profile = std::env::temp_dir().join(unique("ll-chromium"));
    std::fs::create_dir_all(&profile).unwrap();
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            "--window-size=1280,960",
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (infra/local/stack install-browser installs it)");
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.parse::<u16>().ok()))
        {
            break p;
        }
        assert!(Instant::now() < deadline, "chromium did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    (child, port, profile)
}

/// The DevTools websocket URL of the browser's page.
async fn page_target(port: u16) -> String {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
            && let Ok(v) = r.json::<Value>().await
            && let Some(url) = v.as_array().and_then(|a| {
                a.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            })
        {
            return url.to_owned();
        }
        assert!(Instant::now() < deadline, "no page target in chromium");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn connect(port: u16, url: &str) -> Page {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("DevTools port");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (ws, _) = tungstenite::client(url, stream).expect("DevTools websocket");
    Page {
        ws,
        next_id: 0,
        errors: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_loads_cleanly_and_its_numbers_move_as_events_arrive() {
    let mut s = Setup::new();
    let _guard = Kill(vec![s.spawn(&[])]);
    let t = now_ms() - 120_000;
    let first: Vec<String> = (0..300)
        .map(|i| {
            sensor_json(
                &format!("a{i}"),
                "d0",
                t + i * 200,
                20.0 + (i % 7) as f64,
                1.0,
            )
        })
        .collect();
    // the lakehouse on the same stream: the Lambda-vs-Lakehouse panel fills
    let mut lake = crate::lakehouse::Lake::new();
    let _lake_guard = Kill(vec![lake.spawn(&s, &[])]);
    s.send_sensors(&first).await;
    s.wait_applied(Duration::from_secs(60));
    crate::lakehouse::wait_gold(&s, &lake, Duration::from_secs(60)).await;
    let url = crate::batch::fresh_database().await;
    let redis = std::env::var("LAMBDALAKE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:16379".to_owned());
    let (base, token) = crate::serving::serve_with(
        &url,
        &redis,
        &s.prefix,
        &s.sensor,
        &s.payment,
        // with API keys on: the page sends the key its address carries after `#key=`
        &["--lakehouse-tables", &lake.tables, "--api-key", "dash-k3y"],
    )
    .await;
    let (chrome, port, profile) = chromium();
    let mut guard = Kill(vec![chrome]);
    let page_url = format!("{base}/?device=d0#key=dash-k3y");
    let target = page_target(port).await;
    let mut page = tokio::task::block_in_place(|| {
        let mut page = connect(port, &target);
        page.send("Runtime.enable", json!({}));
        page.send("Log.enable", json!({}));
        page.send("Page.enable", json!({}));
        page.send("Page.navigate", json!({"url": page_url}));
        page.pump(Duration::from_secs(3));
        page
    });
    let read_total = |page: &mut Page| -> Value {
        page.eval("document.getElementById('ingest-total').textContent")
    };
    let before = tokio::task::block_in_place(|| {
        page.eval_until("document.getElementById('ingest-total').textContent", |v| {
            v != "–"
        })
    });
    assert_eq!(before, json!("300"), "events in Kafka shown");
    let status = tokio::task::block_in_place(|| {
        page.eval_until("document.getElementById('status').textContent", |v| {
            v.as_str().is_some_and(|s| s.starts_with("live"))
        })
    });
    assert!(status.as_str().unwrap().starts_with("live"), "{status}");
    let bars = tokio::task::block_in_place(|| {
        page.eval_until("document.querySelectorAll('#chart rect').length", |v| {
            v.as_u64().is_some_and(|n| n >= 1)
        })
    });
    assert!(
        bars.as_u64().unwrap() >= 1,
        "the windows chart has bars: {bars}"
    );
    // Lambda vs Lakehouse: gold's version, and every window of the device equal in both
    let lake_version = tokio::task::block_in_place(|| {
        page.eval_until("document.getElementById('lake-version').textContent", |v| {
            v.as_str().is_some_and(|s| s.starts_with('v'))
        })
    });
    assert!(
        lake_version.as_str().unwrap().starts_with('v'),
        "{lake_version}"
    );
    let agree = tokio::task::block_in_place(|| {
        page.eval_until("document.getElementById('lake-agree').textContent", |v| {
            v.as_str().is_some_and(|s| s.contains(" / "))
        })
    });
    let (same, all) = agree
        .as_str()
        .and_then(|a| a.split_once(" / "))
        .unwrap_or_else(|| panic!("windows compared: {agree}"));
    assert_eq!(same, all, "{agree}");
    assert!(all.parse::<u32>().unwrap() >= 1, "{agree}");

    // more events arrive: the page shows them without a reload
    let more: Vec<String> = (0..200)
        .map(|i| sensor_json(&format!("b{i}"), "d0", t + 60_000 + i * 200, 30.5, 1.0))
        .collect();
    s.send_sensors(&more).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let v = tokio::task::block_in_place(|| {
            page.pump(Duration::from_millis(500));
            read_total(&mut page)
        });
        if v != before {
            break v;
        }
        assert!(Instant::now() < deadline, "the total stayed at {before}");
    };
    assert_eq!(after, json!("500"));
    let rate = tokio::task::block_in_place(|| {
        page.eval("document.getElementById('ingest-rate').textContent")
    });
    assert_ne!(rate, json!("–"), "an ingest rate is shown");

    // the screenshot, as an artifact
    let shot = tokio::task::block_in_place(|| {
        page.send(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
    });
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["result"]["data"].as_str().expect("screenshot data"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    assert!(
        std::fs::metadata(&path).is_ok_and(|m| m.len() > 10_000),
        "{}",
        path.display()
    );

    assert!(page.errors.is_empty(), "console errors: {:?}", page.errors);
    guard.0[0].kill().ok();
    guard.0[0].wait().ok();
    token.cancel();
    let _ = std::fs::remove_dir_all(&profile);
    let _ = std::fs::remove_dir_all(&lake.dir);
}
