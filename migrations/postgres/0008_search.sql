-- #21: full-text search. One row per message (messages.id), written in the message's own batch
-- transaction and removed with it under storage.expunged = "delete". The text is prepared by
-- idlesync (lower case, punctuation as spaces, unspaced scripts as bigrams) and indexed with the
-- 'simple' configuration: no stemming that would mangle other languages.
--
-- doc: subject, names and addresses, body text and attachment names; the other columns are the
-- fields of from:, to:, cc:, subject: and filename:. One GIN index over all of them and the
-- account (btree_gin, a trusted contrib extension), so that the account is part of every
-- search's index condition.
CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE TABLE search_docs (
    message_id BIGINT   PRIMARY KEY,
    account_id TEXT     NOT NULL,
    doc        tsvector NOT NULL,
    subject    tsvector NOT NULL,
    from_      tsvector NOT NULL,
    to_        tsvector NOT NULL,
    cc         tsvector NOT NULL,
    files      tsvector NOT NULL
);
CREATE INDEX search_docs_index ON search_docs USING gin (account_id, doc, subject, from_, to_, cc, files);

-- Rows stored before this migration are indexed by the daemon in the background, in batches of
-- ids up to end_id (the newest id now), with a progress line in the log; new mail is indexed
-- as it is stored. No lock on messages is held meanwhile.
CREATE TABLE search_backfill (next_id BIGINT NOT NULL, end_id BIGINT NOT NULL);
INSERT INTO search_backfill (next_id, end_id) SELECT 0, COALESCE(MAX(id), 0) FROM messages;
