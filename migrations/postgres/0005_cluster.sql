-- Cluster mode (#13): replicas' heartbeats and one lease per mailbox, with a fencing epoch.
-- PostgreSQL only (`check` refuses cluster mode on SQLite). Times are the database's own clock
-- (`now()`), so the replicas' clocks never matter.

-- One row per replica. A replica is live while `expires_at > now()`; its heartbeat and its
-- leases' renewal are one statement, so a dead replica and its leases expire together.
CREATE TABLE cluster_nodes (
    node_id      TEXT        PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL
);

-- One row per (account, mailbox) any replica has in its config. Free: `owner IS NULL` (and
-- `expires_at` is when it became free). Held: `owner` and `expires_at > now()`. Taking a free
-- or expired lease bumps `epoch`, which only ever grows: every write for the mailbox checks,
-- inside its own transaction, that `(owner, epoch)` is still the writer's and unexpired.
-- Renewals only touch `expires_at` (not indexed), so they are HOT updates; fillfactor leaves
-- room for them on the page.
CREATE TABLE mailbox_leases (
    account_id  TEXT        NOT NULL,
    mailbox     TEXT        NOT NULL,
    owner       TEXT,
    epoch       BIGINT      NOT NULL DEFAULT 0,
    expires_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    acquired_at TIMESTAMPTZ,
    PRIMARY KEY (account_id, mailbox)
) WITH (fillfactor = 70);
CREATE INDEX mailbox_leases_owner ON mailbox_leases (owner);
