//! Tests across services, on the real Kafka-protocol broker, Redis and PostgreSQL started by
//! `infra/local/stack up` (their addresses come from `infra/local/stack env`). Every test makes
//! its own topics, so tests run in parallel and leave nothing behind that another test reads.

#[cfg(test)]
mod batch;
#[cfg(test)]
mod bench;
#[cfg(test)]
mod compose;
#[cfg(test)]
mod dashboard;
#[cfg(test)]
mod faults;
#[cfg(test)]
mod ingest;
#[cfg(test)]
mod lakehouse;
#[cfg(test)]
mod observe;
#[cfg(test)]
mod serving;
#[cfg(test)]
mod speed;
#[cfg(test)]
mod support;
#[cfg(test)]
mod tls;
