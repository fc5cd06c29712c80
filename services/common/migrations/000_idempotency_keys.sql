-- Every mutating RPC is idempotent through its request_id (see services/common/idempotency.py).
CREATE TABLE idempotency_keys (
    request_id   text PRIMARY KEY CHECK (length(request_id) BETWEEN 1 AND 128),
    method       text NOT NULL,
    payload_hash bytea NOT NULL,
    response     bytea,
    created_at   timestamptz NOT NULL DEFAULT now()
);
