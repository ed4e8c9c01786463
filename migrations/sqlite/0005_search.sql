-- #21: full-text search, FTS5. rowid = messages.id. Contentless (content=''), so no text is
-- stored twice; contentless_delete lets a row go with its message under storage.expunged =
-- "delete". The text is prepared by idlesync (lower case, punctuation as spaces, unspaced
-- scripts as bigrams), so unicode61 (without diacritics folding, as on PostgreSQL) sees plain
-- words. account_id is a column of the index: every search names it in its MATCH.
CREATE VIRTUAL TABLE search_fts USING fts5(
    account_id, doc, subject, from_, to_, cc, files,
    content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 0'
);

-- Rows stored before this migration are indexed by the daemon in the background, in batches.
CREATE TABLE search_backfill (next_id BIGINT NOT NULL, end_id BIGINT NOT NULL);
INSERT INTO search_backfill (next_id, end_id) SELECT 0, COALESCE(MAX(id), 0) FROM messages;
