//! The ingest body splitter and every event validator on arbitrary bytes; the property is
//! `lambdalake_events::fuzzing::ingest_body` (also run by the test suite over the seeds).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lambdalake_events::fuzzing::ingest_body(data));
