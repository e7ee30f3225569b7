//! The speed layer on the real broker and Redis: the `lambdalake-speed` binary (built next to
//! this test binary; `infra/local/test` builds it) against views with a known answer, SIGKILLs,
//! and two instances in one group.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lambdalake_events::{Event, Payment, Policy, SensorReading};
use lambdalake_kafka::{KafkaArgs, Producer, ProducerArgs};
use lambdalake_views::keys::{CardView, Keys, SensorView, StoredCard, StoredSensor};
use lambdalake_views::table::{self, Keyed};
use lambdalake_views::{CardAgg, SensorAgg, Sessions, WindowSpec};
use rand::Rng;
use redis::Commands;

use crate::support::{read_topic, unique};

fn redis_url() -> String {
    std::env::var("LAMBDALAKE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".to_owned())
}

fn speed_binary() -> PathBuf {
    crate::support::workspace_binary("lambdalake-speed")
}

fn kafka() -> (KafkaArgs, ProducerArgs) {
    crate::support::kafka_and_producer()
}

/// One speed-layer deployment: its topics, key prefix and group, all fresh.
pub(crate) struct Setup {
    pub(crate) sensor: String,
    pub(crate) payment: String,
    pub(crate) alerts: String,
    pub(crate) late: String,
    pub(crate) dead: String,
    pub(crate) prefix: String,
    pub(crate) group: String,
    pub(crate) keys: Keys,
    pub(crate) redis: redis::Client,
    pub(crate) producer: Producer,
    /// Next offset of every partition written so far (topic, partition) → end.
    pub(crate) ends: HashMap<(String, i32), i64>,
    /// Every event sent, decoded as the speed layer decodes it.
    pub(crate) sensors: Vec<SensorReading>,
    pub(crate) payments: Vec<Payment>,
    /// Readings sent that must not be counted (late), to look for them in Redis too.
    pub(crate) unapplied_sensors: Vec<SensorReading>,
    pub(crate) logs: Vec<PathBuf>,
    /// The Redis the processes use (the stack's by default).
    pub(crate) redis_url: String,
    /// Brokers other than the stack's, passed to every process started from here.
    pub(crate) brokers: Option<String>,
}

impl Setup {
    pub(crate) fn new() -> Setup {
        Setup::on(None, &redis_url())
    }

    /// A deployment on its own broker (`brokers`) and Redis.
    pub(crate) fn on(brokers: Option<&str>, redis: &str) -> Setup {
        let (mut kafka, producer) = kafka();
        if let Some(b) = brokers {
            kafka.brokers = b.to_owned();
        }
        let prefix = unique("it");
        Setup {
            sensor: unique("it-sensor"),
            payment: unique("it-payment"),
            alerts: unique("it-alerts"),
            late: unique("it-late"),
            dead: unique("it-dead"),
            group: unique("it-speed"),
            keys: Keys::new(prefix.clone()),
            prefix,
            redis: redis::Client::open(redis).expect("redis url"),
            redis_url: redis.to_owned(),
            brokers: brokers.map(str::to_owned),
            producer: Producer::new(&kafka, &producer).expect("producer"),
            ends: HashMap::new(),
            sensors: Vec::new(),
            payments: Vec::new(),
            unapplied_sensors: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Every argument of a `lambdalake-speed` process of this deployment.
    pub(crate) fn speed_args(&self) -> Vec<String> {
        let mut args = self.args_in(&self.redis_url, &self.group);
        args.extend(self.broker_args());
        args
    }

    /// `--kafka-brokers` when the deployment has brokers of its own.
    pub(crate) fn broker_args(&self) -> Vec<String> {
        self.brokers
            .iter()
            .flat_map(|b| ["--kafka-brokers".to_owned(), b.clone()])
            .collect()
    }

    /// The service's arguments for this deployment, talking to Redis at `redis_url`.
    fn args(&self, redis_url: &str) -> Vec<String> {
        self.args_in(redis_url, &self.group)
    }

    /// The same arguments with another consumer group.
    fn args_in(&self, redis_url: &str, group: &str) -> Vec<String> {
        [
            "--listen",
            "127.0.0.1:0",
            "--topic-sensor-readings",
            &self.sensor,
            "--topic-payments",
            &self.payment,
            "--topic-alerts",
            &self.alerts,
            "--topic-late-events",
            &self.late,
            "--topic-dead-letter",
            &self.dead,
            "--key-prefix",
            &self.prefix,
            "--group",
            group,
            "--redis-url",
            redis_url,
            // a killed member's partitions move after 6 s rather than 45 s
            "--kafka-option",
            "session.timeout.ms=6000",
            "--kafka-option",
            "heartbeat.interval.ms=500",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The configuration of an in-process instance.
    fn config(&self, redis_url: &str, extra: &[&str]) -> lambdalake_speed::Config {
        let mut args = vec!["lambdalake-speed".to_owned()];
        args.extend(self.args(redis_url));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        <lambdalake_speed::Config as clap::Parser>::try_parse_from(args).expect("valid arguments")
    }

    /// Start one `lambdalake-speed` process; its log goes to a file named in failures.
    pub(crate) fn spawn(&mut self, extra: &[&str]) -> Child {
        let group = self.group.clone();
        self.spawn_in(&group, extra)
    }

    /// Start one `lambdalake-speed` process in consumer group `group`.
    fn spawn_in(&mut self, group: &str, extra: &[&str]) -> Child {
        let args = self.args_in(&self.redis_url, group);
        self.launch(args, extra)
    }

    /// Start one `lambdalake-speed` process whose operations endpoints listen on `port`.
    pub(crate) fn spawn_listening(&mut self, port: u16, extra: &[&str]) -> Child {
        let mut args = self.args_in(&self.redis_url, &self.group);
        let listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
        args[listen] = format!("127.0.0.1:{port}");
        self.launch(args, extra)
    }

    fn launch(&mut self, args: Vec<String>, extra: &[&str]) -> Child {
        let log = std::env::temp_dir().join(format!("{}-{}.log", self.prefix, self.logs.len()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(speed_binary());
        cmd.args(args)
            .args(self.broker_args())
            .args(extra)
            .env("LAMBDALAKE_LOG", "info")
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file));
        self.logs.push(log);
        cmd.spawn().expect("start lambdalake-speed")
    }

    /// The alert stored in Redis with `alert_id`, if any.
    pub(crate) fn alert(&self, alert_id: &str) -> Option<serde_json::Value> {
        let stored: Vec<String> = self
            .con()
            .zrange(self.keys.alerts(), 0, -1)
            .expect("zrange");
        stored
            .iter()
            .map(|a| serde_json::from_str::<serde_json::Value>(a).expect("alert json"))
            .find(|a| a["alert_id"] == alert_id)
    }

    /// Produce raw records (key, value) to `topic` and wait for the acknowledgements.
    pub(crate) async fn produce(&mut self, topic: &str, records: &[(String, Vec<u8>)]) {
        let batch = self.producer.batch();
        for (i, (key, value)) in records.iter().enumerate() {
            batch
                .send(i, topic, key.as_bytes(), value)
                .expect("enqueue");
        }
        for (_, outcome) in batch.acked().await {
            let acked = outcome.expect("acknowledged");
            let end = self
                .ends
                .entry((topic.to_owned(), acked.partition))
                .or_insert(0);
            *end = (*end).max(acked.offset + 1);
        }
    }

    pub(crate) async fn send_sensors(&mut self, jsons: &[String]) {
        let mut records = Vec::new();
        for j in jsons {
            let r = SensorReading::from_json(j.as_bytes(), &Policy::stored()).expect("valid");
            records.push((r.device_id.as_str().to_owned(), j.clone().into_bytes()));
            self.sensors.push(r);
        }
        let topic = self.sensor.clone();
        self.produce(&topic, &records).await;
    }

    pub(crate) async fn send_payments(&mut self, jsons: &[String]) {
        let mut records = Vec::new();
        for j in jsons {
            let p = Payment::from_json(j.as_bytes(), &Policy::stored()).expect("valid");
            records.push((p.card_id.as_str().to_owned(), j.clone().into_bytes()));
            self.payments.push(p);
        }
        let topic = self.payment.clone();
        self.produce(&topic, &records).await;
    }

    pub(crate) fn con(&self) -> redis::Connection {
        self.redis
            .get_connection()
            .expect("redis (is the local stack up?)")
    }

    /// Wait until every partition's stored offset reached what was produced.
    pub(crate) fn wait_applied(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut con = self.con();
        loop {
            let behind: Vec<String> = self
                .ends
                .iter()
                .filter_map(|((topic, p), end)| {
                    let stored: Option<i64> = con
                        .hget(self.keys.partition(topic, *p), "offset")
                        .expect("hget");
                    (stored.unwrap_or(0) < *end)
                        .then(|| format!("{topic}/{p}: stored {stored:?}, produced up to {end}"))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the speed layer did not catch up within {timeout:?}: {behind:?}; logs: {:?}",
                self.logs
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every key an event sent (applied or not) could have written, for the kind of view.
    fn candidates(&self, pattern: &str) -> Vec<String> {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let readings = self.sensors.iter().chain(&self.unapplied_sensors);
        for r in readings {
            for view in SensorView::ALL {
                for w in view.spec().assign(r.ts) {
                    keys.insert(self.keys.sensor_windows(view, w.start.millis()));
                }
            }
        }
        for p in &self.payments {
            for w in WindowSpec::ONE_MINUTE.assign(p.ts) {
                keys.insert(self.keys.card_windows(w.start.millis()));
            }
            keys.insert(
                self.keys
                    .card_sessions(p.ts.millis().div_euclid(60_000) * 60_000),
            );
        }
        let prefix = pattern.trim_end_matches('*');
        keys.into_iter().filter(|k| k.starts_with(prefix)).collect()
    }

    /// Every window of a sensor view in Redis, whatever its key.
    fn sensor_view(&self, view: SensorView) -> Keyed<SensorAgg> {
        let mut con = self.con();
        let pattern = format!("{}:v:sensor:{}:*", self.prefix, view.name());
        let mut out = Keyed::new();
        for key in self.candidates(&pattern) {
            let fields: HashMap<String, String> = con.hgetall(&key).expect("hgetall");
            for (device, json) in fields {
                let s: StoredSensor = serde_json::from_str(&json).expect("stored sensor window");
                assert_eq!(
                    key,
                    self.keys.sensor_windows(view, s.start),
                    "window in the wrong hash"
                );
                out.insert((device, s.window()), s.agg());
            }
        }
        out
    }

    fn card_view(&self, view: CardView) -> Keyed<CardAgg> {
        let mut con = self.con();
        let pattern = format!("{}:v:card:{}:*", self.prefix, view.name());
        let mut out = Keyed::new();
        for key in self.candidates(&pattern) {
            let fields: HashMap<String, String> = con.hgetall(&key).expect("hgetall");
            for (card, json) in fields {
                let s: StoredCard = serde_json::from_str(&json).expect("stored card window");
                let expected_key = match view {
                    CardView::OneMinute => self.keys.card_windows(s.start),
                    CardView::Session => {
                        self.keys.card_sessions(s.start.div_euclid(60_000) * 60_000)
                    }
                };
                assert_eq!(key, expected_key, "window in the wrong hash");
                out.insert((card, s.window()), s.agg());
            }
        }
        out
    }

    /// Every view in Redis equals the one-shot computation over `expected` events.
    fn assert_views(&self, readings: &[SensorReading], payments: &[Payment]) {
        for view in SensorView::ALL {
            let got = self.sensor_view(view);
            let want = table::sensor_windows(readings, view.spec());
            assert_maps_eq(&got, &want, &format!("sensor view {}", view.name()));
        }
        let got = self.card_view(CardView::OneMinute);
        let want = table::card_windows(payments, WindowSpec::ONE_MINUTE);
        assert_maps_eq(&got, &want, "card 1-minute view");
        let got = self.card_view(CardView::Session);
        let want = table::card_sessions(payments, Sessions::CARD_GAP_MS);
        assert_maps_eq(&got, &want, "card sessions");
    }
}

fn assert_maps_eq<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    what: &str,
) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).collect();
    let wrong: Vec<_> = want
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, g, v)))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{what}: {} windows missing {missing:?}; {} extra {extra:?}; {} wrong (key, got, want) {wrong:?}",
        missing.len(),
        extra.len(),
        wrong.len()
    );
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

pub(crate) fn sensor_json(id: &str, device: &str, ts: i64, t: f64, v: f64) -> String {
    format!(
        r#"{{"event_id":"{id}","device_id":"{device}","site":"plant-1","ts":{ts},"temperature_c":{t},"vibration_mm_s":{v}}}"#
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn payment_json(
    id: &str,
    card: &str,
    ts: i64,
    cents: i64,
    merchant: &str,
    mcc: u16,
    country: &str,
    lat: f64,
    lon: f64,
) -> String {
    format!(
        r#"{{"event_id":"{id}","txn_id":"t-{id}","card_id":"{card}","merchant_id":"{merchant}","mcc":"{mcc}","amount":{}.{:02},"currency":"EUR","country":"{country}","lat":{lat},"lon":{lon},"ts":{ts}}}"#,
        cents / 100,
        cents % 100
    )
}

pub(crate) struct Kill(pub(crate) Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn views_are_exact_with_out_of_order_late_and_duplicate_events() {
    let mut s = Setup::new();
    // partitions without events stop holding the watermark back after 3 s (long enough for the
    // first fetch of every partition after the assignment, short enough for the test)
    let child = s.spawn(&[
        "--reference-refresh",
        "100ms",
        "--idle-partition-after",
        "3s",
    ]);
    let _guard = Kill(vec![child]);
    let t = now_ms() / 60_000 * 60_000 - 120_000; // a minute boundary, two minutes ago

    // phase A, in order
    s.send_sensors(&[
        sensor_json("a1", "d1", t, 20.0, 1.5),
        sensor_json("a2", "d1", t + 10_000, 22.25, 0.5),
        sensor_json("a3", "d1", t + 65_000, 30.0, 2.0),
        sensor_json("a4", "d2", t + 5_000, -10.5, 0.0),
    ])
    .await;
    s.send_payments(&[
        payment_json("p1", "c1", t + 1_000, 1000, "m1", 5411, "FR", 48.85, 2.35),
        payment_json("p2", "c1", t + 2_000, 550, "m2", 5411, "FR", 48.85, 2.35),
        payment_json("p3", "c1", t + 70_000, 725, "m1", 5411, "DE", 48.85, 2.35),
        payment_json("p4", "c2", t + 3_000, 2000, "m3", 5411, "FR", 48.85, 2.35),
    ])
    .await;
    s.wait_applied(Duration::from_secs(60));
    // every partition idle: the watermark is the largest partition's (t + 65 s − 30 s)
    std::thread::sleep(Duration::from_millis(3_500));

    // phase B: an exact copy of an applied event, two copies in one batch, an out-of-order
    // event within the allowed lateness, one far behind the watermark, an invalid record, an
    // overheating reading and an impossible journey
    let late = sensor_json("late1", "d1", t - 10 * 60_000, 50.0, 1.0);
    s.send_sensors(&[
        sensor_json("a3", "d1", t + 65_000, 30.0, 2.0),
        sensor_json("b1", "d1", t + 50_000, 19.5, 3.0),
        sensor_json("b1", "d1", t + 50_000, 19.5, 3.0),
        sensor_json("b2", "d2", t + 40_000, 95.0, 0.1),
    ])
    .await;
    let late_reading = SensorReading::from_json(late.as_bytes(), &Policy::stored()).unwrap();
    s.unapplied_sensors.push(late_reading.clone());
    s.produce(&s.sensor.clone(), &[("d1".to_owned(), late.into_bytes())])
        .await;
    s.produce(
        &s.sensor.clone(),
        &[("d1".to_owned(), b"{not json".to_vec())],
    )
    .await;
    s.send_payments(&[payment_json(
        "p6",
        "c2",
        t + 90_000,
        3000,
        "m4",
        5411,
        "US",
        40.71,
        -74.0,
    )])
    .await;
    s.wait_applied(Duration::from_secs(60));

    // the late event is not in the views: it is on the late-events topic
    assert!(!s.sensors.contains(&late_reading));
    let late_records = read_topic(&s.late, 1, Duration::from_millis(500));
    assert_eq!(late_records.len(), 1, "{late_records:?}");
    let l = &late_records[0].value;
    assert_eq!(l["event"]["event_id"], "late1");
    assert_eq!(l["reason"], "behind_watermark");
    assert!(l["lateness_ms"].as_i64().unwrap() > 0, "{l}");
    let dead = read_topic(&s.dead, 1, Duration::from_millis(500));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value["payload"], "{not json");
    assert_eq!(dead[0].value["error"]["code"], "invalid_json");

    // alerts: the overheating reading and the impossible journey, in Redis and on the topic
    let mut con = s.con();
    let stored: Vec<String> = con.zrange(s.keys.alerts(), 0, -1).unwrap();
    let stored: Vec<serde_json::Value> = stored
        .iter()
        .map(|a| serde_json::from_str(a).unwrap())
        .collect();
    let ids: HashSet<&str> = stored
        .iter()
        .filter_map(|a| a["alert_id"].as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["sensor:b2", "fraud:p6"]), "{stored:?}");
    let fraud = stored.iter().find(|a| a["kind"] == "fraud").unwrap();
    assert_eq!(fraud["model_version"], "rules");
    assert!(
        fraud["reasons"]
            .as_array()
            .unwrap()
            .contains(&"impossible_travel".into())
    );
    assert!(fraud["features"]["travel_kmh"].as_f64().unwrap() > 900.0);
    assert_eq!(fraud["event"]["event_id"], "p6");
    let on_topic = read_topic(&s.alerts, 2, Duration::from_millis(500));
    assert_eq!(on_topic.len(), 2);

    // every view key expires
    let ttl: i64 = con
        .pttl(s.keys.sensor_windows(SensorView::OneMinute, t))
        .unwrap();
    assert!(ttl > 0 && ttl <= 2 * 3_600_000, "ttl {ttl}");

    // a model published by the batch layer is picked up without a restart
    let model = r#"{"version":"it-model-7","bias":8.0,"weights":[0,0,0,0,0]}"#;
    let () = con.set(s.keys.model(), model).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.send_payments(&[payment_json(
        "p7",
        "c3",
        t + 95_000,
        500,
        "m1",
        5411,
        "FR",
        48.85,
        2.35,
    )])
    .await;
    s.wait_applied(Duration::from_secs(30));
    let p7 = s
        .alert("fraud:p7")
        .expect("the new model scores p7 over the threshold");
    assert_eq!(p7["model_version"], "it-model-7");

    // card profiles are re-read when the batch layer bumps the reference version: a profile
    // whose home is Germany makes a French payment a new-country one
    let () = con.del(s.keys.model()).unwrap();
    let profile = r#"{"amount_mean_cents":1000.0,"amount_std_cents":1.0,"home_country":"DE","countries":["DE"]}"#;
    let () = con.set(s.keys.card_profile("c3"), profile).unwrap();
    let () = con.set(s.keys.reference_version(), "it-run-1").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.send_payments(&[payment_json(
        "p8",
        "c3",
        t + 96_000,
        100_000,
        "m1",
        7995,
        "FR",
        48.85,
        2.35,
    )])
    .await;
    s.wait_applied(Duration::from_secs(30));
    let p8 = s
        .alert("fraud:p8")
        .expect("the profile makes p8 an amount spike in a new country");
    assert_eq!(p8["model_version"], "rules");
    assert_eq!(p8["features"]["new_country"], true);
    assert!(
        p8["reasons"]
            .as_array()
            .unwrap()
            .contains(&"amount_spike".into())
    );

    // 45 minutes later: a second session of c1
    s.send_payments(&[payment_json(
        "p5",
        "c1",
        t + 70_000 + 45 * 60_000,
        100,
        "m9",
        5411,
        "FR",
        48.85,
        2.35,
    )])
    .await;
    s.wait_applied(Duration::from_secs(30));
    s.assert_views(&s.sensors.clone(), &s.payments.clone());
    let sessions = s.card_view(CardView::Session);
    assert_eq!(sessions.keys().filter(|(c, _)| c == "c1").count(), 2);
}

/// A card cache far smaller than the cards that pay (`--card-cache 8`, 200 cards): every view
/// is still exact, a card's fraud history outlives its eviction (an impossible journey that
/// spans it raises its alert), the cache stays at its bound, and a card whose newest payment is
/// a view TTL behind the watermark leaves Redis' card states and their index.
#[tokio::test(flavor = "multi_thread")]
async fn a_card_cache_smaller_than_the_cards_changes_no_view_and_no_alert() {
    let mut s = Setup::new();
    let port = crate::faults::free_port();
    let child = s.spawn_listening(
        port,
        &[
            "--card-cache",
            "8",
            "--view-ttl",
            "10m",
            "--idle-partition-after",
            "3s",
        ],
    );
    let _guard = Kill(vec![child]);
    let t = now_ms() / 60_000 * 60_000 - 120_000;
    let paris = |id: &str, card: &str, ts: i64| {
        payment_json(id, card, ts, 1250, "m1", 5411, "FR", 48.85, 2.35)
    };

    // an hour-old payment (the first event: no watermark yet, so it is applied), and a card at
    // home
    s.send_payments(&[paris("old", "c-old", t - 60 * 60_000)])
        .await;
    s.wait_applied(Duration::from_secs(60));
    s.send_payments(&[paris("home", "c-trip", t)]).await;
    s.wait_applied(Duration::from_secs(60));
    // 200 other cards pay twice, pushing c-trip out of the cache
    for round in 0..2 {
        let batch: Vec<String> = (0..200)
            .map(|c| {
                paris(
                    &format!("r{round}-{c}"),
                    &format!("c{c}"),
                    t + 1_000 + round * 20_000 + c,
                )
            })
            .collect();
        s.send_payments(&batch).await;
        s.wait_applied(Duration::from_secs(60));
    }
    // a minute after Paris, New York: only the history read back from Redis shows it
    s.send_payments(&[payment_json(
        "away",
        "c-trip",
        t + 60_000,
        1250,
        "m2",
        5411,
        "US",
        40.71,
        -74.0,
    )])
    .await;
    s.wait_applied(Duration::from_secs(60));

    s.assert_views(&[], &s.payments.clone());
    let away = s
        .alert("fraud:away")
        .expect("an alert for the impossible journey");
    assert!(
        away["reasons"]
            .as_array()
            .unwrap()
            .contains(&"impossible_travel".into()),
        "{away}"
    );

    let page = crate::support::metrics_page(&format!("http://127.0.0.1:{port}")).await;
    let value = |name: &str| -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{page}"))
    };
    let held = value("lambdalake_speed_card_cache_cards");
    assert!(held <= 8.0, "{held} card memories held, bound 8");
    assert!(value("lambdalake_speed_card_cache_evictions_total") >= 190.0);
    assert!(value("lambdalake_speed_card_cache_reads_total") >= 1.0);

    // c-old's newest payment is far more than a view TTL behind the watermark: gone from the
    // card states and the index of its partition; a card that paid just now is in both
    let parts: Vec<i32> = s
        .ends
        .keys()
        .filter(|(topic, _)| *topic == s.payment)
        .map(|(_, p)| *p)
        .collect();
    let mut con = s.con();
    let mut fresh = 0;
    for p in parts {
        let (states, index) = (
            s.keys.speed_cards(&s.payment, p),
            s.keys.speed_card_index(&s.payment, p),
        );
        let old: bool = con.hexists(&states, "c-old").unwrap();
        let score: Option<f64> = con.zscore(&index, "c-old").unwrap();
        assert!(
            !old && score.is_none(),
            "c-old still stored in {states} / {index}"
        );
        let trip: Option<String> = con.hget(&states, "c-trip").unwrap();
        if let Some(trip) = trip {
            let m: serde_json::Value = serde_json::from_str(&trip).unwrap();
            assert_eq!(m["last"]["event_id"], "away", "{m}");
            assert_eq!(m["history"].as_array().unwrap().len(), 2, "{m}");
            let score: Option<f64> = con.zscore(&index, "c-trip").unwrap();
            assert!(score.is_some(), "c-trip is not in {index}");
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "c-trip's state is in exactly one partition");
}

/// A generated stream: `n` events over `devices` devices and cards, event time advancing 20 ms
/// per event with up to ±2 s of disorder, and `dup_share` exact copies re-sent a little later.
fn stream(n: usize, keys: usize, dup_share: f64) -> (Vec<String>, Vec<String>) {
    stream_spaced(n, keys, dup_share, 20)
}

/// [`stream`] with `step_ms` of event time between consecutive events (±2 s), ending a minute ago.
pub(crate) fn stream_spaced(
    n: usize,
    keys: usize,
    dup_share: f64,
    step_ms: i64,
) -> (Vec<String>, Vec<String>) {
    stream_until(n, keys, dup_share, step_ms, now_ms() - 60_000)
}

/// [`stream_spaced`] ending at `end_ms` (event time).
pub(crate) fn stream_until(
    n: usize,
    keys: usize,
    dup_share: f64,
    step_ms: i64,
    end_ms: i64,
) -> (Vec<String>, Vec<String>) {
    let mut rng = rand::rng();
    let t0 = end_ms - n as i64 * step_ms;
    let (mut sensors, mut payments) = (Vec::new(), Vec::new());
    for i in 0..n {
        let ts = t0 + i as i64 * step_ms + rng.random_range(-2_000..2_000);
        let k = rng.random_range(0..keys);
        if i % 2 == 0 {
            let t = f64::from(rng.random_range(-500..1500)) / 100.0;
            let v = f64::from(rng.random_range(0..2000)) / 1000.0;
            sensors.push(sensor_json(&format!("s{i}"), &format!("d{k}"), ts, t, v));
        } else {
            let cents = rng.random_range(100..50_000);
            let country = ["FR", "DE", "ES"][rng.random_range(0..3)];
            payments.push(payment_json(
                &format!("p{i}"),
                &format!("c{k}"),
                ts,
                cents,
                &format!("m{}", rng.random_range(0..20)),
                5411,
                country,
                48.0,
                2.0,
            ));
        }
    }
    // copies, re-sent up to 100 events later
    for list in [&mut sensors, &mut payments] {
        let copies = (list.len() as f64 * dup_share) as usize;
        for _ in 0..copies {
            let at = rng.random_range(0..list.len());
            let copy = list[at].clone();
            let to = (at + rng.random_range(1..100)).min(list.len());
            list.insert(to, copy);
        }
    }
    (sensors, payments)
}

/// Send the stream in chunks while `during` runs; returns when all is sent.
pub(crate) async fn send_stream(
    s: &mut Setup,
    sensors: &[String],
    payments: &[String],
    chunk: usize,
    pause: Duration,
) {
    for (a, b) in sensors.chunks(chunk).zip(payments.chunks(chunk)) {
        s.send_sensors(a).await;
        s.send_payments(b).await;
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let mut s = Setup::new();
    let (sensors, payments) = stream(24_000, 40, 0.05);
    // the guard kills whatever instance runs when the test ends, even on a failure
    let mut guard = Kill(vec![s.spawn(&[])]);
    let mut kills = 0;
    let mut rng = rand::rng();
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(1_500..3_500));
    let chunks: Vec<(&[String], &[String])> =
        sensors.chunks(200).zip(payments.chunks(200)).collect();
    let mut sent = 0;
    while sent < chunks.len() || kills < 5 {
        if sent < chunks.len() {
            s.send_sensors(chunks[sent].0).await;
            s.send_payments(chunks[sent].1).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() >= next_kill {
            let child = &mut guard.0[0];
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            kills += 1;
            guard.0[0] = s.spawn(&[]);
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(1_500..4_000));
        }
    }
    s.wait_applied(Duration::from_secs(120));
    assert!(kills >= 5);
    s.assert_views(&s.sensors.clone(), &s.payments.clone());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_split_the_partitions_and_one_takes_over_after_a_kill() {
    let mut s = Setup::new();
    let (sensors, payments) = stream(12_000, 40, 0.02);
    let mut guard = Kill(vec![s.spawn(&[]), s.spawn(&[])]);
    let half = sensors.len() / 2;
    send_stream(
        &mut s,
        &sensors[..half],
        &payments[..half],
        200,
        Duration::from_millis(100),
    )
    .await;
    // both instances hold partitions: each applied something
    s.wait_applied(Duration::from_secs(60));
    let logs: Vec<String> = s
        .logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    for (i, log) in logs.iter().enumerate() {
        assert!(
            log.contains("partitions assigned"),
            "instance {i} got no partition: {log}"
        );
    }
    let a = &mut guard.0[0];
    a.kill().expect("SIGKILL");
    a.wait().expect("reaped");
    send_stream(
        &mut s,
        &sensors[half..],
        &payments[half..],
        200,
        Duration::from_millis(50),
    )
    .await;
    s.wait_applied(Duration::from_secs(90));
    s.assert_views(&s.sensors.clone(), &s.payments.clone());
}

/// Two deployments misconfigured with one key prefix and two consumer groups both read every
/// partition: the stored offsets fence them, and each write that lost the race is read again
/// from Redis' state — nothing the loser planned but did not apply (its watermark floor included)
/// may survive the repositioning.
#[tokio::test(flavor = "multi_thread")]
async fn two_groups_writing_one_prefix_are_fenced_by_the_stored_offsets() {
    let mut s = Setup::new();
    // a second of event time between events: a partition's share of a batch spans more than
    // the allowed lateness
    let (sensors, payments) = stream_spaced(4_000, 20, 0.02, 1_000);
    let other = unique("it-speed-other");
    let _guard = Kill(vec![s.spawn(&[]), s.spawn_in(&other, &[])]);
    send_stream(&mut s, &sensors, &payments, 50, Duration::from_millis(20)).await;
    s.wait_applied(Duration::from_secs(90));
    // both may still hold unapplied work; let them settle
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs: String = s
        .logs
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("does not continue the stored offset") || logs.contains("already applied"),
        "the two groups never raced: the test did not exercise the fence"
    );
    s.assert_views(&s.sensors.clone(), &s.payments.clone());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_the_service_runs_but_is_not_ready() {
    let s = Setup::new();
    let config = s.config("redis://127.0.0.1:1", &[]);
    let app = lambdalake_speed::Application::build(config)
        .await
        .expect("starts without Redis");
    let url = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let health = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("redis"));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops while Redis is down")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_name_every_series_and_count_what_was_applied() {
    let mut s = Setup::new();
    // partitions without events stop holding the watermark after 1 s
    let config = s.config(&redis_url(), &["--idle-partition-after", "1s"]);
    let app = lambdalake_speed::Application::build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    let t = now_ms();
    s.send_sensors(&[
        sensor_json("m1", "d1", t, 20.0, 1.0),
        sensor_json("m2", "d2", t, 95.0, 1.0),
    ])
    .await;
    s.send_payments(&[payment_json(
        "m3", "c1", t, 1000, "m1", 5411, "FR", 48.85, 2.35,
    )])
    .await;
    s.wait_applied(Duration::from_secs(60));
    // one more reading once the empty partitions went idle: the sensor watermark exists
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    s.send_sensors(&[sensor_json("m4", "d1", t + 1, 20.0, 1.0)])
        .await;
    s.wait_applied(Duration::from_secs(60));
    let http = reqwest::Client::new();
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // the applier counts just after the script, the lag comes with the client statistics (every
    // second) and the watermark delay with the next batch: give them a moment
    let mut text = String::new();
    for _ in 0..100 {
        text = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let all = lambdalake_speed::metrics::NAMES
            .iter()
            .all(|name| text.contains(&format!("\n{name}")));
        if all
            && text.contains(&format!(
                "lambdalake_speed_events_total{{outcome=\"applied\",topic=\"{}\"}} 1",
                s.payment
            ))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in lambdalake_speed::metrics::NAMES {
        assert!(
            text.contains(&format!("\n{name}")),
            "no {name} series in /metrics:\n{text}"
        );
    }
    for (topic, n) in [(&s.sensor, 3), (&s.payment, 1)] {
        let line =
            format!("lambdalake_speed_events_total{{outcome=\"applied\",topic=\"{topic}\"}} {n}");
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
    assert!(text.contains("lambdalake_speed_alerts_total{kind=\"sensor\"}"));
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// The Lambda invariant: on the windows the batch layer closed, its views (recomputed from the
/// master dataset the archiver wrote from the same topics) equal the speed layer's, when no
/// event was late for the speed layer.
#[tokio::test(flavor = "multi_thread")]
async fn lambda_invariant_batch_views_equal_speed_views_on_closed_windows() {
    let mut s = Setup::new();
    // 2 s of jitter against 30 s of allowed lateness: nothing is late
    let (sensors, payments) = stream_spaced(8_000, 25, 0.05, 150);
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let (archiver, log) = spawn_archiver(&s, &dir);
    let _guard = Kill(vec![s.spawn(&[]), archiver]);
    send_stream(&mut s, &sensors, &payments, 400, Duration::from_millis(20)).await;
    s.wait_applied(Duration::from_secs(90));
    wait_archived(&s, &dir, &log).await;
    let url = crate::batch::fresh_database().await;
    let run = lambdalake_batch::run_once(&crate::batch::config_for(&dir, &url, &s.prefix, &[]))
        .await
        .expect("batch run");
    let cutoff = run.cutoff_ms.expect("a cutoff");
    let client = lambdalake_batch::connect(&url).await.unwrap();
    let closed = |m: Keyed<SensorAgg>| -> Keyed<SensorAgg> {
        m.into_iter()
            .filter(|((_, w), _)| w.end.millis() <= cutoff)
            .collect()
    };
    let mut compared = 0;
    for view in SensorView::ALL {
        let batch = crate::batch::batch_sensor_view(&client, run.version, view.name()).await;
        let speed = closed(s.sensor_view(view));
        assert_maps_eq(&batch, &speed, &format!("sensor view {}", view.name()));
        compared += batch.len();
    }
    let batch = crate::batch::batch_card_view(&client, "card_windows", run.version).await;
    let speed: Keyed<CardAgg> = s
        .card_view(CardView::OneMinute)
        .into_iter()
        .filter(|((_, w), _)| w.end.millis() <= cutoff)
        .collect();
    assert_maps_eq(&batch, &speed, "card 1-minute view");
    compared += batch.len();
    // most of the stream is before the cutoff: the comparison is not vacuous
    assert!(compared > 1_000, "{compared} windows compared");
    let counted: u64 = crate::batch::batch_sensor_view(&client, run.version, "1m")
        .await
        .values()
        .map(|a| a.count)
        .sum();
    assert!(counted > 3_000, "{counted}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Start a `lambdalake-batch archive` process on the topics of `s`, writing the dataset at `dir`;
/// the process and its log file.
pub(crate) fn spawn_archiver(s: &Setup, dir: &std::path::Path) -> (Child, PathBuf) {
    let log = std::env::temp_dir().join(format!("{}-archiver.log", unique(&s.prefix)));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(crate::batch::batch_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--dataset",
            dir.to_str().unwrap(),
            "--group",
            &unique("it-archiver"),
            "--topic-sensor-readings",
            &s.sensor,
            "--topic-payments",
            &s.payment,
            "--topic-fraud-labels",
            &unique("it-labels"),
            "--flush-interval",
            "200ms",
        ])
        .args(s.broker_args())
        .arg("archive")
        .env("LAMBDALAKE_LOG", "info")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start lambdalake-batch");
    (child, log)
}

/// Wait until the archiver's manifests at `dir` reached every offset produced through `s`.
pub(crate) async fn wait_archived(s: &Setup, dir: &std::path::Path, log: &std::path::Path) {
    let dataset = lambdalake_batch::dataset::Dataset::open(dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind: Vec<String> = s
            .ends
            .iter()
            .filter(|((topic, p), end)| {
                dataset
                    .manifest(topic, *p)
                    .expect("manifest")
                    .is_none_or(|m| m.next_offset < **end)
            })
            .map(|((topic, p), end)| format!("{topic}/{p} < {end}"))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archiver did not catch up: {behind:?}; log {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
