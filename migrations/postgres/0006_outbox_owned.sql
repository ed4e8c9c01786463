-- The owned drain (#22): a replica reads the outbox rows of the mailboxes it holds, and the
-- lowest live replica also the rows of mailboxes with no lease row at all (removed from every
-- config), in id order. Both join the outbox on (account_id, mailbox); this index serves the join
-- and the anti-join, and gives each mailbox's rows in id order without a sort of the whole table.
CREATE INDEX outbox_mailbox_id ON outbox (account_id, mailbox, id);
