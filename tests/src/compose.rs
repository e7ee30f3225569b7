//! The compose stack and the Dockerfile, checked without Docker (no engine on our machines):
//! `infra/compose/check` validates the compose file against the Compose Specification schema,
//! pinned image tags, references, every lambdalake service's environment against its binary's
//! `--help`, health checks and ports. It must pass on the real files and catch each planted
//! problem of the fixtures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(args: &[&str]) -> Output {
    let bin_dir = crate::support::workspace_binary("lambdalake-ingest")
        .parent()
        .unwrap()
        .to_owned();
    Command::new(root().join("infra/compose/check"))
        .current_dir(root())
        .arg("--bin-dir")
        .arg(bin_dir)
        .args(args)
        .output()
        .expect("run infra/compose/check")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_compose_file_and_the_dockerfile_pass_every_check() {
    let out = check(&[]);
    assert!(
        out.status.success(),
        "infra/compose/check found problems:\n{}",
        text(&out)
    );
}

#[test]
fn planted_compose_problems_are_each_reported() {
    let out = check(&["--compose", "infra/compose/testdata/bad-compose.yml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    for problem in [
        r#"services.web.image: "nginx" has no tag"#,
        r#"services.cache.image: "redis:latest" uses the floating tag "latest""#,
        r#"services.ingest.depends_on: "kafka" is not a service in this file"#,
        "services.ingest.environment: LAMBDALAKE_KAFKA_BROKER is not read by lambdalake-ingest (did you mean LAMBDALAKE_KAFKA_BROKERS?)",
        "services.ingest.environment: LAMBDALAKE_KAFKA_BROKERS is not set",
        "services.cache.healthcheck: missing",
        r#"services.ingest.depends_on: condition service_healthy on "cache", which has no healthcheck"#,
        "services.proxy.image: ${PROXY_IMAGE} has no default",
        "services.proxy.ports: host port 8080/tcp is also published by services.web",
        r#"services.proxy.volumes: bind mount source "./no-such-directory" does not exist"#,
        "services.ingest.environment: LAMBDALAKE_INGEST_LISTEN=127.0.0.1:8080 listens on loopback",
    ] {
        assert!(
            report.contains(problem),
            "not reported: {problem}\n{report}"
        );
    }
}

#[test]
fn planted_dockerfile_problems_are_each_reported() {
    let out = check(&["--dockerfile", "infra/compose/testdata/bad.Dockerfile"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    for problem in [
        r#"bad.Dockerfile: line 10: FROM "debian" has no tag"#,
        "bad.Dockerfile: line 10: the final stage runs as root",
        "services.speed.command: the Dockerfile (bad.Dockerfile) does not build lambdalake-speed",
        "services.lakehouse.command: the Dockerfile (bad.Dockerfile) does not build lambdalake-lakehouse",
    ] {
        assert!(
            report.contains(problem),
            "not reported: {problem}\n{report}"
        );
    }
}
