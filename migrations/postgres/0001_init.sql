-- idlesync schema, PostgreSQL. Times are Unix milliseconds (BIGINT), so that the same queries
-- run on SQLite. Address lists are JSON arrays of {"name","address"} stored as TEXT.

CREATE TABLE mailbox_state (
    account_id  TEXT   NOT NULL,
    mailbox     TEXT   NOT NULL,
    uidvalidity BIGINT NOT NULL,
    last_uid    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, mailbox)
);

CREATE TABLE messages (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   TEXT    NOT NULL,
    mailbox      TEXT    NOT NULL,
    uidvalidity  BIGINT  NOT NULL,
    uid          BIGINT  NOT NULL,
    message_id   TEXT,
    subject      TEXT,
    from_addr    TEXT    NOT NULL,
    to_addrs     TEXT    NOT NULL,
    sent_at      BIGINT,
    received_at  BIGINT,
    text_body    TEXT,
    html_body    TEXT,
    size         BIGINT  NOT NULL,
    flags        TEXT    NOT NULL,
    parse_error  BOOLEAN NOT NULL,
    stored_at    BIGINT  NOT NULL,
    UNIQUE (account_id, mailbox, uidvalidity, uid)
);
CREATE INDEX messages_account_received ON messages (account_id, received_at DESC);
CREATE INDEX messages_message_id ON messages (account_id, message_id);

-- Records waiting to be published. Written in the same transaction as their messages.
CREATE TABLE outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id TEXT   NOT NULL,
    mailbox    TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    exists_at_us BIGINT
);
