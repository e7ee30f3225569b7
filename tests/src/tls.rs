//! TLS to the stores and the broker, against real servers: a Redis with only a TLS port, a
//! PostgreSQL with `ssl=on` and a nisshi broker whose listener speaks only TLS, each with a
//! certificate from a private CA made here with `openssl`. The services trust it through the
//! standard `SSL_CERT_FILE` (Redis, PostgreSQL) or `--kafka-ssl-ca-location` (Kafka); without it
//! they refuse the server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::faults::{free_port, initdb, nisshi, pg_bin, pg_ctl, start_args, wait_port};
use crate::speed::{Kill, Setup, now_ms, sensor_json};
use crate::support::unique;

/// A CA and a server certificate for 127.0.0.1 / localhost, in `dir`.
fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=lambdalake test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
}

fn tls_redis(dir: &Path, port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-cert-file", dir.join("server.crt").to_str().unwrap()])
        .args(["--tls-key-file", dir.join("server.key").to_str().unwrap()])
        .args(["--tls-ca-cert-file", dir.join("ca.crt").to_str().unwrap()])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server with TLS (Debian's is built with it)")
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speed_layer_and_the_batch_layer_talk_tls_to_redis_and_postgres() {
    lambdalake_runtime::tls::install_crypto_provider();
    let dir = std::env::temp_dir().join(unique("ll-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let ca = dir.join("ca.crt");

    // Redis: the speed layer over rediss://, trusting the CA through SSL_CERT_FILE
    let port = free_port();
    let _redis = Kill(vec![tls_redis(&dir, port)]);
    wait_port(port, "redis (TLS)");
    let url = format!("rediss://127.0.0.1:{port}/");
    let mut s = Setup::on(None, &url);
    s.redis = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .expect("a TLS client");
    let speed = |s: &mut Setup, trust: bool| {
        let log = dir.join(format!("speed-{trust}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(crate::support::workspace_binary("lambdalake-speed"));
        cmd.args(s.speed_args())
            .env("LAMBDALAKE_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        if trust {
            cmd.env("SSL_CERT_FILE", &ca);
        }
        (cmd.spawn().expect("lambdalake-speed"), log)
    };
    // without the CA the server is refused, and said so
    let (child, log) = speed(&mut s, false);
    let mut untrusting = Kill(vec![child]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_of(&log).to_lowercase().contains("certificate") {
        assert!(
            Instant::now() < deadline,
            "no certificate error: {}",
            log_of(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    untrusting.0[0].kill().ok();
    // with it, the views are written
    let (child, log) = speed(&mut s, true);
    let _speed = Kill(vec![child]);
    let t = now_ms() - 60_000;
    let events: Vec<String> = (0..50)
        .map(|i| sensor_json(&format!("tls-{i}"), "d-tls", t + i * 100, 21.0, 1.0))
        .collect();
    s.send_sensors(&events).await;
    tokio::task::block_in_place(|| s.wait_applied(Duration::from_secs(60)));
    let windows: Vec<String> = s
        .con()
        .keys(format!("{}:v:sensor:*", s.prefix))
        .expect("keys over TLS");
    assert!(
        !windows.is_empty(),
        "views written over TLS: {}",
        log_of(&log)
    );

    // PostgreSQL with ssl=on: the batch layer with sslmode=require
    let pg_dir = dir.join("pg-root");
    std::fs::create_dir_all(pg_dir.join("pg")).unwrap();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(dir.join(f), pg_dir.join("pg").join(f)).unwrap();
    }
    // initdb gives <pg_dir>/pg to the postgres user; the key must be private to it
    let _ = Command::new("chmod")
        .args(["600", pg_dir.join("pg/server.key").to_str().unwrap()])
        .status();
    let bin = pg_bin();
    initdb(&bin, &pg_dir);
    let pg_port = free_port();
    let mut args = start_args(&pg_dir, pg_port);
    let opts = args.iter().position(|a| a == "-o").unwrap() + 1;
    args[opts] = format!(
        "{} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        args[opts],
        pg_dir.join("pg/server.crt").display(),
        pg_dir.join("pg/server.key").display()
    );
    pg_ctl(&bin, &pg_dir, &args);
    let stop = PgStop(bin.clone(), pg_dir.clone());
    let batch = |sslmode: &str, trust: bool| {
        let mut cmd = Command::new(crate::batch::batch_binary());
        cmd.args(["--dataset", dir.join("master").to_str().unwrap()])
            .args([
                "--postgres-url",
                &format!("postgres://postgres@127.0.0.1:{pg_port}/postgres?sslmode={sslmode}"),
            ])
            .args(["--key-prefix", &s.prefix, "--redis-url", &url])
            .arg("run-once")
            .env("LAMBDALAKE_LOG", "info");
        if trust {
            cmd.env("SSL_CERT_FILE", &ca);
        }
        let out = cmd.output().expect("lambdalake-batch run-once");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = batch("require", true);
    assert!(ok, "{out}");
    let (ok, out) = batch("require", false);
    assert!(!ok, "an untrusted server is refused: {out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    // the stack's PostgreSQL has no TLS: sslmode=require says so
    let stack = std::env::var("LAMBDALAKE_POSTGRES_URL").unwrap_or_else(|_| {
        "postgres://lambdalake:lambdalake@127.0.0.1:15432/lambdalake".to_owned()
    });
    let sep = if stack.contains('?') { '&' } else { '?' };
    let refused = Command::new(crate::batch::batch_binary())
        .args(["--dataset", dir.join("master").to_str().unwrap()])
        .args(["--postgres-url", &format!("{stack}{sep}sslmode=require")])
        .arg("run-once")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    drop(stop);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops the test's PostgreSQL when dropped.
struct PgStop(PathBuf, PathBuf);

impl Drop for PgStop {
    fn drop(&mut self) {
        pg_ctl(
            &self.0,
            &self.1,
            &["-m", "immediate", "stop"].map(str::to_owned),
        );
    }
}

/// Kafka over TLS: ingest produces to a broker whose listener speaks only TLS, and a consumer
/// built by `consumer_config` (the one the speed layer, the lakehouse and the archiver use)
/// reads every event back, both trusting the test's CA through `--kafka-ssl-ca-location`. A
/// client without the CA, or in plaintext, gets no metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_consumers_talk_tls_to_the_broker() {
    use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = std::env::temp_dir().join(unique("ll-kafka-tls"));
    std::fs::create_dir_all(dir.join("broker")).unwrap();
    certificates(&dir);
    let ca = dir.join("ca.crt");
    let port = free_port();
    let listener = format!("tcp://127.0.0.1:{port}");
    let log = dir.join("broker.log");
    let file = std::fs::File::create(&log).unwrap();
    let broker = Command::new(nisshi())
        .current_dir(dir.join("broker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["broker", "--cluster-id", "lambdalake-tls"])
        .args(["--listener-url", &listener])
        .args(["--advertised-listener-url", &listener])
        .args(["--storage-engine", "memory://nisshi/"])
        .args(["--cert", dir.join("server.crt").to_str().unwrap()])
        .args(["--key", dir.join("server.key").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start nisshi");
    let _broker = Kill(vec![broker]);
    wait_port(port, "the TLS broker");
    let brokers = format!("127.0.0.1:{port}");
    let ca_arg = ca.to_str().unwrap().to_owned();
    let ingest = crate::support::Ingest::start(&[
        "--kafka-brokers",
        &brokers,
        "--kafka-security-protocol",
        "ssl",
        "--kafka-ssl-ca-location",
        &ca_arg,
    ])
    .await;
    let t = now_ms() - 1_000;
    let body: String = (0..20)
        .map(|i| {
            let reading = sensor_json(&format!("ktls-{i}"), "d-ktls", t + i, 21.0, 1.0);
            reading + "\n"
        })
        .collect();
    let res = reqwest::Client::new()
        .post(format!("{}/v1/sensor-readings", ingest.url))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(
        status.is_success(),
        "{status}: {text}; broker log: {}",
        log_of(&log)
    );

    let mut kafka = crate::support::kafka_args();
    kafka.brokers = brokers;
    kafka.security_protocol = lambdalake_kafka::SecurityProtocol::Ssl;
    kafka.ssl_ca_location = Some(ca.clone());
    let topic = ingest.sensor_topic.clone();
    let records = tokio::task::block_in_place(|| {
        crate::support::read_topic_on(&kafka, &topic, 20, Duration::from_millis(500))
    });
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.value["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("ktls-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    ingest.stop().await;

    // without the CA, and in plaintext, the broker is out of reach
    for (protocol, trusted) in [
        (lambdalake_kafka::SecurityProtocol::Ssl, None),
        (lambdalake_kafka::SecurityProtocol::Plaintext, None),
    ] {
        kafka.security_protocol = protocol;
        kafka.ssl_ca_location = trusted;
        let consumer: BaseConsumer = lambdalake_kafka::consumer_config(&kafka, &unique("it-tls"))
            .create()
            .unwrap();
        let metadata = tokio::task::block_in_place(|| {
            consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))
        });
        assert!(
            metadata.is_err(),
            "{} without the CA reached the TLS listener",
            protocol.as_str()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
