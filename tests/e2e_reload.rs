//! Live config reload (issue 15), end to end with real `triggerfish` processes:
//! events stream continuously while the config is rewritten; triggers are added,
//! removed, changed, removed and re-added within the grace period; an invalid
//! config is written over a valid one and then fixed. On the embedded log the
//! config is a directory laid out like a mounted ConfigMap (files behind a `..data`
//! symlink swapped atomically); on NATS the ingress and the dispatcher are separate
//! processes, each watching its own copy of the config file.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procs::{unique, Proc};
use common::{eventually, Subscriber};
use serde_json::Value;

/// `(name, type filter or "")`: each trigger delivers to `/<name>`.
fn yaml(sub: &Subscriber, triggers: &[(&str, &str)]) -> String {
    let mut y = String::from(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n",
    );
    for (name, ty) in triggers {
        let filter = if ty.is_empty() {
            String::new()
        } else {
            format!("  filter: {{attributes: {{type: {ty}}}}}\n")
        };
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n  broker: default\n{filter}  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 5, backoffDelay: PT0.1S}}\n",
            sub.url(&format!("/{name}"))
        ));
    }
    y
}

/// How a test's config is written.
enum Layout {
    /// One file, replaced by a rename.
    File(PathBuf),
    /// A directory as Kubernetes mounts a ConfigMap: `config.yaml ->
    /// ..data/config.yaml`, `..data -> ..<version>`, swapped by renaming a new
    /// `..data_tmp` symlink over `..data`.
    ConfigMap(PathBuf),
}

impl Layout {
    fn write(&self, text: &str) {
        match self {
            Layout::File(p) => {
                let tmp = p.with_extension("tmp");
                std::fs::write(&tmp, text).unwrap();
                std::fs::rename(&tmp, p).unwrap();
            }
            Layout::ConfigMap(dir) => {
                let version = format!("..{}", unique("v"));
                std::fs::create_dir(dir.join(&version)).unwrap();
                std::fs::write(dir.join(&version).join("config.yaml"), text).unwrap();
                let tmp = dir.join("..data_tmp");
                std::os::unix::fs::symlink(&version, &tmp).unwrap();
                std::fs::rename(&tmp, dir.join("..data")).unwrap();
                let link = dir.join("config.yaml");
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink("..data/config.yaml", &link).unwrap();
                }
            }
        }
    }
}

/// Events posted one after another (`e<i>`, type `a` for even `i`, `b` for odd),
/// with when each was accepted, until stopped.
/// An accepted event: id, type, when the 202 came.
type Sent = (String, &'static str, Instant);

struct Producer {
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    fn start(addr: std::net::SocketAddr) -> Producer {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (sent.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0usize;
            while !st.load(Ordering::Relaxed) {
                let id = format!("e{i}");
                let ty = if i.is_multiple_of(2) { "a" } else { "b" };
                let r = client
                    .post(format!("http://{addr}/default/default"))
                    .header("ce-specversion", "1.0")
                    .header("ce-id", &id)
                    .header("ce-source", "/reload")
                    .header("ce-type", ty)
                    .header("content-type", "text/plain")
                    .body("x")
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(202) => {
                        s.lock().unwrap().push((id, ty, Instant::now()));
                        i += 1;
                    }
                    // Retried with the same id (never during these tests).
                    other => {
                        eprintln!("producer: {other:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Producer { sent, stop, task }
    }

    fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    async fn wait_for(&self, more: usize) {
        let target = self.count() + more;
        eventually(
            &format!("{target} events sent"),
            Duration::from_secs(60),
            || async { self.count() >= target },
        )
        .await;
    }

    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The config generation and whether the last reload left the config Ready.
async fn config_state(admin: std::net::SocketAddr) -> (u64, String, String) {
    let v = get_json(&format!("http://{admin}/admin/v1/brokers")).await;
    let c = &v["config"];
    let ready = &c["conditions"][0];
    (
        c["generation"].as_u64().unwrap(),
        ready["status"].as_str().unwrap_or_default().to_owned(),
        ready["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn until_generation(procs: &[&Proc], generation: u64) {
    for p in procs {
        let admin = p.admin.unwrap();
        eventually(
            &format!("generation {generation} at {admin}"),
            Duration::from_secs(10),
            || async { config_state(admin).await.0 >= generation },
        )
        .await;
    }
}

fn ids_on(sub: &Subscriber, path: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sub.received_on(path) {
        *m.entry(r.header("ce-id").unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    m
}

fn index(id: &str) -> usize {
    id.trim_start_matches('e').parse().unwrap()
}

/// The whole scenario; `procs[0]` takes events, every process watches `layouts`
/// (one per process: each reloads its own copy).
async fn scenario(sub: &Subscriber, procs: &[&Proc], layouts: &[Layout]) {
    let write = |text: &str| {
        for l in layouts {
            l.write(text);
        }
    };
    let v2 = [("steady", ""), ("changing", "b"), ("joining", "")];
    let v3 = [
        ("steady", ""),
        ("changing", "b"),
        ("joining", ""),
        ("bouncing", ""),
    ];
    let v5 = [
        ("steady", ""),
        ("changing", "b"),
        ("joining", ""),
        ("bouncing", ""),
        ("late", ""),
    ];
    let producer = Producer::start(procs[0].addr);
    producer.wait_for(600).await;

    // v2: `joining` added, `leaving` and `bouncing` removed, `changing` now takes
    // type b instead of a.
    let before2 = producer.count();
    write(&yaml(sub, &v2));
    until_generation(procs, 2).await;
    let after2 = producer.count();
    // The first event sent once the change is in reaches `joining` within a second.
    let first = format!("e{after2}");
    producer.wait_for(1).await;
    let sent_at = producer.sent.lock().unwrap()[after2].2;
    eventually(
        "joining gets the first event after it was added",
        Duration::from_secs(5),
        || async {
            sub.received_on("/joining")
                .iter()
                .any(|r| r.header("ce-id") == Some(first.as_str()))
        },
    )
    .await;
    let got_at = sub
        .received_on("/joining")
        .into_iter()
        .find(|r| r.header("ce-id") == Some(first.as_str()))
        .unwrap()
        .at;
    let latency = got_at.saturating_duration_since(sent_at);
    eprintln!("joining: first event after the change delivered after {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    producer.wait_for(800).await;

    // v3: `bouncing` back within its grace period.
    let before3 = producer.count();
    write(&yaml(sub, &v3));
    until_generation(procs, 3).await;
    producer.wait_for(800).await;

    // An invalid config over the valid one: nothing changes, status and the metric
    // say so, events keep flowing.
    let mut broken = yaml(sub, &v3);
    broken.push_str("---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: bad}\nspec:\n  broker: default\n  filter: {attributes: {type: [not, a, string]}}\n  subscriber: {uri: 'http://127.0.0.1:1/'}\n");
    write(&broken);
    for p in procs {
        let admin = p.admin.unwrap();
        eventually(
            "the invalid config is reported",
            Duration::from_secs(10),
            || async {
                let (g, status, reason) = config_state(admin).await;
                g == 3 && status == "False" && reason == "ConfigInvalid"
            },
        )
        .await;
        let invalid = common::metric(
            p.addr,
            r#"triggerfish_config_reloads_total{outcome="invalid"}"#,
        )
        .await;
        assert!(invalid >= 1.0, "{invalid}");
        let v = get_json(&format!("http://{admin}/admin/v1/brokers")).await;
        let errors = v["config"]["lastReload"]["errors"].to_string();
        assert!(
            errors.contains("document 6") && errors.contains("spec.filter.attributes.type"),
            "located: {errors}"
        );
    }
    let steady_before = ids_on(sub, "/steady").len();
    producer.wait_for(400).await;
    eventually(
        "the old config keeps delivering",
        Duration::from_secs(10),
        || async { ids_on(sub, "/steady").len() >= steady_before + 300 },
    )
    .await;

    // Fixed (and one more trigger): it recovers by itself.
    write(&yaml(sub, &v5));
    until_generation(procs, 4).await;
    for p in procs {
        let (_, status, _) = config_state(p.admin.unwrap()).await;
        assert_eq!(status, "True");
    }
    let after5 = producer.count();
    producer.wait_for(600).await;
    let sent = producer.stop().await;
    let n = sent.len();
    eprintln!("{n} events sent; reloads at {before2}/{after2}, {before3}, {after5}");
    assert!(n >= 3000, "several thousand events: {n}");
    let types: HashMap<&str, &str> = sent.iter().map(|(id, ty, _)| (id.as_str(), *ty)).collect();

    eventually(
        "every event delivered to steady and bouncing",
        Duration::from_secs(60),
        || async { ids_on(sub, "/steady").len() == n && ids_on(sub, "/bouncing").len() == n },
    )
    .await;
    // Nothing more is on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The unrelated trigger: every event exactly once through all of it.
    let steady = ids_on(sub, "/steady");
    assert_eq!(steady.len(), n);
    assert!(steady.values().all(|&c| c == 1), "steady got duplicates");
    // Removed and re-added within the grace period: every event, the ones in
    // between too, once.
    let bouncing = ids_on(sub, "/bouncing");
    assert_eq!(bouncing.len(), n, "bouncing missed events");
    assert!(
        bouncing.values().all(|&c| c == 1),
        "bouncing got duplicates"
    );
    // Added: everything sent after the change.
    let joining = ids_on(sub, "/joining");
    for (id, _, _) in &sent[after2..] {
        assert_eq!(joining.get(id.as_str()), Some(&1), "joining: {id}");
    }
    let late = ids_on(sub, "/late");
    for (id, _, _) in &sent[after5..] {
        assert_eq!(late.get(id.as_str()), Some(&1), "late: {id}");
    }
    // Removed: nothing sent after it was gone.
    let leaving = ids_on(sub, "/leaving");
    assert!(!leaving.is_empty());
    let after: Vec<&String> = leaving.keys().filter(|id| index(id) >= after2).collect();
    assert!(
        after.is_empty(),
        "leaving got events sent after its removal: {after:?}"
    );
    // Changed: type a before, type b from the change on, each once.
    let changing = ids_on(sub, "/changing");
    for (id, ty, _) in &sent[..before2] {
        assert_eq!(
            changing.get(id.as_str()).copied(),
            (*ty == "a").then_some(1),
            "changing before: {id}"
        );
    }
    for (id, ty, _) in &sent[after2..] {
        assert_eq!(
            changing.get(id.as_str()).copied(),
            (*ty == "b").then_some(1),
            "changing after: {id}"
        );
    }
    assert!(changing.keys().all(|id| types.contains_key(id.as_str())));
}

/// `triggerfish status` against a running server: the table and the JSON.
fn status_cli(admin: std::net::SocketAddr, expect_delivered: usize) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args(["status", "--admin", &format!("http://{admin}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    eprintln!("{table}");
    assert!(
        table.starts_with("config generation 4, Ready True"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("steady ")).unwrap();
    assert!(
        row.contains("default/default") && row.contains("True"),
        "{row}"
    );
    assert!(row.contains(&expect_delivered.to_string()), "{row}");
    let removed = table.lines().find(|l| l.starts_with("leaving ")).unwrap();
    assert!(removed.contains("False (Removed)"), "{removed}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args([
            "status",
            "--admin",
            &format!("http://{admin}"),
            "-o",
            "json",
            "--broker",
            "default/default",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steady = v["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "steady")
        .unwrap();
    assert_eq!(steady["delivered"].as_u64(), Some(expect_delivered as u64));
    assert_eq!(steady["lag"]["events"].as_u64(), Some(0));
    assert_eq!(v["brokers"][0]["conditions"][0]["status"], "True");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_configmap_directory_reloads_while_events_flow() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cm = dir.path().join("configmap");
    std::fs::create_dir(&cm).unwrap();
    let layout = Layout::ConfigMap(cm.clone());
    let v1 = [
        ("steady", ""),
        ("leaving", ""),
        ("changing", "a"),
        ("bouncing", ""),
    ];
    layout.write(&yaml(&sub, &v1));
    let data = dir.path().join("data");
    let serve = Proc::start(
        "serve",
        dir.path(),
        &["--data-dir", data.to_str().unwrap()],
        &["--config", cm.to_str().unwrap()],
    )
    .await;
    scenario(&sub, &[&serve], &[layout]).await;
    let n = ids_on(&sub, "/steady").len();
    status_cli(serve.admin.unwrap(), n);
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_separate_processes_reload_their_own_copies() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ingress_cfg, dispatcher_cfg) = (
        dir.path().join("ingress.yaml"),
        dir.path().join("dispatcher.yaml"),
    );
    let layouts = [
        Layout::File(ingress_cfg.clone()),
        Layout::File(dispatcher_cfg.clone()),
    ];
    let v1 = [
        ("steady", ""),
        ("leaving", ""),
        ("changing", "a"),
        ("bouncing", ""),
    ];
    for l in &layouts {
        l.write(&yaml(&sub, &v1));
    }
    let prefix = unique("reload");
    let storage = [
        "--storage",
        url.as_str(),
        "--nats-prefix",
        prefix.as_str(),
        "--partitions",
        "2",
        // Test-sized streams: JetStream reserves each stream's max bytes.
        "--nats-max-bytes",
        "67108864",
    ];
    let dispatcher = Proc::start(
        "dispatcher",
        dir.path(),
        &storage,
        &["--config", dispatcher_cfg.to_str().unwrap()],
    )
    .await;
    let ingress = Proc::start(
        "ingress",
        dir.path(),
        &storage,
        &["--config", ingress_cfg.to_str().unwrap()],
    )
    .await;
    scenario(&sub, &[&ingress, &dispatcher], &layouts).await;
    let n = ids_on(&sub, "/steady").len();
    status_cli(dispatcher.admin.unwrap(), n);
    ingress.stop().await;
    dispatcher.stop().await;
}

/// SIGHUP reloads (with the file watch off) and the process stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_the_process_stays_up() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = Layout::File(dir.path().join("config.yaml"));
    file.write(&yaml(&sub, &[("steady", "")]));
    let data = dir.path().join("data");
    let serve = Proc::start(
        "serve",
        dir.path(),
        &["--data-dir", data.to_str().unwrap()],
        &["--config-watch", "false"],
    )
    .await;
    let admin = serve.admin.unwrap();
    file.write(&yaml(&sub, &[("steady", ""), ("joining", "")]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        config_state(admin).await.0,
        1,
        "no watch: nothing reloaded yet"
    );
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &serve.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    until_generation(&[&serve], 2).await;
    let (status, _, _) = common::post(
        serve.addr,
        "/default/default",
        &common::binary_headers("after-hup", "t"),
        "x",
    )
    .await;
    assert_eq!(status, 202);
    sub.wait_until("joining gets the event", Duration::from_secs(10), |r| {
        r.iter()
            .any(|r| r.path == "/joining" && r.header("ce-id") == Some("after-hup"))
    })
    .await;
    let reloads = common::metric(
        serve.addr,
        r#"triggerfish_config_reloads_total{outcome="applied"}"#,
    )
    .await;
    assert_eq!(reloads, 1.0);
    // `POST /admin/v1/reload` with the file unchanged: nothing to apply.
    let v = common::admin_reload(admin).await;
    assert_eq!(v["outcome"], "unchanged");
    assert_eq!(v["generation"], 2);
    serve.stop().await;
}
