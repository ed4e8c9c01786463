-- Bodies, raw messages and attachment contents are TOASTed: compressed, then stored out of line.
-- PostgreSQL's default compressor (pglz) spent most of the database's CPU in the burst and
-- catch-up measurements of issue #5; lz4 compresses several times faster for a similar ratio.
-- Only values written from now on use it. Servers built without lz4 (or before PostgreSQL 14)
-- keep pglz: the statements run through EXECUTE so that either error is caught here.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE messages ALTER COLUMN text_body SET COMPRESSION lz4, '
            'ALTER COLUMN html_body SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE message_raw ALTER COLUMN raw SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE attachments ALTER COLUMN content SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 unavailable (%): TOAST keeps pglz', SQLERRM;
END
$$;
