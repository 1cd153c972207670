//! Shipping to NATS JetStream against real servers: `nats-server` (with
//! JetStream) started here on loopback ports picked by binding port 0, with
//! its own store directory, stopped at the end. The stream's content is read
//! back with an independent client (async-nats) and compared line by line
//! with the daemons' logs: every event exactly once.
use std::{
    collections::{BTreeMap, HashSet},
    fs,
    net::TcpListener,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use fsmon_tests::{Daemon, Env, TestUser, fsmon_bin, testkit_bin, wait_for};
use futures_util::StreamExt;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(180);

fn nats_bin() -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join("nats-server");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "nats-server not found: install the Debian package `nats-server` (`cargo xtask setup` does)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server with JetStream; restartable on the same port and store.
struct Nats {
    name: String,
    port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Nats {
    /// `extra`: more config (cluster, authorization).
    fn new(dir: &Path, name: &str, port: u16, extra: &str) -> Nats {
        let store = dir.join(format!("{name}-js"));
        fs::create_dir_all(&store).unwrap();
        let conf = dir.join(format!("{name}.conf"));
        fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n}}\n{extra}\n"
            ),
        )
        .unwrap();
        let mut n = Nats {
            name: name.into(),
            port,
            log: dir.join(format!("{name}.log")),
            conf,
            child: None,
        };
        n.start();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let before = fs::read_to_string(&self.log).unwrap_or_default().len();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(nats_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_for(&format!("{} ready", self.name), LONG, || {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            text[before.min(text.len())..]
                .contains("Server is ready")
                .then_some(())
        });
    }

    /// Stops the server (SIGTERM, or SIGKILL when `kill`), waits for it.
    fn stop(&mut self, kill: bool) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let sig = if kill {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop(true);
    }
}

fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fsmon-ship-")
        .tempdir_in("/tmp")
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn server_addrs(urls: &[String]) -> Vec<async_nats::ServerAddr> {
    urls.iter().map(|u| u.parse().unwrap()).collect()
}

/// Every message of `stream`: (Nats-Msg-Id, payload), read with an
/// independent client. Empty if the stream does not exist yet.
fn stream_messages(urls: &[String], stream: &str) -> Vec<(String, Value)> {
    rt().block_on(async {
        let Ok(client) = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(server_addrs(urls))
            .await
        else {
            return Vec::new();
        };
        let js = jetstream::new(client);
        let Ok(st) = js.get_stream(stream).await else {
            return Vec::new();
        };
        let Ok(consumer) = st
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return out;
        }
        let mut msgs = consumer.messages().await.unwrap();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(20), msgs.next()).await
        {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((id, serde_json::from_slice(&m.payload).unwrap()));
            if m.info().unwrap().pending == 0 {
                break;
            }
        }
        out
    })
}

/// A log's events as the stream should hold them: each line with `host`
/// and `group` added, as canonical JSON text.
fn expected_lines(env: &Env, host: &str, group: &str) -> Vec<String> {
    let text = fs::read_to_string(env.log_path(group)).unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|mut v| {
            let o = v.as_object_mut().unwrap();
            o.insert("host".into(), host.into());
            o.insert("group".into(), group.into());
            v.to_string()
        })
        .collect();
    v.sort();
    v
}

/// The stream holds exactly the expected lines, once each, with unique ids.
fn assert_exactly_once(msgs: &[(String, Value)], expected: &[String], what: &str) {
    let ids: HashSet<&str> = msgs.iter().map(|(id, _)| id.as_str()).collect();
    if ids.len() != msgs.len() {
        let mut seen = HashSet::new();
        let dups: Vec<&str> = msgs
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !seen.insert(*id))
            .take(5)
            .collect();
        panic!(
            "{what}: {} duplicate message ids in the stream of {}, e.g. {dups:?}",
            msgs.len() - ids.len(),
            msgs.len()
        );
    }
    assert!(!ids.contains(""), "{what}: a message without Nats-Msg-Id");
    let mut got: Vec<String> = msgs.iter().map(|(_, v)| v.to_string()).collect();
    got.sort();
    if got != expected {
        let count = |list: &[String]| {
            let mut m = BTreeMap::<String, i64>::new();
            for l in list {
                *m.entry(l.clone()).or_default() += 1;
            }
            m
        };
        let (g, e) = (count(&got), count(expected));
        let missing: Vec<_> = e
            .iter()
            .filter(|(k, n)| g.get(*k) < Some(n))
            .take(3)
            .collect();
        let extra: Vec<_> = g
            .iter()
            .filter(|(k, n)| e.get(*k) < Some(n))
            .take(3)
            .collect();
        panic!(
            "{what}: stream has {} events, logs {}; missing {missing:?}; extra {extra:?}",
            got.len(),
            expected.len()
        );
    }
}

fn health(env: &Env) -> Value {
    let out = env.fsmon(&["health"]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The shipper's view of one group from `health`.
fn ship_group(env: &Env, group: &str) -> Option<Value> {
    health(env)["ship"]["groups"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == group)
        .cloned()
}

fn ship_config(urls: &[String], host: &str, stream: &str, extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[ship.nats]\nurls = [{}]\nhost = {host:?}\nstream = {stream:?}\n{extra}\n",
        urls.join(", ")
    )
}

/// `fsmon-testkit flood DIR N RATE` in the background.
fn flood(dir: &Path, n: usize, rate: u64) -> Child {
    Command::new(testkit_bin())
        .args([
            "flood",
            dir.to_str().unwrap(),
            &n.to_string(),
            &rate.to_string(),
        ])
        .spawn()
        .expect("testkit flood")
}

fn wait_child(mut c: Child) {
    let st = wait_for("workload to finish", LONG, || c.try_wait().unwrap());
    assert!(st.success(), "workload failed: {st}");
}

/// Waits until everything logged is acknowledged and the stream holds as
/// many events as the log; returns the stream's messages.
fn wait_all_shipped(env: &Env, urls: &[String], stream: &str, group: &str) -> Vec<(String, Value)> {
    wait_host_shipped(env, urls, stream, group, None)
}

/// As [`wait_all_shipped`], counting only `host`'s messages when the stream
/// is shared. The log is read again at each try (`pending_events` is
/// refreshed at most every 250 ms, so it can still say 0 just after a line
/// was logged).
fn wait_host_shipped(
    env: &Env,
    urls: &[String],
    stream: &str,
    group: &str,
    host: Option<&str>,
) -> Vec<(String, Value)> {
    wait_for("every logged event shipped", LONG, || {
        let g = ship_group(env, group)?;
        (g["pending_events"] == 0 && g["shipped"].as_u64()? > 0).then_some(())
    });
    wait_for("the stream to hold every event", LONG, || {
        let lines = expected_lines(env, "", group).len();
        let m = stream_messages(urls, stream);
        let n = m
            .iter()
            .filter(|(_, v)| host.is_none_or(|h| v["host"] == h))
            .count();
        (n >= lines).then_some(m)
    })
}

#[test]
fn outage_during_create_storm_every_event_exactly_once() {
    let dir = tmpdir();
    let mut nats = Nats::new(dir.path(), "n1", free_port(), "");
    let urls = vec![nats.url()];
    let env = Env::with_config(&ship_config(&urls, "host-outage", "OUTAGE", ""));
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    // ~30,000 events over ~20 s; NATS is down for 15 s in the middle.
    let storm = flood(&env.watch.join("storm"), 10_000, 1_500);
    wait_for("first events shipped", LONG, || {
        (ship_group(&env, "_global")?["shipped"].as_u64()? > 100).then_some(())
    });
    nats.stop(false);
    let outage = Instant::now();
    wait_for("the shipper to see the outage", LONG, || {
        (health(&env)["ship"]["connection"] == "disconnected").then_some(())
    });
    // The log keeps growing while NATS is down, and the backlog is shown.
    let before = expected_lines(&env, "", "_global").len();
    wait_for("events logged during the outage", LONG, || {
        let g = ship_group(&env, "_global")?;
        (expected_lines(&env, "", "_global").len() > before + 1000
            && g["pending_events"].as_u64()? > 1000
            && g["oldest_unshipped_age_secs"].as_f64()? > 0.0)
            .then_some(())
    });
    // The outage itself (a scenario length, not a wait for readiness).
    std::thread::sleep(Duration::from_secs(15).saturating_sub(outage.elapsed()));
    nats.start();
    wait_child(storm);
    let msgs = wait_all_shipped(&env, &urls, "OUTAGE", "_global");
    let expected = expected_lines(&env, "host-outage", "_global");
    assert!(
        expected.len() >= 30_000,
        "storm logged {} events",
        expected.len()
    );
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("after a 15 s outage\n{}", d.stderr()),
    );
    drop(d);
}

#[test]
fn sigkill_while_shipping_then_restart_loses_and_duplicates_nothing() {
    let dir = tmpdir();
    let nats = Nats::new(dir.path(), "n1", free_port(), "");
    let urls = vec![nats.url()];
    // A small window so the kill lands with acknowledgements unsaved.
    let env = Env::with_config(&ship_config(
        &urls,
        "host-kill",
        "KILL",
        "max_in_flight = 64",
    ));
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let storm = flood(&env.watch.join("storm"), 8_000, 6_000);
    wait_for("shipping under way", LONG, || {
        let g = ship_group(&env, "_global")?;
        (g["shipped"].as_u64()? > 500 && g["pending_events"].as_u64()? > 0).then_some(())
    });
    d.kill9();
    wait_child(storm);
    // Restart: the cursor on disk is behind what the stream acknowledged.
    let d = env.start(&[]);
    let msgs = wait_all_shipped(&env, &urls, "KILL", "_global");
    let expected = expected_lines(&env, "host-kill", "_global");
    // Events while the daemon was down were not logged (nor shipped).
    assert!(expected.len() > 1_000, "logged {} events", expected.len());
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("after SIGKILL and restart\n{}", d.stderr()),
    );
    drop(d);
}

#[test]
fn three_node_cluster_r3_survives_a_node_killed_mid_stream() {
    let dir = tmpdir();
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
        .collect();
    let mut nodes: Vec<Nats> = ports
        .iter()
        .enumerate()
        .map(|(i, (p, c))| {
            let cluster = format!(
                "cluster {{\n  name: fsmontest\n  listen: 127.0.0.1:{c}\n  routes: [{}]\n}}",
                routes.join(", ")
            );
            Nats::new(dir.path(), &format!("c{i}"), *p, &cluster)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let env = Env::with_config(&ship_config(&urls, "host-r3", "R3", "replicas = 3"));
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let storm = flood(&env.watch.join("storm"), 8_000, 3_000);
    fsmon_tests::wait_for_or(
        "shipping to the cluster",
        LONG,
        || (ship_group(&env, "_global")?["shipped"].as_u64()? > 500).then_some(()),
        || {
            format!(
                "ship health: {}\ndaemon:\n{}",
                health(&env)["ship"],
                d.stderr()
            )
        },
    );
    // Kill the stream's leader: the hardest node to lose.
    let leader = rt().block_on(async {
        let client = async_nats::connect(server_addrs(&urls)).await.ok()?;
        let js = jetstream::new(client);
        let mut st = js.get_stream("R3").await.ok()?;
        let info = st.info().await.ok()?;
        assert_eq!(info.config.num_replicas, 3);
        info.cluster.as_ref()?.leader.clone()
    });
    let victim = leader
        .as_deref()
        .and_then(|l| nodes.iter().position(|n| n.name == l))
        .unwrap_or(0);
    nodes[victim].stop(true);
    let survivors: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.url())
        .collect();
    wait_child(storm);
    let msgs = wait_all_shipped(&env, &survivors, "R3", "_global");
    let expected = expected_lines(&env, "host-r3", "_global");
    assert!(
        expected.len() >= 24_000,
        "storm logged {} events",
        expected.len()
    );
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("with a node of three killed\n{}", d.stderr()),
    );
    drop(d);
}

#[test]
fn fleet_query_merges_two_hosts_in_time_order_and_filters() {
    let dir = tmpdir();
    let nats = Nats::new(dir.path(), "n1", free_port(), "");
    let urls = vec![nats.url()];
    let a = Env::with_config(&ship_config(&urls, "alpha", "FLEET", ""));
    let b = Env::with_config(&ship_config(&urls, "beta.example", "FLEET", ""));
    a.add("_global", &a.watch, &["-r"]);
    b.add("_global", &b.watch, &["-r"]);
    let da = a.start(&[]);
    let db = b.start(&[]);
    // Interleaved writes: alpha, beta, alpha, beta...
    for i in 0..6 {
        let env = if i % 2 == 0 { &a } else { &b };
        fs::write(env.watch.join(format!("f{i}")), "x").unwrap();
        let n = i / 2 + 1;
        wait_for("the write logged", LONG, || {
            (fsmon_tests::read_events(&env.log_path("_global"))
                .iter()
                .filter(|e| e["event_type"] == "CLOSE_WRITE")
                .count()
                >= n)
                .then_some(())
        });
    }
    fs::create_dir_all(a.watch.join("sub")).unwrap();
    fs::write(a.watch.join("sub/deep"), "y").unwrap();
    let deep = a.watch.join("sub/deep");
    wait_for("sub/deep logged", LONG, || {
        fsmon_tests::read_events(&a.log_path("_global"))
            .iter()
            .any(|e| e["event_type"] == "CLOSE_WRITE" && e["path"] == deep.to_str().unwrap())
            .then_some(())
    });
    wait_host_shipped(&a, &urls, "FLEET", "_global", Some("alpha"));
    wait_host_shipped(&b, &urls, "FLEET", "_global", Some("beta.example"));
    let total = expected_lines(&a, "", "_global").len() + expected_lines(&b, "", "_global").len();

    let parse = |out: String| -> Vec<Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Every event of both hosts, in time order.
    let all = parse(a.fsmon_ok(&["fleet", "query", "-t", ">1h"]));
    assert_eq!(all.len(), total, "both hosts' events");
    let times: Vec<&str> = all.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "merged in time order");
    let hosts: HashSet<&str> = all.iter().map(|e| e["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, HashSet::from(["alpha", "beta.example"]));
    let writes: Vec<(&str, &str)> = all
        .iter()
        .filter(|e| e["event_type"] == "CLOSE_WRITE")
        .map(|e| (e["host"].as_str().unwrap(), e["path"].as_str().unwrap()))
        .collect();
    assert!(writes.len() >= 7);
    let order: Vec<&str> = writes.iter().take(6).map(|w| w.0).collect();
    assert_eq!(
        order,
        [
            "alpha",
            "beta.example",
            "alpha",
            "beta.example",
            "alpha",
            "beta.example"
        ],
        "interleaved writes come back interleaved"
    );
    // By host pattern.
    let only_beta = parse(a.fsmon_ok(&["fleet", "query", "--host", "beta*"]));
    assert!(!only_beta.is_empty() && only_beta.iter().all(|e| e["host"] == "beta.example"));
    let exact = parse(a.fsmon_ok(&["fleet", "query", "_global", "--host", "alpha"]));
    assert!(!exact.is_empty() && exact.iter().all(|e| e["host"] == "alpha"));
    // By path (whole components, as `query`).
    let sub = a.watch.join("sub");
    let under = parse(a.fsmon_ok(&["fleet", "query", "--path", sub.to_str().unwrap()]));
    assert!(!under.is_empty());
    assert!(under.iter().all(|e| {
        e["path"]
            .as_str()
            .unwrap()
            .starts_with(sub.to_str().unwrap())
    }));
    // A time window in the future holds nothing.
    assert_eq!(a.fsmon_ok(&["fleet", "query", "-t", ">=2099-01-01"]), "");
    // changes: one line per host and path, newest first.
    let ch = parse(a.fsmon_ok(&["fleet", "changes"]));
    let keys: HashSet<(String, String)> = ch
        .iter()
        .map(|e| (e["host"].to_string(), e["path"].to_string()))
        .collect();
    assert_eq!(keys.len(), ch.len());
    let ct: Vec<&str> = ch.iter().map(|e| e["time"].as_str().unwrap()).collect();
    let mut cs = ct.clone();
    cs.sort_by(|x, y| y.cmp(x));
    assert_eq!(ct, cs, "newest first");
    // hosts: both, with their last event time.
    let hs = parse(a.fsmon_ok(&["fleet", "hosts"]));
    let names: HashSet<&str> = hs.iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(names, HashSet::from(["alpha", "beta.example"]));
    assert!(hs.iter().all(|h| h["last_event"].is_string()));
    drop((da, db));
}

/// Starts a daemon with `ship` config, checks it logs one clear line about
/// `needle`, keeps logging locally, and shows the error in `health`.
fn bad_config_case(ship: &str, needle: &str) -> (Env, Daemon) {
    let env = Env::with_config(ship);
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    assert_one_clear_line(&env, &d, needle);
    (env, d)
}

/// The daemon logged one clear line about `needle` (and says events stay
/// local), keeps logging locally, and `health` shows the error.
fn assert_one_clear_line(env: &Env, d: &Daemon, needle: &str) {
    let line = wait_for(&format!("an error line with {needle:?}"), LONG, || {
        d.stderr()
            .lines()
            .find(|l| l.contains("ship:") && l.to_lowercase().contains(needle))
            .map(str::to_string)
    });
    assert!(line.contains("local"), "says events stay local: {line}");
    fs::write(env.watch.join("still-logged"), "x").unwrap();
    env.wait_events("_global", "local logging goes on", |evs| {
        evs.iter().any(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("still-logged"))
        })
    });
    let h = health(env);
    assert!(
        h["ship"]["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains(needle)),
        "health shows the error: {h}"
    );
}

#[test]
fn bad_configuration_is_one_clear_line_and_local_logging_goes_on() {
    let dir = tmpdir();
    // Nothing listens on this port.
    let dead = format!("nats://127.0.0.1:{}", free_port());
    let (env, d) = bad_config_case(&ship_config(&[dead], "h", "BAD", ""), "refused");
    // Retries go on (with backoff) without a line each.
    let n = d.stderr().lines().filter(|l| l.contains("refused")).count();
    assert_eq!(n, 1, "one line, not one per attempt:\n{}", d.stderr());
    drop((d, env));

    // Wrong credentials.
    let auth = Nats::new(
        dir.path(),
        "auth",
        free_port(),
        "authorization {\n  user: fsmon\n  password: right\n}",
    );
    let d = bad_config_case(
        &ship_config(
            &[auth.url()],
            "h",
            "BAD",
            "user = \"fsmon\"\npassword = \"wrong\"",
        ),
        "authorization",
    );
    drop(d);
    drop(auth);

    // A stream with other subjects.
    let plain = Nats::new(dir.path(), "plain", free_port(), "");
    rt().block_on(async {
        let js = jetstream::new(async_nats::connect(plain.url()).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: "WRONG".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let d = bad_config_case(&ship_config(&[plain.url()], "h", "WRONG", ""), "captures");
    drop(d);

    // A missing stream that may not be created.
    let d = bad_config_case(
        &ship_config(&[plain.url()], "h", "ABSENT", "create_stream = false"),
        "does not exist",
    );
    drop(d);

    // Syntax errors in the section stop the daemon with one line.
    let env = Env::with_config("[ship.nats]\nhost = \"h\"\n");
    let out = env.fsmon(&["daemon"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ship.nats.url") && err.trim().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn clean_keeps_unshipped_lines_and_ids_survive_clean() {
    let dir = tmpdir();
    let port = free_port();
    let urls = vec![format!("nats://127.0.0.1:{port}")];
    let env = Env::with_config(&ship_config(&urls, "host-clean", "CLEAN", ""));
    env.add("_global", &env.watch, &["-r"]);
    // NATS is not there yet: everything stays unshipped.
    let d = env.start(&[]);
    for i in 0..20 {
        fs::write(env.watch.join(format!("a{i}")), "x").unwrap();
    }
    env.wait_events("_global", "20 writes", |e| e.len() >= 40);
    let out = env.fsmon(&["clean", "_global", "--time", ">=2099-01-01"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not yet shipped") && err.contains("keeping"),
        "{err}"
    );
    assert!(env.events("_global").len() >= 40, "unshipped lines kept");

    // NATS comes: all shipped. Then a clean removes the shipped prefix, more
    // events come, and every event is still in the stream exactly once.
    let _nats = Nats::new(dir.path(), "n1", port, "");
    wait_all_shipped(&env, &urls, "CLEAN", "_global");
    let before_clean = expected_lines(&env, "host-clean", "_global");
    env.fsmon_ok(&["clean", "_global", "--time", ">=2099-01-01"]);
    assert!(
        env.events("_global").is_empty(),
        "shipped lines removed: {:?}\n{}\n{}",
        env.events("_global"),
        health(&env),
        d.stderr()
    );
    for i in 0..10 {
        fs::write(env.watch.join(format!("b{i}")), "x").unwrap();
    }
    env.wait_events("_global", "10 writes", |e| e.len() >= 20);
    let after = expected_lines(&env, "host-clean", "_global");
    let want = before_clean.len() + after.len();
    let msgs = wait_for("the stream to hold every event", LONG, || {
        let m = stream_messages(&urls, "CLEAN");
        (m.len() >= want).then_some(m)
    });
    let mut expected = before_clean;
    expected.extend(after);
    expected.sort();
    assert_exactly_once(&msgs, &expected, "across a clean");

    // --drop-unshipped removes lines even when they are not shipped.
    drop(_nats);
    for i in 0..5 {
        fs::write(env.watch.join(format!("c{i}")), "x").unwrap();
    }
    env.wait_events("_global", "5 more writes", |e| e.len() >= 30);
    env.fsmon_ok(&[
        "clean",
        "_global",
        "--time",
        ">=2099-01-01",
        "--drop-unshipped",
    ]);
    assert!(env.events("_global").is_empty());
    drop(d);
}

#[test]
fn restart_after_the_duplicate_window_still_sends_nothing_twice() {
    // A 1 s duplicate window: after a SIGKILL the acknowledgements not yet
    // saved in the cursor are past the window when the daemon comes back,
    // so only reading back the stream (reconciliation) avoids duplicates.
    let dir = tmpdir();
    let nats = Nats::new(dir.path(), "n1", free_port(), "");
    let urls = vec![nats.url()];
    let env = Env::with_config(&ship_config(
        &urls,
        "host-window",
        "WINDOW",
        "duplicate_window_secs = 1",
    ));
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    let storm = flood(&env.watch.join("storm"), 8_000, 8_000);
    wait_for("shipping under way", LONG, || {
        let g = ship_group(&env, "_global")?;
        (g["shipped"].as_u64()? > 2000 && g["pending_events"].as_u64()? > 0).then_some(())
    });
    d.kill9();
    wait_child(storm);
    // Longer than the window (the scenario, not a wait for readiness).
    std::thread::sleep(Duration::from_secs(3));
    let d = env.start(&[]);
    let msgs = wait_all_shipped(&env, &urls, "WINDOW", "_global");
    let expected = expected_lines(&env, "host-window", "_global");
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("restart after the duplicate window\n{}", d.stderr()),
    );
    drop(d);
}

/// `openssl` with `args` in `dir`, asserting success.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=fsmon-test-ca"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca-key.pem", "-out", "ca.pem"]);
    openssl(dir, &ca);
    fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let key = format!("{who}-key.pem");
        let csr = format!("{who}.csr");
        let mut req = vec!["req", "-subj", "/CN=127.0.0.1"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        let (pem, ext) = (format!("{who}.pem"), format!("{who}.ext"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

#[test]
fn tls_with_client_certificate_and_key_files_checked() {
    let dir = tmpdir();
    let d = dir.path();
    make_certs(d);
    let tls = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}",
        d.join("server.pem"),
        d.join("server-key.pem"),
        d.join("ca.pem")
    );
    let nats = Nats::new(d, "tls", free_port(), &tls);
    let urls = vec![format!("tls://127.0.0.1:{}", nats.port)];
    let files = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}",
        d.join("ca.pem"),
        d.join("client.pem"),
        d.join("client-key.pem")
    );
    let env = Env::with_config(&ship_config(&urls, "host-tls", "TLS", &files));
    env.add("_global", &env.watch, &["-r"]);
    let daemon = env.start(&[]);
    fs::write(env.watch.join("over-tls"), "x").unwrap();
    env.wait_events("_global", "the write logged", |e| e.len() >= 2);
    wait_for("shipped over TLS", LONG, || {
        let g = ship_group(&env, "_global")?;
        (g["pending_events"] == 0 && g["shipped"].as_u64()? >= 2).then_some(())
    });
    drop(daemon);
    // The client certificate is read back over TLS with the same files.
    let out = env.fsmon_ok(&["fleet", "query"]);
    assert!(
        out.contains("over-tls") && out.contains("host-tls"),
        "{out}"
    );

    // A key that belongs to another user is refused (the daemon runs as
    // root for its user: it must not read other users' secrets).
    let foreign = d.join("foreign-key.pem");
    fs::copy(d.join("client-key.pem"), &foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(54_321), Some(54_321)).unwrap();
    let files = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}",
        d.join("ca.pem"),
        d.join("client.pem"),
        foreign
    );
    let (env2, daemon) = bad_config_case(
        &ship_config(&urls, "host-tls", "TLS", &files),
        "belongs to uid 54321",
    );
    drop((daemon, env2));
}

#[test]
fn clean_without_a_daemon_moves_the_cursor_too() {
    let dir = tmpdir();
    let nats = Nats::new(dir.path(), "n1", free_port(), "");
    let urls = vec![nats.url()];
    let env = Env::with_config(&ship_config(&urls, "host-cli", "CLICLEAN", ""));
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&[]);
    for i in 0..20 {
        fs::write(env.watch.join(format!("a{i}")), "x").unwrap();
    }
    env.wait_events("_global", "20 writes", |e| e.len() >= 40);
    wait_all_shipped(&env, &urls, "CLICLEAN", "_global");
    d.stop();
    let before = expected_lines(&env, "host-cli", "_global");
    // No daemon: the CLI trims and moves the cursor itself.
    env.fsmon_ok(&["clean", "_global", "--time", ">=2099-01-01"]);
    assert!(env.events("_global").is_empty());
    let d = env.start(&[]);
    for i in 0..10 {
        fs::write(env.watch.join(format!("b{i}")), "x").unwrap();
    }
    env.wait_events("_global", "10 writes", |e| e.len() >= 20);
    let after = expected_lines(&env, "host-cli", "_global");
    let want = before.len() + after.len();
    let msgs = wait_for("the stream to hold every event", LONG, || {
        let m = stream_messages(&urls, "CLICLEAN");
        (m.len() >= want).then_some(m)
    });
    let mut expected = before;
    expected.extend(after);
    expected.sort();
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("across a clean without daemon\n{}", d.stderr()),
    );
    assert!(
        !d.stderr().contains("new log id"),
        "the trim kept the numbering:\n{}",
        d.stderr()
    );
}

/// `sudo fsmon ARGS` run by `user`: root working for that user.
fn fsmon_for(env: &Env, user: &TestUser, args: &[&str]) -> std::process::Output {
    Command::new(fsmon_bin())
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env("SUDO_UID", user.uid.to_string())
        .output()
        .expect("run fsmon")
}

/// An env with `config` in a directory `user` owns (the test users have no
/// home): the daemon working for `user` writes its logs and cursors there
/// with the user's credentials.
fn env_for(user: &TestUser, config: &str) -> Env {
    let env = Env::with_config(config);
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for p in [env.dir.path(), env.watch.as_path()] {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).unwrap();
    }
    let out = fsmon_for(
        &env,
        user,
        &[
            "add",
            "_global",
            "--path",
            env.watch.to_str().unwrap(),
            "-r",
        ],
    );
    assert!(
        out.status.success(),
        "add for {}: {}",
        user.name,
        String::from_utf8_lossy(&out.stderr)
    );
    env
}

#[test]
fn a_users_daemon_ships_with_the_users_credentials() {
    let dir = tmpdir();
    let nats = Nats::new(dir.path(), "n1", free_port(), "");
    let urls = vec![nats.url()];
    let user = TestUser::new("ship");
    let uid = user.uid.to_string();

    // `sudo fsmon daemon` run by the user: the shipper thread reads the
    // user's log and writes the cursor beside it as the user.
    let env = env_for(&user, &ship_config(&urls, "host-user", "USERSHIP", ""));
    let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
    for i in 0..300 {
        fs::write(env.watch.join(format!("u{i}")), "x").unwrap();
    }
    env.wait_events("_global", "300 writes logged", |e| e.len() >= 600);
    let msgs = wait_all_shipped(&env, &urls, "USERSHIP", "_global");
    let expected = expected_lines(&env, "host-user", "_global");
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("a user's daemon\n{}", d.stderr()),
    );
    let cursor = PathBuf::from(format!("{}.ship-cursor", env.log_path("_global").display()));
    let m = fs::symlink_metadata(&cursor).expect("the cursor beside the log");
    assert!(m.is_file(), "cursor is a regular file");
    assert_eq!(
        (m.uid(), m.gid()),
        (user.uid, user.gid),
        "the cursor belongs to the user"
    );
    assert_eq!(m.mode() & 0o077, 0, "cursor mode {:o}", m.mode());
    let saved: Value = serde_json::from_slice(&fs::read(&cursor).unwrap()).unwrap();
    assert!(saved.is_object(), "cursor: {saved}");
    d.stop();

    // Secrets the user cannot read (root's, mode 0600) are refused with one
    // line, although root could read them; the daemon keeps logging.
    let creds = env.dir.path().join("root-only.creds");
    let ca = env.dir.path().join("root-only-ca.pem");
    for p in [&creds, &ca] {
        fs::write(p, "not for the user\n").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    for (key, path) in [("creds_file", &creds), ("tls_ca", &ca)] {
        env.write_config(&ship_config(
            &urls,
            "host-user",
            "USERSHIP",
            &format!("{key} = {path:?}"),
        ));
        let d = env.start_with_env(&[], &[("SUDO_UID", &uid)]);
        assert_one_clear_line(&env, &d, "permission denied");
        let lines: Vec<String> = d
            .stderr()
            .lines()
            .filter(|l| l.contains("ship:") && l.to_lowercase().contains("permission denied"))
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 1, "{key}: one line:\n{}", d.stderr());
        assert!(
            lines[0].contains(path.to_str().unwrap()),
            "{key}: the line names the file: {}",
            lines[0]
        );
        d.stop();
    }
    // The stream is untouched by the refused runs: still exactly once.
    let msgs = stream_messages(&urls, "USERSHIP");
    assert_exactly_once(&msgs, &expected, "after the refused runs");
    drop(user);
}

/// The daemon's retention never archives a line the stream has not
/// acknowledged, and rotation keeps every event's id: with a tiny size and
/// NATS down, the live log grows past the rotation size without being
/// archived; once NATS is up everything is shipped, the log is archived,
/// and the stream holds what `query` reads (archives + live log) exactly
/// once.
#[test]
fn rotation_keeps_unshipped_lines_and_ids() {
    let dir = tmpdir();
    let port = free_port();
    let urls = vec![format!("nats://127.0.0.1:{port}")];
    let env = Env::with_config(&format!(
        "{}[logging]\nsize = \">=40KB\"\nretention_interval_secs = 1\n",
        ship_config(&urls, "host-rot", "ROT", "")
    ));
    env.add("_global", &env.watch, &["-r"]);
    let d = env.start(&["--debug"]);
    for i in 0..60 {
        fs::write(env.watch.join(format!("a{i}")), "x").unwrap();
    }
    env.wait_events("_global", "60 writes", |e| e.len() >= 120);
    let len = fs::metadata(env.log_path("_global")).unwrap().len();
    assert!(len > 4096, "past the rotation size: {len}");
    // Retention passes ran and declined (the daemon says so at debug level).
    let declined = "retention: nothing to archive now";
    let before = d.stderr().matches(declined).count();
    wait_for("two retention passes past the size", LONG, || {
        (d.stderr().matches(declined).count() >= before + 2).then_some(())
    });
    let archives = |env: &Env| -> usize {
        fs::read_dir(&env.logs)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".jsonl.zst")
            })
            .count()
    };
    assert_eq!(archives(&env), 0, "nothing archived before it is shipped");
    let queried = |env: &Env| -> Vec<String> {
        let mut v: Vec<String> = env
            .fsmon_ok(&["query", "_global"])
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.insert("host".into(), "host-rot".into());
                o.insert("group".into(), "_global".into());
                v.to_string()
            })
            .collect();
        v.sort();
        v
    };
    let _nats = Nats::new(dir.path(), "n1", port, "");
    wait_for("an archive once shipped", LONG, || {
        (archives(&env) > 0).then_some(())
    });
    for i in 0..10 {
        fs::write(env.watch.join(format!("b{i}")), "x").unwrap();
    }
    let expected = wait_for("the new events logged", LONG, || {
        let q = queried(&env);
        (q.len() >= 140).then_some(q)
    });
    let msgs = wait_for("the stream to hold every event", LONG, || {
        let m = stream_messages(&urls, "ROT");
        (m.len() >= expected.len()).then_some(m)
    });
    assert_exactly_once(
        &msgs,
        &expected,
        &format!("across rotation\n{}", d.stderr()),
    );
    drop(d);
}
