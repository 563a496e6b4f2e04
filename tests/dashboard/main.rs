//! The dashboard in a real browser: headless Chromium, driven over WebDriver
//! (`chromedriver`, where `LIVROS_TEST_CHROMEDRIVER` names it; `.ci/run` installs Debian's
//! `chromium` and `chromium-driver`), loads the page while `livros up` runs, and checks that
//! the numbers move, that recent messages stream in, that a search returns a known message
//! and its trace opens, and saves a screenshot under the test's temp dir.

#[path = "../common/mod.rs"]
mod common;

use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use livros::store::StoreConfig;
use serde_json::{Value, json};

use common::{Child, eventually, free_port, service_url};

/// The browser's flags: headless, and nothing that reaches for the network or a profile.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1800",
];

async fn read(client: &fantoccini::Client, script: &str) -> Value {
    client.execute(script, vec![]).await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_pipeline_live_in_a_browser() {
    let Some(driver) = service_url("LIVROS_TEST_CHROMEDRIVER") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dashboard_port = free_port();
    let _up = Child(
        common::livros(
            dir.path(),
            &StoreConfig::default(),
            "bookstore,streaming,products",
        )
        .args(["up", "--rate", "50", "--quiet", "--invalid-ratio", "0.2"])
        .args(["--http", "127.0.0.1:0"])
        .arg("--dashboard")
        .arg(format!("127.0.0.1:{dashboard_port}"))
        .spawn()
        .unwrap(),
    );
    let driver_port = free_port();
    let _driver = Child(
        std::process::Command::new(&driver)
            .arg(format!("--port={driver_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("LIVROS_TEST_CHROMEDRIVER runs"),
    );
    let page = format!("http://127.0.0.1:{dashboard_port}/");
    eventually(
        "the dashboard to answer",
        Duration::from_secs(60),
        || async { reqwest::get(&page).await.is_ok() },
    )
    .await;

    // Both of rustls's crypto providers are linked (the driver's and reqwest's choice);
    // the WebDriver client needs one named.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut chrome = json!({"args": args});
    if let Ok(binary) = std::env::var("LIVROS_TEST_CHROMIUM") {
        chrome["binary"] = binary.into();
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), chrome);
    let webdriver = format!("http://127.0.0.1:{driver_port}");
    let mut client = None;
    for _ in 0..60 {
        match ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps.clone())
            .connect(&webdriver)
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let client = client.expect("chromedriver starts a headless Chromium");
    client.goto(&page).await.unwrap();

    // The numbers move: books published, read twice, a few seconds apart.
    let books = r#"return Number(document.querySelector('[data-topic="books"] [data-published]')?.dataset.published ?? -1)"#;
    eventually("the pipeline drawn", Duration::from_secs(30), || async {
        read(&client, books).await.as_i64().unwrap_or(-1) > 0
    })
    .await;
    let first = read(&client, books).await.as_i64().unwrap();
    eventually(
        "the books count to grow",
        Duration::from_secs(30),
        || async { read(&client, books).await.as_i64().unwrap_or(-1) > first },
    )
    .await;
    let stored = r#"return Number(document.querySelector('[data-store="relational/customers"] [data-count]')?.dataset.count ?? -1)"#;
    assert!(read(&client, stored).await.as_i64().unwrap() > 0);
    eventually("a rate per second", Duration::from_secs(10), || async {
        read(
            &client,
            r#"return document.querySelector('[data-topic="books"] .sub').textContent"#,
        )
        .await
        .as_str()
        .is_some_and(|t| t.ends_with("/s"))
    })
    .await;
    eventually(
        "recent messages streaming in",
        Duration::from_secs(30),
        || async {
            read(
                &client,
                "return document.querySelectorAll('#recent tbody tr').length",
            )
            .await
            .as_i64()
            .is_some_and(|n| n > 0)
        },
    )
    .await;
    eventually("dead letters counted", Duration::from_secs(30), || async {
        read(&client, r#"return document.querySelector('[data-dead="erro-produtos"] td:nth-child(2)')?.textContent ?? "0""#)
            .await
            .as_str()
            .is_some_and(|n| n != "0")
    })
    .await;

    // A search for a message known from the audit log finds it, and its trace opens.
    let line: Value = {
        let log = std::fs::read_to_string(dir.path().join("messages.log")).unwrap();
        serde_json::from_str(
            log.lines()
                .find(|l| l.contains("\"event_type\":\"criar_usuario\""))
                .unwrap(),
        )
        .unwrap()
    };
    let correlation = line["message"]["correlation_id"].as_str().unwrap();
    let id = format!("user_events/{}/{}", line["partition"], line["offset"]);
    let selector = format!(r#"#results tr[data-id="{id}"]"#);
    eventually("the search to find it", Duration::from_secs(30), || async {
        let input = client.find(Locator::Css("#q")).await.unwrap();
        input.clear().await.unwrap();
        input
            .send_keys(&format!("correlation_id:{correlation}"))
            .await
            .unwrap();
        client
            .find(Locator::Css("#search-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        client.find(Locator::Css(&selector)).await.is_ok()
    })
    .await;
    let link = format!(r#"#results tr[data-id="{id}"] a.trace"#);
    client
        .find(Locator::Css(&link))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(
        "the trace: request and response",
        Duration::from_secs(10),
        || async {
            read(
                &client,
                "return document.querySelectorAll('#trace tbody tr').length",
            )
            .await
            .as_i64()
                == Some(2)
        },
    )
    .await;

    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = dir.path().join("dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", shot.display(), png.len());
    if let Ok(keep) = std::env::var("LIVROS_TEST_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
    client.close().await.unwrap();
}
