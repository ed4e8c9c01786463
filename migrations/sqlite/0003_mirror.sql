-- #11: the store mirrors the mailbox. These column names are the contract with the web app.
--
-- messages.flags is always the server's current flags; modseq is the row's last MODSEQ (where
-- the server has CONDSTORE); expunged_at is Unix ms, NULL while the message is in the mailbox.
-- email_id / server_thread_id: RFC 8474 EMAILID / THREADID or Gmail's X-GM-MSGID / X-GM-THRID.
-- A move shows as the old placement expunged and a new one with the same email_id.
ALTER TABLE messages ADD COLUMN modseq           BIGINT;
ALTER TABLE messages ADD COLUMN expunged_at      BIGINT;
ALTER TABLE messages ADD COLUMN email_id         TEXT;
ALTER TABLE messages ADD COLUMN server_thread_id TEXT;
CREATE INDEX messages_email_id ON messages (account_id, email_id);

-- highest_modseq: the mailbox's HIGHESTMODSEQ once the changes stored are applied.
-- import_uid_next: UIDNEXT when the mailbox (or its UIDVALIDITY epoch) was first selected;
-- UIDs below it are history, announced as `imported`, not as new mail.
ALTER TABLE mailbox_state ADD COLUMN highest_modseq  BIGINT;
ALTER TABLE mailbox_state ADD COLUMN import_uid_next BIGINT;

-- Which channel a record goes to: 'sync' (redis.channel) or 'changes' (redis.changes_channel).
ALTER TABLE outbox ADD COLUMN topic TEXT NOT NULL DEFAULT 'sync';

-- threads.message_count / unread_count count only messages still in a mailbox (expunged_at
-- IS NULL), and thread_refs.present now means "a message with this id is in a mailbox": an
-- expunge that leaves no present copy of a Message-ID clears it, so that the message arriving
-- again (a move) is counted again.
