-- The batch layer's published views. Every view table is partitioned by batch version: a run
-- loads its rows into fresh tables, attaches them as version N's partitions and records N in
-- batch_runs, in one transaction. Readers pick a version from batch_runs and query that version,
-- so they never see a half-written one; the last K versions are kept.

create table batch_runs (
    version          bigint primary key,
    started_at       timestamptz not null,
    published_at     timestamptz not null default now(),
    -- windows ending at or before the cutoff (epoch ms) are final in this version; null: no data
    cutoff_ms        bigint,
    -- {"topic": {"partition": next offset}} of the master dataset snapshot the run read
    offsets          jsonb not null,
    rows_scanned     bigint not null,
    events_counted   bigint not null,
    duration_ms      bigint not null,
    -- rows per view table
    rows             jsonb not null
);

create table sensor_windows (
    version                bigint not null,
    view                   text not null,           -- '1m' or '5m1m'
    device_id              text not null,
    start_ms               bigint not null,
    end_ms                 bigint not null,
    count                  bigint not null,
    temperature_min        double precision not null,
    temperature_max        double precision not null,
    temperature_sum_micro  bigint not null,          -- exact sum in 10^-6 °C
    vibration_min          double precision not null,
    vibration_max          double precision not null,
    vibration_sum_micro    bigint not null           -- exact sum in 10^-6 mm/s
) partition by list (version);

create table card_windows (
    version           bigint not null,
    card_id           text not null,
    start_ms          bigint not null,
    end_ms            bigint not null,
    count             bigint not null,
    amount_sum_cents  bigint not null,
    amount_max_cents  bigint not null,
    merchants         text[] not null,
    countries         text[] not null
) partition by list (version);

create table card_sessions (like card_windows) partition by list (version);

create table device_baselines (
    version           bigint not null,
    device_id         text not null,
    hour              smallint,                      -- UTC hour of day; null: all hours
    count             bigint not null,
    temperature_mean  double precision not null,
    temperature_std   double precision not null,     -- population standard deviation
    vibration_mean    double precision not null,
    vibration_std     double precision not null
) partition by list (version);

create table card_profiles (
    version            bigint not null,
    card_id            text not null,
    payments           bigint not null,
    amount_mean_cents  double precision not null,
    amount_std_cents   double precision not null,   -- population standard deviation
    home_country       text not null,               -- the most frequent country
    countries          text[] not null,
    mccs               integer[] not null,           -- the five most frequent categories
    active_hours       smallint[] not null          -- UTC hours of day with payments
) partition by list (version);

create table fraud_models (
    version       bigint primary key,
    model         jsonb not null,                   -- lambdalake_views::fraud::Model
    trained_on    bigint not null,
    held_out      bigint not null,
    precision     double precision,
    recall        double precision,
    auc           double precision
);
