-- Providers, their capacity pools, assistance delivered against needs, the ordered
-- waitlists and every lifecycle event. Capacity is counted in the pool row, which each
-- reservation locks, so the CHECKs below can never be broken by concurrent requests.

ALTER TABLE needs ADD COLUMN met_at timestamptz;
ALTER TABLE needs ADD CONSTRAINT needs_met_has_time CHECK ((state = 'MET') = (met_at IS NOT NULL));
CREATE INDEX needs_for_report ON needs (type_id, district_code, sex, age_band);

CREATE TABLE providers (
    provider_id   text PRIMARY KEY,
    name_en       text NOT NULL CHECK (name_en <> ''),
    name_az       text NOT NULL CHECK (name_az <> ''),
    kind          text NOT NULL
                  CHECK (kind IN ('CLINIC', 'SPA_CENTRE', 'TRAINING_CENTRE', 'SUPPLIER', 'WORKSHOP')),
    district_code text NOT NULL
);

CREATE TABLE capacity_pools (
    pool_id     text PRIMARY KEY,
    provider_id text NOT NULL REFERENCES providers,
    type_id     text NOT NULL,
    model       text NOT NULL CHECK (model IN ('stock', 'seats', 'session_slots')),
    name_en     text NOT NULL CHECK (name_en <> ''),
    name_az     text NOT NULL CHECK (name_az <> ''),
    capacity    integer NOT NULL CHECK (capacity >= 0),
    reserved    integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- A cohort's course length, for types whose course length comes from the pool.
    sessions    integer CHECK (sessions > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- No overbooking, ever.
    CHECK (reserved <= capacity)
);
CREATE INDEX capacity_pools_by_provider ON capacity_pools (provider_id, pool_id);
CREATE INDEX capacity_pools_by_type ON capacity_pools (type_id);

CREATE TABLE assistance (
    assistance_id     text PRIMARY KEY,
    -- Arrival order, assigned under the pool's lock: lists and waitlists follow it.
    ord               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    need_id           text NOT NULL REFERENCES needs,
    survivor_id       text NOT NULL,
    type_id           text NOT NULL,
    state             text NOT NULL CHECK (state ~ '^[a-z][a-z0-9_]{1,39}$'),
    -- Not in a terminal state; one unfinished assistance per need at a time.
    active            boolean NOT NULL,
    provider_id       text REFERENCES providers,
    pool_id           text REFERENCES capacity_pools,
    quantity          integer NOT NULL CHECK (quantity > 0),
    -- Whether this assistance currently counts in its pool's `reserved`.
    holds_capacity    boolean NOT NULL DEFAULT false,
    referral_consent  boolean NOT NULL,
    data              jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(data) = 'object'),
    course_length     integer CHECK (course_length > 0),
    attended_sessions integer NOT NULL DEFAULT 0 CHECK (attended_sessions >= 0),
    delivered_at      timestamptz,
    follow_up_dates   date[] NOT NULL DEFAULT '{}',
    district_code     text NOT NULL,
    sex               smallint NOT NULL,
    age_band          smallint NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Attendance never runs past the course (and there is none without a course).
    CHECK (attended_sessions <= coalesce(course_length, 0)),
    -- Delivered items and finished cohorts' seats stay counted, so no `active` here.
    CHECK (NOT holds_capacity OR pool_id IS NOT NULL),
    -- A provider receives no referral without the survivor's consent to it.
    CHECK (provider_id IS NULL OR referral_consent)
);
CREATE UNIQUE INDEX one_unfinished_assistance_per_need ON assistance (need_id) WHERE active;
CREATE INDEX assistance_by_survivor ON assistance (survivor_id, ord);
CREATE INDEX assistance_by_pool ON assistance (pool_id, ord);
CREATE INDEX assistance_by_need ON assistance (need_id);

-- The order of waiting is the order of arrival under the pool's lock: seq.
CREATE TABLE waitlist (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id       text NOT NULL REFERENCES capacity_pools,
    assistance_id text NOT NULL UNIQUE REFERENCES assistance,
    quantity      integer NOT NULL CHECK (quantity > 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waitlist_in_order ON waitlist (pool_id, seq);

CREATE TABLE assistance_events (
    assistance_id text NOT NULL REFERENCES assistance,
    seq           integer NOT NULL CHECK (seq >= 1),
    from_state    text NOT NULL DEFAULT '',
    to_state      text NOT NULL,
    action        text NOT NULL,
    actor         text NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}'::jsonb,
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (assistance_id, seq)
);

-- Every change of capacity (reservations aside): seeding, new cohorts, restock, write-off.
CREATE TABLE capacity_adjustments (
    adjustment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pool_id       text NOT NULL REFERENCES capacity_pools,
    delta         integer NOT NULL CHECK (delta <> 0),
    reason        text NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);
