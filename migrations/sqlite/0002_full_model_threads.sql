-- #3: the full parsed model, attachments, raw retention and conversations (threads).
-- Address lists stay JSON arrays of {"name","address"} in TEXT; times stay Unix milliseconds.

ALTER TABLE messages ADD COLUMN sender_addr     TEXT    NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN reply_to_addrs  TEXT    NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN cc_addrs        TEXT    NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN bcc_addrs       TEXT    NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN in_reply_to     TEXT;
ALTER TABLE messages ADD COLUMN references_ids  TEXT    NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN snippet         TEXT    NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN has_attachments BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN truncated       BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN thread_id       BIGINT;
CREATE INDEX messages_thread ON messages (account_id, thread_id, received_at);

-- The original bytes, when storage.raw = "db" and they fit storage.raw_max_bytes.
CREATE TABLE message_raw (
    message_row_id BIGINT PRIMARY KEY REFERENCES messages (id),
    raw            BLOB   NOT NULL
);

-- One row per attachment or inline part. content is NULL (content_stored false) above
-- storage.attachment_max_bytes.
CREATE TABLE attachments (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_row_id BIGINT  NOT NULL REFERENCES messages (id),
    account_id     TEXT    NOT NULL,
    part_index     INTEGER NOT NULL,
    filename       TEXT,
    content_type   TEXT    NOT NULL,
    size           BIGINT  NOT NULL,
    content_id     TEXT,
    is_inline      BOOLEAN NOT NULL,
    content_stored BOOLEAN NOT NULL,
    content        BLOB,
    UNIQUE (message_row_id, part_index)
);

-- Conversations, per account. id is the messages.id of the message that started the thread.
CREATE TABLE threads (
    id              BIGINT PRIMARY KEY,
    account_id      TEXT   NOT NULL,
    subject         TEXT,
    subject_key     TEXT   NOT NULL,
    started_at      BIGINT,
    last_message_at BIGINT NOT NULL,
    message_count   BIGINT NOT NULL,
    unread_count    BIGINT NOT NULL,
    participants    TEXT   NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX threads_account_last ON threads (account_id, last_message_at DESC, id DESC);
CREATE INDEX threads_account_subject ON threads (account_id, subject_key);

-- Every Message-ID seen (as a message's own id, or named by In-Reply-To / References) and its
-- thread. present: a message with this id is stored.
CREATE TABLE thread_refs (
    account_id TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    thread_id  BIGINT  NOT NULL,
    present    BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, message_id)
);
CREATE INDEX thread_refs_thread ON thread_refs (account_id, thread_id);

-- One row per account, locked by each batch so that two mailboxes of an account thread in turn.
CREATE TABLE account_locks (
    account_id TEXT   PRIMARY KEY,
    batches    BIGINT NOT NULL
);

-- Messages stored before this migration: one thread each.
UPDATE messages SET thread_id = id;
INSERT INTO threads (id, account_id, subject, subject_key, started_at, last_message_at,
                     message_count, unread_count, participants, updated_at)
SELECT id, account_id, subject, '', COALESCE(sent_at, received_at),
       COALESCE(received_at, sent_at, stored_at), 1,
       CASE WHEN instr(flags, '\Seen') > 0 THEN 0 ELSE 1 END, from_addr, stored_at
FROM messages;
INSERT INTO thread_refs (account_id, message_id, thread_id, present)
SELECT account_id, message_id, MIN(id), TRUE FROM messages
WHERE message_id IS NOT NULL GROUP BY account_id, message_id;
