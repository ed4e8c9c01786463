-- #19: actions the web app asks for through the API (flags, moves, deletes), run by the task
-- that holds the mailbox's IMAP connection. Times are Unix ms.
--
-- actions: one row per accepted request. status is queued | running | done | failed, and
-- follows its steps: failed as soon as one fails, done when all are done. error_code is one of
-- gone, no_such_mailbox, refused, timeout, stale_uidvalidity. result is JSON (per-step detail).
-- idempotency_key: a retried request with the same key returns this row; fingerprint is the
-- request it was first used for (method, path, body), so a key reused for another request is
-- refused instead of answered with the wrong action.
CREATE TABLE actions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id      TEXT   NOT NULL,
    kind            TEXT   NOT NULL,
    target          TEXT   NOT NULL,
    params          TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    error_code      TEXT,
    error_message   TEXT,
    result          TEXT,
    idempotency_key TEXT   UNIQUE,
    fingerprint     TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    deadline_at     BIGINT NOT NULL
);
CREATE INDEX actions_finished ON actions (updated_at) WHERE status IN ('done', 'failed');

-- action_steps: what one mailbox's task does for an action, in id order per mailbox. uids is a
-- space-separated list of the UIDs (of uidvalidity) it acts on; moved is JSON [[old, new], ..]
-- from the server's COPYUID once a move ran.
CREATE TABLE action_steps (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id     BIGINT NOT NULL,
    account_id    TEXT   NOT NULL,
    mailbox       TEXT   NOT NULL,
    uidvalidity   BIGINT NOT NULL,
    uids          TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    error_code    TEXT,
    error_message TEXT,
    result        TEXT,
    deadline_at   BIGINT NOT NULL
);
CREATE INDEX action_steps_pending ON action_steps (account_id, mailbox, id)
    WHERE status IN ('queued', 'running');
CREATE INDEX action_steps_action ON action_steps (action_id);

-- The server's mailboxes per account, from LIST at each connection of the account's first
-- watched mailbox: the API refuses a move to a mailbox the server does not have (422), and a
-- delete finds the Trash by SPECIAL-USE. special_use is e.g. '\Trash', or NULL.
CREATE TABLE server_mailboxes (
    account_id  TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    special_use TEXT,
    seen_at     BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

-- A move into a watched mailbox is not new mail: before the MOVE is sent, each moved
-- message's Message-ID is written here for the destination; the destination's batch that
-- stores it takes the row away and leaves the message out of its newMail record.
CREATE TABLE expected_arrivals (
    account_id TEXT   NOT NULL,
    mailbox    TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    action_id  BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX expected_arrivals_key ON expected_arrivals (account_id, mailbox, message_id);
